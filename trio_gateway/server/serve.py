"""Serving the gateway with hypercorn's trio worker.

``serve_gateway`` runs until cancelled or until ``shutdown_trigger`` returns; it reports the
bound URLs through ``task_status`` once the socket listens, so tests and embedders can
``await nursery.start(serve_gateway, ...)`` on port 0. On shutdown, in-flight requests get
``gateway.shutdownGraceSeconds`` to finish before they are cancelled.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from ..agent import AgentRuntime
from ..auth import check_exposure
from .app import create_app

__all__ = ["check_exposure", "freeze_startup_heap", "resolve_host", "serve_gateway"]

#: How long before the grace period ends the remaining runs are aborted (so their clients get
#: an in-band error and their turns are recorded before the connections are cut).
ABORT_LEAD_SECONDS = 0.5

logger = logging.getLogger(__name__)


def resolve_host(bind: str) -> str:
    """``"loopback"`` → 127.0.0.1, ``"lan"`` → 0.0.0.0 (all interfaces), else the host itself."""
    return {"loopback": "127.0.0.1", "lan": "0.0.0.0"}.get(bind, bind)


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive now out of the garbage collector's sight.

    What start-up built (modules, config, the app, pools) lives as long as the process; left in
    the collected generations, each full collection walks it again: 26-43 ms pauses every
    couple of seconds under streaming load, which set the tail of the disconnect latency.
    Frozen, a full collection takes 4-5 ms. For processes that serve, not for libraries or
    tests: a frozen object that later becomes cyclic garbage is never collected.
    """
    gc.collect()
    gc.freeze()


class _LiveConfig(HypercornConfig):
    """hypercorn's settings, with the limits it reads per connection taken from the runtime's
    current config, so a reload applies them to new connections."""

    def __init__(self, runtime: AgentRuntime) -> None:
        super().__init__()
        self._runtime = runtime

    @property
    def websocket_max_message_size(self) -> int:  # type: ignore[override]  # read-only on purpose
        return self._runtime.config.gateway.ws.max_frame_bytes

    @property
    def h11_max_incomplete_size(self) -> int:  # type: ignore[override]  # read-only on purpose
        return self._runtime.config.gateway.http.max_header_bytes


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def serve_gateway(
    runtime: AgentRuntime,
    *,
    host: str,
    port: int,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    freeze_heap: bool = False,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``runtime`` on ``host:port`` (port 0 picks a free port; see ``task_status``).
    ``freeze_heap``: :func:`freeze_startup_heap` once the app is built (the CLI's process)."""
    check_exposure(host, runtime.config.gateway.auth)  # before anything is built
    config = _LiveConfig(runtime)
    config.bind = [_bind_address(host, port)]
    config.graceful_timeout = runtime.config.gateway.shutdown_grace_seconds
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    app = create_app(runtime)
    if freeze_heap:
        freeze_startup_heap()

    grace = runtime.config.gateway.shutdown_grace_seconds

    async def abort_stragglers() -> None:
        # Just before hypercorn cancels what is left, end the remaining runs properly: an
        # in-band error for their clients, the partial turn recorded as aborted.
        await trio.sleep(max(0.0, grace - ABORT_LEAD_SECONDS))
        aborted = runtime.active_runs.abort_all("the gateway is shutting down")
        if aborted:
            logger.info("shutdown.aborted_runs count=%d", len(aborted))

    async def drain_then_shut_down() -> None:
        if shutdown_trigger is None:
            await trio.sleep_forever()
        else:
            await shutdown_trigger()
        nonlocal grace
        # The grace period of the config in force now (a reload may have changed it).
        grace = config.graceful_timeout = runtime.config.gateway.shutdown_grace_seconds
        runtime.draining = True
        logger.info("shutdown.draining grace_seconds=%g", grace)
        background.start_soon(abort_stragglers)

    # Detached runs (started over the control plane) belong to the gateway, not to a client.
    # While it serves, every reload is held to the exposure rule for this host too.
    with runtime.exposed_on(host):
        async with trio.open_nursery() as background:
            runtime.background = background
            try:
                await serve(
                    app, config, shutdown_trigger=drain_then_shut_down, task_status=task_status
                )
            finally:
                runtime.background = None
                background.cancel_scope.cancel(reason="the gateway is shutting down")
