"""An ASGI entry point for running the gateway under hypercorn directly, e.g. with workers::

    EPILOOP_CONFIG_PATH=/etc/epiloop/epiloop.json \\
    PROMETHEUS_MULTIPROC_DIR=/run/epiloop/metrics \\
        hypercorn -k trio --workers 2 --bind 127.0.0.1:18789 trio_gateway.server.asgi:app

hypercorn imports ``module:app`` in every worker, so the app must exist at import time, while
the gateway's app needs a runtime that lives inside the worker's trio run (the providers' HTTP
pools, the session store). :data:`app` bridges the two with the ASGI lifespan: on startup it
loads the config the way ``epiloop gateway`` does (``$EPILOOP_CONFIG_PATH``,
``$EPILOOP_STATE_DIR``), opens the runtime and a background nursery for detached runs, and hands
the lifespan on to the app; on shutdown it marks the runtime as draining. A worker that cannot
start prints one ``Error:`` line and exits with status 1 (see :func:`_exit_worker`).

Each worker has its own runtime: its own ``maxConcurrent`` / ``maxQueued``, session lanes and
failed-auth counts (so limits apply per worker). Sessions are shared through the SQLite store.
The config must hold the secret (a generated one would differ between workers). With
``PROMETHEUS_MULTIPROC_DIR`` set (an empty directory), ``/metrics`` sums every worker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    LifespanScope,
    Scope,
)

from ..agent import open_runtime
from ..auth import needs_secret
from ..cancellation import WORKER_SHUTTING_DOWN
from ..config import EMBEDDED_SOURCE, LoadedConfig, load_config, state_dir
from ..errors import ConfigError
from ..logs import configure_logging
from .app import GatewayApp, create_app
from .serve import freeze_startup_heap, startup_failure

__all__ = ["EnvironmentGateway", "app"]


def _load() -> LoadedConfig:
    loaded = load_config()
    if needs_secret(loaded.config.gateway.auth):
        raise ConfigError(
            "every worker must check the same credential: set gateway.auth.token (or "
            "EPILOOP_GATEWAY_TOKEN) instead of relying on a generated one",
            path="gateway.auth",
            source=loaded.source,
        )
    return loaded


class EnvironmentGateway:
    """The gateway as a plain ASGI app whose runtime opens in the ASGI lifespan."""

    def __init__(self) -> None:
        self._app: GatewayApp | None = None

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if self._app is None:
            raise RuntimeError("the gateway starts in the ASGI lifespan: is lifespan off?")
        await self._app(scope, receive, send)

    async def _lifespan(
        self, scope: LifespanScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        started = False

        async def watch_send(message: ASGISendEvent) -> None:
            nonlocal started
            if message["type"] == "lifespan.startup.complete":
                started = True
            await send(message)

        try:
            await self._run_lifespan(scope, receive, watch_send)
        except Exception as exc:
            if not started:
                _exit_worker(startup_failure(exc))
            raise

    async def _run_lifespan(
        self, scope: LifespanScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        startup = await receive()
        try:
            loaded = _load()
        except ConfigError as exc:
            raise ConfigError(f"invalid configuration: {exc}") from exc
        config = loaded.config
        logging_config = config.gateway.logging
        configure_logging(level=logging_config.level, fmt=logging_config.format)
        config_path = None if loaded.source == EMBEDDED_SOURCE else Path(loaded.source)
        async with (
            open_runtime(config, state_dir=state_dir(), config_path=config_path) as runtime,
            trio.open_nursery() as background,
        ):
            runtime.background = background
            gateway = create_app(runtime)
            self._app = gateway
            freeze_startup_heap()  # a worker process: see the function
            replayed = False

            async def lifespan_receive() -> ASGIReceiveEvent:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return startup
                event = await receive()
                if event["type"] == "lifespan.shutdown":
                    runtime.draining = True
                return event

            try:
                await gateway(scope, lifespan_receive, send)
            finally:
                self._app = None
                runtime.background = None
                background.cancel_scope.cancel(reason=WORKER_SHUTTING_DOWN)


def _exit_worker(line: str) -> NoReturn:
    """End a worker that cannot start: one ``Error:`` line on stderr, exit status 1.

    Raising is no use here: hypercorn's worker process prints the traceback of whatever
    escapes it (a ``SystemExit`` too, wrapped in an exception group by the nurseries on the
    way), and its ``--workers`` parent exits 0 regardless (see :mod:`.workers`); a worker
    run in hypercorn's own process (``--workers 0``) would still exit 1 this way. Nothing is
    open yet to clean up: the runtime has been closed by its ``async with``.
    """
    sys.stderr.write(f"Error: {line}\n")
    sys.stderr.flush()
    os._exit(1)


#: What hypercorn serves: ``trio_gateway.server.asgi:app``.
app = EnvironmentGateway()
