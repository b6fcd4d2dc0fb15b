"""Serving the gateway with hypercorn's trio worker.

``serve_gateway`` runs until cancelled or until ``shutdown_trigger`` returns; it reports the
bound URLs through ``task_status`` once the socket listens, so tests and embedders can
``await nursery.start(serve_gateway, ...)`` on port 0. On shutdown, in-flight requests get
``gateway.shutdownGraceSeconds`` to finish before they are cancelled, and the function returns
by the end of the grace period whatever the clients do.

The serving loop is hypercorn's trio worker loop, with one change: the connections it hands to
hypercorn bound every write (see :mod:`trio_gateway.server.connections`), because hypercorn's
own writes wait for a client that stops reading forever, shielded from the shutdown deadline.
That loop calls hypercorn internals (``TCPServer``, ``Lifespan``, ``WorkerContext``,
``wrap_app``...), which pyproject.toml bounds below 0.19: :func:`check_hypercorn` checks the
signatures and attributes it relies on before serving, so a hypercorn whose internals changed
is a clear :class:`~trio_gateway.errors.ConfigError` naming its version, not a ``TypeError``
deep inside the first connection.
"""

from __future__ import annotations

import errno
import gc
import importlib.metadata
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import repr_socket_addr, wrap_app

from ..agent import AgentRuntime
from ..auth import check_exposure
from ..cancellation import GATEWAY_SHUTTING_DOWN
from ..errors import ConfigError, GatewayError
from .app import GatewayApp, create_app
from .connections import BoundedListener, WriteLimits

__all__ = [
    "check_exposure",
    "check_hypercorn",
    "freeze_startup_heap",
    "listen_sockets",
    "resolve_host",
    "serve_gateway",
    "startup_failure",
]

#: How long the ASGI lifespan's shutdown may take once the connections are done.
LIFESPAN_SHUTDOWN_BOUND_SECONDS = 5.0

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


def startup_failure(exc: BaseException) -> str:
    """One line that says why serving failed: the first of our own errors or OSErrors in
    ``exc`` (nurseries wrap errors in groups; ``Cancelled`` there is a consequence), else the
    exception's type and message."""
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, GatewayError):
            return str(leaf)
    for leaf in leaves:
        if isinstance(leaf, OSError):
            where = f": {leaf.filename}" if leaf.filename else ""
            return f"{leaf.strerror or leaf}{where}"
    first = next((leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)), exc)
    return f"{type(first).__name__}: {first}"


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _hypercorn_calls() -> tuple[tuple[str, Callable[..., object], tuple[str, ...]], ...]:
    """What the serving loop calls in hypercorn, with the leading parameters it passes (by
    position); later parameters are allowed when they have defaults."""
    return (
        ("hypercorn.utils.wrap_app", wrap_app, ("app", "wsgi_max_body_size", "mode")),
        ("hypercorn.trio.lifespan.Lifespan", Lifespan, ("app", "config", "state")),
        ("hypercorn.trio.worker_context.WorkerContext", WorkerContext, ("max_requests",)),
        (
            "hypercorn.trio.tcp_server.TCPServer",
            TCPServer,
            ("app", "config", "context", "state", "stream"),
        ),
        ("hypercorn.utils.repr_socket_addr", repr_socket_addr, ("family", "address")),
    )


def _hypercorn_attributes() -> tuple[tuple[str, object, tuple[str, ...]], ...]:
    """Attributes the serving loop uses, by the object that must have them."""
    return (
        (
            "hypercorn.trio.lifespan.Lifespan",
            Lifespan,
            ("handle_lifespan", "wait_for_startup", "wait_for_shutdown"),
        ),
        ("hypercorn.trio.tcp_server.TCPServer", TCPServer, ("__await__",)),
        ("hypercorn.config.Config", HypercornConfig, ("wsgi_max_body_size", "graceful_timeout")),
    )


def _call_mismatch(name: str, target: Callable[..., object], expected: tuple[str, ...]) -> str:
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return f"{name} has no readable signature"
    names = tuple(parameter.name for parameter in parameters[: len(expected)])
    extra = parameters[len(expected) :]
    if names != expected or any(
        parameter.default is inspect.Parameter.empty
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        for parameter in extra
    ):
        shown = ", ".join(parameter.name for parameter in parameters)
        return f"{name}({shown}), expected ({', '.join(expected)})"
    return ""


def check_hypercorn() -> None:
    """Raise :class:`ConfigError` unless hypercorn has the internals the serving loop calls, as
    they are in hypercorn 0.17 and 0.18: the message names the installed version and what
    differs."""
    problems = [
        problem
        for name, target, expected in _hypercorn_calls()
        if (problem := _call_mismatch(name, target, expected))
    ]
    problems += [
        f"{name} has no {attribute!r}"
        for name, owner, attributes in _hypercorn_attributes()
        for attribute in attributes
        if not hasattr(owner, attribute)
    ]
    if not problems:
        return
    try:
        version = importlib.metadata.version("hypercorn")
    except importlib.metadata.PackageNotFoundError:
        version = "(version unknown)"
    raise ConfigError(
        f"hypercorn {version} is installed, but the gateway's serving loop needs hypercorn's "
        f"trio worker internals as in hypercorn 0.17 and 0.18 ({'; '.join(problems)}): install "
        "the hypercorn version pyproject.toml allows (>=0.17,<0.19)"
    )


