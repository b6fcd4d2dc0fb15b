"""The built-in tools.

``current_time``, ``read_file``, ``list_files`` and ``write_file`` are on by default
(:data:`~trio_gateway.config.schema.DEFAULT_TOOL_ALLOW`); ``http_fetch`` and ``exec`` reach
outside the workspace and are off unless a tool policy allows them.
"""

from .clock import CurrentTimeTool as CurrentTimeTool
from .exec import ExecTool as ExecTool
from .fetch import HttpFetchTool as HttpFetchTool
from .files import ListFilesTool as ListFilesTool
from .files import ReadFileTool as ReadFileTool
from .files import WriteFileTool as WriteFileTool
