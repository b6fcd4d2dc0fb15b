"""The I/O edge: the quart-trio app, its routes and the hypercorn server.

Routes stay thin: they authenticate, parse with :mod:`trio_gateway.wire`, call the
:class:`~trio_gateway.agent.AgentRuntime` and encode. Nothing below this package imports it.
"""

from .app import GatewayApp as GatewayApp
from .app import create_app as create_app
from .serve import check_exposure as check_exposure
from .serve import listen_sockets as listen_sockets
from .serve import resolve_host as resolve_host
from .serve import serve_gateway as serve_gateway
from .serve import startup_failure as startup_failure
