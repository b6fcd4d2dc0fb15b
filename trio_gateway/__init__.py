"""Epiloop Gateway: an agent gateway with an OpenAI-compatible API, built on trio.

The public API::

    from trio_gateway import AgentRuntime, load_config, serve_gateway

    loaded = load_config()
    runtime = AgentRuntime(loaded.config)
    trio.run(partial(serve_gateway, runtime, host="127.0.0.1", port=18789))
"""

from ._version import __version__ as __version__
from .agent import AgentRuntime as AgentRuntime
from .config import Config as Config
from .config import load_config as load_config
from .config import parse_config as parse_config
from .errors import ConfigError as ConfigError
from .errors import GatewayError as GatewayError
from .server import create_app as create_app
from .server import serve_gateway as serve_gateway
