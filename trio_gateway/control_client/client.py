"""The connected control client: :class:`ControlClient` sends requests and routes what arrives.

Its reader task (in a nursery the client owns, started by :func:`~.open.open_control_client`)
routes every frame: a response to the request waiting for its id, an ``agent`` event to the run
it belongs to. ``request`` sends one request and returns its payload; ``run_agent`` starts a run,
hands its events to a callback and returns the final result. Cancelling ``run_agent`` after the
run was accepted aborts the run on the gateway (``agent.abort``, shielded and bounded).

This module imports nothing from the server.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
)

from .._version import __version__
from ..errors import ControlPlaneError
from ..wire.control import (
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
from .failures import AUTH_FAILED, closed_error

__all__ = [
    "ABORT_BOUND_SECONDS",
    "CLOSE_BOUND_SECONDS",
    "ControlClient",
    "ControlStatistics",
    "EventHandler",
    "Params",
]

logger = logging.getLogger(__name__)

#: Closing the socket (send the close frame, wait for the gateway's) runs shielded, this long.
CLOSE_BOUND_SECONDS = 5.0
#: ``agent.abort`` for a cancelled ``run_agent`` runs shielded, this long.
ABORT_BOUND_SECONDS = 5.0
#: Frames buffered for one waiting request before the reader waits for its consumer.
REQUEST_BUFFER_FRAMES = 256
#: ``agent`` events of runs nobody waits for (yet), kept in case their run is accepted next.
ORPHAN_EVENTS = 256

#: A request's params: the method's struct (``trio_gateway.wire.control``), or plain JSON data.
Params = msgspec.Struct | Mapping[str, object]

#: What ``run_agent`` calls with each ``agent`` event payload; it may be async.
EventHandler = Callable[[dict[str, object]], Awaitable[None] | None]


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
