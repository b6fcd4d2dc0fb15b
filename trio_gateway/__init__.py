"""Epiloop Gateway: an agent gateway with an OpenAI-compatible API, built on trio.

The public API::

    import trio

    from trio_gateway import load_config, open_runtime, serve_gateway, state_dir

    async def main() -> None:
        loaded = load_config()
        # The runtime opens the configured session store and the providers, and closes them.
        async with open_runtime(loaded.config, state_dir=state_dir()) as runtime:
            await serve_gateway(runtime, host="127.0.0.1", port=18789)

    trio.run(main)
"""

from ._version import __version__ as __version__
from .agent import AgentRuntime as AgentRuntime
from .agent import open_runtime as open_runtime
from .config import Config as Config
from .config import load_config as load_config
from .config import parse_config as parse_config
from .config import state_dir as state_dir
from .errors import ConfigError as ConfigError
from .errors import GatewayError as GatewayError
from .server import create_app as create_app
from .server import serve_gateway as serve_gateway
