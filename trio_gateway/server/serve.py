"""Serving the gateway with hypercorn's trio worker.

``serve_gateway`` runs until cancelled or until ``shutdown_trigger`` returns; it reports the
bound URLs through ``task_status`` once the socket listens, so tests and embedders can
``await nursery.start(serve_gateway, ...)`` on port 0. On shutdown, in-flight requests get
``gateway.shutdownGraceSeconds`` to finish before they are cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from ..agent import AgentRuntime
from ..auth import is_loopback_host, needs_secret
from ..config import AuthConfig
from ..errors import ConfigError
from .app import create_app

__all__ = ["check_exposure", "resolve_host", "serve_gateway"]

logger = logging.getLogger(__name__)


def resolve_host(bind: str) -> str:
    """``"loopback"`` → 127.0.0.1, ``"lan"`` → 0.0.0.0 (all interfaces), else the host itself."""
    return {"loopback": "127.0.0.1", "lan": "0.0.0.0"}.get(bind, bind)


def check_exposure(host: str, auth: AuthConfig) -> None:
    """Refuse to listen beyond loopback without a credential check."""
    if is_loopback_host(host):
        return
    if auth.mode == "none":
        raise ConfigError(
            f'refusing to bind {host}: gateway.auth.mode is "none", which is allowed on '
            'loopback only. Use mode "token" with a token (gateway.auth.token or '
            'EPILOOP_GATEWAY_TOKEN), or bind "loopback".',
            path="gateway.bind",
        )
    if needs_secret(auth):
        variable = "EPILOOP_GATEWAY_TOKEN" if auth.mode == "token" else "EPILOOP_GATEWAY_PASSWORD"
        raise ConfigError(
            f"refusing to bind {host}: auth mode {auth.mode!r} but no {auth.mode} is set "
            f"(gateway.auth.{auth.mode} or {variable}).",
            path="gateway.bind",
        )


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def serve_gateway(
    runtime: AgentRuntime,
    *,
    host: str,
    port: int,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``runtime`` on ``host:port`` (port 0 picks a free port; see ``task_status``)."""
    check_exposure(host, runtime.config.gateway.auth)
    config = HypercornConfig()
    config.bind = [_bind_address(host, port)]
    config.graceful_timeout = runtime.config.gateway.shutdown_grace_seconds
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.websocket_max_message_size = runtime.config.gateway.ws.max_frame_bytes
    app = create_app(runtime)
    # Detached runs (started over the control plane) belong to the gateway, not to a client.
    async with trio.open_nursery() as background:
        runtime.background = background
        try:
            await serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)
        finally:
            runtime.background = None
            background.cancel_scope.cancel(reason="the gateway is shutting down")