def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """The listening sockets for ``host:port``; a port in use or an address that cannot be bound
    is a :class:`ConfigError` naming the config key."""
    config = HypercornConfig()
    config.bind = [_bind_address(host, port)]
    try:
        sockets = config.create_sockets().insecure_sockets
        for sock in sockets:
            sock.listen(config.backlog)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {reason} (another process uses this port; "
                "choose another one)",
                path="gateway.port",
            ) from exc
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}", path="gateway.bind") from exc
    return sockets


async def serve_gateway(
    runtime: AgentRuntime,
    *,
    host: str,
    port: int,
    sockets: Sequence[socket.socket] | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    freeze_heap: bool = False,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``runtime`` on ``host:port`` (port 0 picks a free port; see ``task_status``), or on
    ``sockets`` already listening (worker processes share their parent's).
    ``freeze_heap``: :func:`freeze_startup_heap` once the app is built (the CLI's process).

    Returns at the latest ``gateway.shutdownGraceSeconds`` after ``shutdown_trigger`` returned,
    whatever the clients do: every write to a client has a deadline (see
    :mod:`trio_gateway.server.connections`)."""
    check_exposure(host, runtime.config.gateway.auth)  # before anything is built
    check_hypercorn()
    config = _LiveConfig(runtime)
    config.bind = [_bind_address(host, port)]
    config.graceful_timeout = runtime.config.gateway.shutdown_grace_seconds
    # The ASGI lifespan's shutdown, after the grace period (hypercorn's default is 60 s).
    config.shutdown_timeout = LIFESPAN_SHUTDOWN_BOUND_SECONDS
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    listening = list(sockets) if sockets is not None else listen_sockets(host, port)
    app = create_app(runtime)
    if freeze_heap:
        freeze_startup_heap()

    grace = runtime.config.gateway.shutdown_grace_seconds

    async def abort_stragglers() -> None:
        # Just before the remaining connections are cut, end the remaining runs properly: an
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
        runtime.begin_draining()
        logger.info("shutdown.draining grace_seconds=%g", grace)
        background.start_soon(abort_stragglers)

    # Detached runs (started over the control plane) belong to the runtime, not to a client;
    # this nursery holds the shutdown's own task. While it serves, every reload is held to
    # the exposure rule for this host too.
    try:
        with runtime.exposed_on(host):
            async with trio.open_nursery() as background:
                try:
                    await _serve_app(
                        app,
                        config,
                        listening,
                        WriteLimits(
                            live_stall_seconds=lambda: (
                                runtime.config.gateway.http.stream_stall_seconds
                            )
                        ),
                        shutdown_trigger=drain_then_shut_down,
                        task_status=task_status,
                    )
                finally:
                    background.cancel_scope.cancel(reason=GATEWAY_SHUTTING_DOWN)
    finally:
        if sockets is None:
            for sock in listening:
                sock.close()


async def _serve_app(
    app: GatewayApp,
    config: HypercornConfig,
    sockets: Sequence[socket.socket],
    limits: WriteLimits,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]],
) -> None:
    """hypercorn's trio worker loop (``hypercorn.trio.run.worker_serve``, plain HTTP only) with
    connections whose writes have deadlines, and a graceful shutdown that ends on time: after
    ``shutdown_trigger`` returns, no new connection is accepted, the ASGI lifespan is told to
    shut down once the open connections are done, and they get ``config.graceful_timeout``."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            listeners = [
                BoundedListener(trio.SocketListener(trio.socket.from_stdlib_socket(sock)), limits)
                for sock in sockets
            ]
            binds = [
                f"http://{repr_socket_addr(sock.family, sock.getsockname())}" for sock in sockets
            ]
            serve_connection = partial(
                TCPServer, wrapped, config, context, ConnectionState(lifespan_state.copy())
            )
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(
                        partial(
                            trio.serve_listeners,
                            serve_connection,
                            listeners,
                            handler_nursery=connections,
                        )
                    )
                    task_status.started(binds)
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel(reason=GATEWAY_SHUTTING_DOWN)
            finally:
                # Idle keep-alive connections close now; the others get the grace period, and
                # every write, one under way too, ends by its end.
                await context.terminated.set()
                deadline = trio.current_time() + config.graceful_timeout
                limits.drain_by(deadline)
                connections.cancel_scope.deadline = deadline
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel(reason="the gateway stopped serving")
