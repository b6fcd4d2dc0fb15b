"""Tools: the protocol, the registry and policy, the built-in tools.

A :class:`Tool` has a :class:`~trio_gateway.messages.ToolSpec` (offered to the model) and an
async ``call`` that takes the model's raw JSON arguments and a :class:`ToolContext`, and returns
the result text or raises :class:`~trio_gateway.errors.ToolError` (whose message goes back to
the model). :func:`default_registry` holds the built-ins; ``registry.tools_for(agent, defaults)``
applies the agent's policy; :func:`call_tool` runs one call under ``tools.timeoutSeconds``.

Imports ``messages``, ``errors`` and ``config``; never ``agent``, ``providers`` or ``server``.
"""

from .base import Arguments as Arguments
from .base import StructTool as StructTool
from .base import Tool as Tool
from .base import ToolContext as ToolContext
from .base import arguments_schema as arguments_schema
from .base import call_tool as call_tool
from .base import parse_arguments as parse_arguments
from .base import truncate_result as truncate_result
from .builtin import CurrentTimeTool as CurrentTimeTool
from .builtin import ExecTool as ExecTool
from .builtin import HttpFetchTool as HttpFetchTool
from .builtin import ListFilesTool as ListFilesTool
from .builtin import ReadFileTool as ReadFileTool
from .builtin import WriteFileTool as WriteFileTool
from .policy import allowed as allowed
from .registry import ToolRegistry as ToolRegistry
from .registry import default_registry as default_registry
from .workspace import confine as confine
from .workspace import open_workspace as open_workspace
from .workspace import workspace_for as workspace_for
