"""A client of the gateway's WebSocket control plane (protocol: docs/control-protocol.md).

``open_control_client(url, token=...)`` connects, answers the ``connect.challenge`` and yields a
:class:`ControlClient` whose reader task (in a nursery the client owns) routes every frame that
arrives: a response to the request waiting for its id, an ``agent`` event to the run it belongs
to. ``request`` sends one request and returns its payload; ``run_agent`` starts a run, hands its
events to a callback and returns the final result. Cancelling ``run_agent`` after the run was
accepted aborts the run on the gateway (``agent.abort``, shielded and bounded).

Every failure leaves as a :class:`~trio_gateway.errors.ControlPlaneError`: an ``ok: false``
response carries the gateway's ``code``; a connection the gateway refused or closed carries the
close code and reason. trio-websocket's and the socket's exceptions are translated here, once.

The protocol itself (frames, close codes, method params) is :mod:`trio_gateway.wire.control`,
which the gateway reads too; only the client itself does I/O here. This module imports nothing
from the server: it is the gateway's outside view.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import ssl
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import NoReturn

import msgspec
import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from ._version import __version__
from .errors import ControlPlaneError
from .wire import control as protocol
from .wire.control import (
    PROTOCOL_VERSION,
    AbortParams,
    AgentParams,
    ChallengePayload,
    ClientAuth,
    ClientInfo,
    ConnectParams,
    EventFrame,
    Frame,
    ResponseFrame,
    encode_request,
    parse_frame,
    run_id_of,
)

__all__ = [
    "AUTH_FAILED",
    "GATEWAY_UNREACHABLE",
    "PROTOCOL_VERSION",
    "ControlClient",
    "ControlError",
    "ControlStatistics",
    "EventFrame",
    "EventHandler",
    "Frame",
    "ResponseFrame",
    "closed_error",
    "encode_request",
    "is_auth_failure",
    "open_control_client",
    "parse_frame",
]

logger = logging.getLogger(__name__)

#: Connecting and the ``connect`` exchange must finish within this long.
HANDSHAKE_BOUND_SECONDS = 15.0
#: Closing the socket (send the close frame, wait for the gateway's) runs shielded, this long.
CLOSE_BOUND_SECONDS = 5.0
#: ``agent.abort`` for a cancelled ``run_agent`` runs shielded, this long.
ABORT_BOUND_SECONDS = 5.0
#: The largest frame accepted from the gateway (a long transcript is one frame).
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: Frames buffered for one waiting request before the reader waits for its consumer.
REQUEST_BUFFER_FRAMES = 256
#: ``agent`` events of runs nobody waits for (yet), kept in case their run is accepted next.
ORPHAN_EVENTS = 256

#: ``code`` when the gateway could not be reached at all.
GATEWAY_UNREACHABLE = "gateway_unreachable"
#: ``code`` when the credentials were refused (a ``connect`` error or close code 4001).
AUTH_FAILED = "auth_failed"

#: The public name for control-plane errors (the class lives in the one error tree).
ControlError = ControlPlaneError

#: A request's params: the method's struct (``trio_gateway.wire.control``), or plain JSON data.
Params = msgspec.Struct | Mapping[str, object]

#: What ``run_agent`` calls with each ``agent`` event payload; it may be async.
EventHandler = Callable[[dict[str, object]], Awaitable[None] | None]


def is_auth_failure(error: ControlPlaneError) -> bool:
    """True when the gateway refused the credentials."""
    return (
        error.code in (AUTH_FAILED, "invalid_api_key")
        or error.close_code == protocol.AUTH_FAILED.code
    )


# -- closes ----------------------------------------------------------------------------------


def closed_error(reason: CloseReason | None, *, url: str) -> ControlPlaneError:
    """The error for a connection that closed with ``reason`` (``None``: no close frame)."""
    code = protocol.CONNECTION_LOST.code if reason is None else reason.code
    said = (reason.reason if reason is not None else None) or ""
    known = protocol.closing_for_code(code)
    closing = protocol.CONNECTION_CLOSED if known is None else known
    name, meaning = closing.name, closing.meaning
    if code >= 4000 and said and known is None:
        name = said
    detail = f"{code} {said}".strip()
    return ControlPlaneError(
        f"the gateway at {url} closed the connection ({detail}): {meaning}",
        code=name,
        close_code=code,
        close_reason=said or None,
    )


# -- the client ------------------------------------------------------------------------------


@dataclass(eq=False)
class _Waiter:
    """A request waiting for its response(s). Runs also get their events through it."""

    method: str
    send: trio.MemorySendChannel[Frame]
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class ControlStatistics:
    """A snapshot of a client's connection."""

    waiting_requests: int
    runs: int
    last_event_seq: int
    #: Events the gateway numbered but this client never saw (gaps in ``seq``).
    lost_events: int


@dataclass(eq=False)
class ControlClient:
    """A connected, authenticated control-plane client (from :func:`open_control_client`)."""

    url: str
    _ws: WebSocketConnection
    #: The gateway's ``connect`` reply: ``protocol``, ``server``, ``methods``, ``events``, ...
    hello: dict[str, object] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiters: dict[str, _Waiter] = field(default_factory=dict)
    _runs: dict[str, _Waiter] = field(default_factory=dict)
    _orphans: deque[EventFrame] = field(default_factory=lambda: deque(maxlen=ORPHAN_EVENTS))
    _closed: ControlPlaneError | None = None
    _last_seq: int = 0
    _lost_events: int = 0

    def statistics(self) -> ControlStatistics:
        return ControlStatistics(
            waiting_requests=len(self._waiters),
            runs=len(self._runs),
            last_event_seq=self._last_seq,
            lost_events=self._lost_events,
        )

    # -- requests --------------------------------------------------------------------------

    async def request(self, method: str, params: Params | None = None) -> dict[str, object]:
        """Send ``method`` and return the response's payload; raise ``ControlPlaneError``."""
        async with self._exchange(method, params) as receive:
            frame = await self._next_response(receive)
            return frame.unwrap()

    async def run_agent(
        self,
        message: str,
        *,
        agent_id: str | None = None,
        session_key: str | None = None,
        idempotency_key: str | None = None,
        on_event: EventHandler | None = None,
    ) -> dict[str, object]:
        """Run an agent: ``on_event`` gets each ``agent`` event's payload of the run as it
        arrives; the final result (``status``: ``completed``, ``failed`` or ``aborted``) is
        returned. Errors before the run starts (unknown agent, busy session, overload) raise.

        Cancelling this call once the run was accepted aborts the run on the gateway
        (``agent.abort``, shielded, at most ``ABORT_BOUND_SECONDS``); cancelled earlier, the run
        stops when the connection closes. ``on_event`` runs in the caller's task: while it
        blocks, so does the delivery of every frame on this connection, and a gateway whose
        queue for the client overflows closes the connection (4008 ``slow_consumer``).
        """
        params = AgentParams(
            message=message,
            agent_id=agent_id,
            session_key=session_key,
            idempotency_key=idempotency_key,
        )
        async with self._exchange("agent", params) as receive:
            first = (await self._next_response(receive)).unwrap()
            if first.get("status") != "accepted":
                return first  # an idempotent retry of a run that is already over
            run_id = first.get("runId")
            if not isinstance(run_id, str):
                raise ControlPlaneError(
                    f"the gateway accepted the run without a runId: {first!r}", code="bad_frame"
                )
            logger.debug("control.run.accepted run_id=%s", run_id)
            try:
                async for frame in receive:
                    if isinstance(frame, ResponseFrame):
                        result = frame.unwrap()
                        logger.debug(
                            "control.run.complete run_id=%s status=%s",
                            run_id,
                            result.get("status"),
                        )
                        return result
                    if on_event is not None:
                        outcome = on_event(frame.payload)
                        if inspect.isawaitable(outcome):
                            await outcome
            except BaseException:
                # Abandoned (cancelled, or ``on_event`` failed): stop routing the run's frames
                # here, so the reader never waits for us, then stop the run itself.
                receive.close()
                await self._abort_quietly(run_id)
                raise
            raise self._closed_error()

    async def abort(
        self, *, run_id: str | None = None, session_key: str | None = None
    ) -> list[str]:
        """``agent.abort`` by run id or session key; the ids of the runs it aborted."""
        params = (
            AbortParams(run_id=run_id)
            if run_id is not None
            else AbortParams(session_key=session_key)
        )
        payload = await self.request("agent.abort", params)
        aborted = payload.get("aborted")
        return (
            [item for item in aborted if isinstance(item, str)] if isinstance(aborted, list) else []
        )

    async def _abort_quietly(self, run_id: str) -> None:
        if self._closed is not None:
            return  # the gateway cancels a closed connection's runs itself
        with trio.move_on_after(ABORT_BOUND_SECONDS, shield=True) as scope:
            try:
                await self.abort(run_id=run_id)
            except ControlPlaneError as exc:
                logger.debug("control.abort.failed run_id=%s code=%s", run_id, exc.code)
            else:
                logger.debug("control.abort.complete run_id=%s", run_id)
        if scope.cancelled_caught:
            logger.warning("control.abort.failed run_id=%s reason=timeout", run_id)

    @asynccontextmanager
    async def _exchange(
        self, method: str, params: Params | None
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Frame]]:
        """Register a request id, send the request, and yield where its frames arrive."""
        if self._closed is not None:
            raise self._closed_error()
        request_id = str(next(self._ids))
        send, receive = trio.open_memory_channel[Frame](REQUEST_BUFFER_FRAMES)
        waiter = _Waiter(method, send)
        self._waiters[request_id] = waiter
        try:
            with receive:
                logger.debug("control.request.started method=%s id=%s", method, request_id)
                await self._send_text(encode_request(request_id, method, params))
                yield receive
        finally:
            self._forget(request_id, waiter)

    def _forget(self, request_id: str, waiter: _Waiter) -> None:
        if self._waiters.get(request_id) is waiter:
            del self._waiters[request_id]
        if waiter.run_id is not None and self._runs.get(waiter.run_id) is waiter:
            del self._runs[waiter.run_id]
        waiter.send.close()

    async def _next_response(self, receive: trio.MemoryReceiveChannel[Frame]) -> ResponseFrame:
        async for frame in receive:
            if isinstance(frame, ResponseFrame):
                return frame
        raise self._closed_error()

    async def _send_text(self, text: str) -> None:
        try:
            await self._ws.send_message(text)
        except ConnectionClosed as exc:
            if self._closed is None:
                self._closed = closed_error(exc.reason, url=self.url)
            raise self._closed_error() from exc

    def _closed_error(self) -> ControlPlaneError:
        """A fresh error for the closed connection (each raise gets its own traceback)."""
        closed = self._closed
        if closed is None:
            return ControlPlaneError(
                "the control client is closed", code="connection_closed", close_code=None
            )
        return ControlPlaneError(
            closed.message,
            code=closed.code,
            retryable=closed.retryable,
            retry_after_ms=closed.retry_after_ms,
            close_code=closed.close_code,
            close_reason=closed.close_reason,
        )

    # -- the handshake and the reader ---------------------------------------------------------

    async def _handshake(self, *, token: str | None, password: str | None, name: str) -> None:
        challenge = await self._receive_frame()
        if not (isinstance(challenge, EventFrame) and challenge.event == "connect.challenge"):
            raise ControlPlaneError(
                f"the gateway at {self.url} did not start with connect.challenge", code="bad_frame"
            )
        self._note_seq(challenge)
        try:
            offered = msgspec.convert(challenge.payload, ChallengePayload).protocol
        except msgspec.ValidationError as exc:
            raise ControlPlaneError(f"bad connect.challenge: {exc}", code="bad_frame") from exc
        if not offered.min <= PROTOCOL_VERSION <= offered.max:
            raise ControlPlaneError(
                f"the gateway speaks protocol {offered.min}..{offered.max}, this client "
                f"{PROTOCOL_VERSION}: upgrade the one that is older",
                code="protocol_mismatch",
            )
        params = ConnectParams(
            min_protocol=PROTOCOL_VERSION,
            max_protocol=PROTOCOL_VERSION,
            client=ClientInfo(name=name, version=__version__),
            auth=ClientAuth(token=token, password=password),
        )
        request_id = str(next(self._ids))
        await self._send_text(encode_request(request_id, "connect", params))
        while True:
            frame = await self._receive_frame()
            if isinstance(frame, EventFrame):
                self._note_seq(frame)
                continue
            if frame.id != request_id:
                raise ControlPlaneError(
                    f"the gateway answered request {frame.id!r} during the handshake",
                    code="bad_frame",
                )
            if not frame.ok and frame.error is not None and frame.error.code == AUTH_FAILED:
                raise ControlPlaneError(
                    f"authentication failed: {frame.error.message}", code=AUTH_FAILED
                )
            self.hello = frame.unwrap()
            return

    async def _receive_frame(self) -> Frame:
        try:
            message = await self._ws.get_message()
        except ConnectionClosed as exc:
            self._closed = closed_error(exc.reason, url=self.url)
            raise self._closed_error() from exc
        return parse_frame(message)

    async def _read_frames(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Route every frame to its waiter until the connection closes."""
        task_status.started()
        try:
            while True:
                await self._route(await self._receive_frame())
        except ControlPlaneError as exc:
            if self._closed is None:  # a frame we cannot read: the gateway is broken
                logger.warning("control.read.failed url=%s error=%s", self.url, exc)
                self._closed = exc
                with trio.move_on_after(CLOSE_BOUND_SECONDS, shield=True):
                    await self._ws.aclose(1002, exc.code)
            else:
                logger.debug("control.closed url=%s code=%s", self.url, exc.close_code)
        finally:
            if self._closed is None:
                self._closed = ControlPlaneError(
                    "the control client is closed", code="connection_closed"
                )
            for waiter in list(self._waiters.values()):
                waiter.send.close()  # the waiter raises the closed error

    async def _route(self, frame: Frame) -> None:
        if isinstance(frame, ResponseFrame):
            waiter = self._waiters.get(frame.id) if frame.id is not None else None
            if waiter is None:
                logger.warning("control.response.unexpected id=%s ok=%s", frame.id, frame.ok)
                return
            if waiter.method == "agent" and waiter.run_id is None and frame.ok:
                run_id = (frame.payload or {}).get("runId")
                if isinstance(run_id, str) and (frame.payload or {}).get("status") == "accepted":
                    waiter.run_id = run_id
                    self._runs[run_id] = waiter
                    await self._deliver(waiter, frame)
                    for orphan in [e for e in self._orphans if run_id_of(e) == run_id]:
                        self._orphans.remove(orphan)
                        await self._deliver(waiter, orphan)
                    return
            await self._deliver(waiter, frame)
            return
        self._note_seq(frame)
        if frame.event != "agent":
            return  # ``tick`` and events this client does not know
        run_id = run_id_of(frame)
        waiter = self._runs.get(run_id) if run_id is not None else None
        if waiter is None:
            self._orphans.append(frame)
            return
        await self._deliver(waiter, frame)

    async def _deliver(self, waiter: _Waiter, frame: Frame) -> None:
        try:
            await waiter.send.send(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # Its waiter is gone (cancelled): drop what it would have been sent.
            if waiter.run_id is not None and self._runs.get(waiter.run_id) is waiter:
                del self._runs[waiter.run_id]

    def _note_seq(self, event: EventFrame) -> None:
        if event.seq is None:
            return
        expected = self._last_seq + 1
        if event.seq > expected:
            self._lost_events += event.seq - expected
            logger.warning("control.events.lost expected_seq=%d got_seq=%d", expected, event.seq)
        self._last_seq = max(self._last_seq, event.seq)


# -- opening a client --------------------------------------------------------------------------


@asynccontextmanager
async def open_control_client(
    url: str,
    *,
    token: str | None = None,
    password: str | None = None,
    client_name: str = "epiloop-cli",
) -> AsyncIterator[ControlClient]:
    """Connect to the control plane at ``url`` (``ws://host:port/ws``) and authenticate.

    Raises :class:`ControlPlaneError`: ``code`` ``gateway_unreachable`` when nothing answers at
    ``url``, ``auth_failed`` for refused credentials, ``handshake_timeout`` when connecting took
    longer than ``HANDSHAKE_BOUND_SECONDS``. On exit the socket is closed (which cancels any run
    the connection still owns on the gateway).
    """
    deadline = trio.current_time() + HANDSHAKE_BOUND_SECONDS
    target = _parse_url(url)
    logger.debug("control.connect.started url=%s", url)
    # The client opens (and closes) the TCP stream itself: trio-websocket leaves a client's
    # socket open when the gateway closed the connection first.
    stream = await _open_stream(target, deadline)
    try:
        async with trio.open_nursery() as nursery:
            client = await _start(
                nursery,
                stream,
                target,
                deadline,
                token=token,
                password=password,
                name=client_name,
            )
            logger.debug("control.connect.complete url=%s", url)
            try:
                await nursery.start(client._read_frames)
                yield client
            finally:
                with trio.move_on_after(CLOSE_BOUND_SECONDS, shield=True):
                    await client._ws.aclose()
                nursery.cancel_scope.cancel(reason="control client closed")
    except BaseExceptionGroup as group:
        _raise_sole(group)
    finally:
        with trio.move_on_after(CLOSE_BOUND_SECONDS, shield=True):
            await stream.aclose()


_Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


@dataclass(frozen=True, slots=True)
class _Url:
    url: str
    secure: bool
    host: str
    port: int
    #: The ``Host`` header.
    authority: str
    #: The request target: path and query.
    resource: str


def _parse_url(url: str) -> _Url:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ControlPlaneError(f"invalid URL {url!r}: {exc}", code="invalid_url") from exc
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ControlPlaneError(
            f"invalid URL {url!r}: expected ws://HOST:PORT/ws or wss://...", code="invalid_url"
        )
    secure = parts.scheme == "wss"
    host = parts.hostname
    port = port if port is not None else (443 if secure else 80)
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == (443 if secure else 80) else f"{shown}:{port}"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Url(url, secure, host, port, authority, resource)


async def _open_stream(target: _Url, deadline: float) -> _Stream:
    try:
        with trio.fail_at(deadline):
            if target.secure:
                return await trio.open_ssl_over_tcp_stream(
                    target.host,
                    target.port,
                    ssl_context=ssl.create_default_context(),
                    https_compatible=True,
                )
            return await trio.open_tcp_stream(target.host, target.port)
    except OSError as exc:
        raise ControlPlaneError(
            f"cannot reach the gateway at {target.url}: {_describe(exc)}",
            code=GATEWAY_UNREACHABLE,
        ) from exc
    except trio.TooSlowError as exc:
        raise _handshake_timeout(target.url) from exc


async def _start(
    nursery: trio.Nursery,
    stream: _Stream,
    target: _Url,
    deadline: float,
    *,
    token: str | None,
    password: str | None,
    name: str,
) -> ControlClient:
    """The WebSocket upgrade and the ``connect`` exchange."""
    url = target.url
    try:
        with trio.fail_at(deadline):
            try:
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    target.authority,
                    target.resource,
                    max_message_size=MAX_FRAME_BYTES,
                )
            except ConnectionRejected as exc:
                status = exc.status_code
                raise ControlPlaneError(
                    f"the gateway at {url} refused the WebSocket upgrade (HTTP {status})",
                    code=AUTH_FAILED if status in (401, 403) else "handshake_rejected",
                ) from exc
            except (HandshakeError, ConnectionClosed, trio.BrokenResourceError) as exc:
                raise ControlPlaneError(
                    f"cannot reach the gateway at {url}: {_describe(exc)}",
                    code=GATEWAY_UNREACHABLE,
                ) from exc
            client = ControlClient(url, ws)
            try:
                await client._handshake(token=token, password=password, name=name)
            except BaseException:
                with trio.move_on_after(CLOSE_BOUND_SECONDS, shield=True):
                    await ws.aclose()
                raise
    except trio.TooSlowError as exc:
        raise _handshake_timeout(url) from exc
    return client


def _handshake_timeout(url: str) -> ControlPlaneError:
    return ControlPlaneError(
        f"the gateway at {url} did not complete the handshake within "
        f"{HANDSHAKE_BOUND_SECONDS:g} seconds",
        code="handshake_timeout",
    )


def _describe(exc: BaseException) -> str:
    while isinstance(exc, HandshakeError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _raise_sole(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the one real exception of a nursery's group (its own ``Cancelled`` aside).

    The client's nursery holds only its reader and trio-websocket's, neither of which raises;
    so a group is the caller's own exception, wrapped on its way out, and is unwrapped here so
    ``except ControlPlaneError`` works. Anything else is re-raised as the group.
    """
    real = [exc for exc in group.exceptions if not isinstance(exc, trio.Cancelled)]
    if len(real) == 1:
        inner = real[0]
    elif not real and len(group.exceptions) == 1:
        inner = group.exceptions[0]  # a lone Cancelled: the enclosing cancel scope's
    else:
        raise group
    context = inner.__context__
    try:
        raise inner
    finally:
        inner.__context__ = context
        del inner, context
