"""The WebSocket control plane on ``/`` and ``/ws`` (protocol: docs/control-protocol.md).

One :class:`ControlConnection` per socket. It is a nursery: a writer task drains the bounded
outgoing queue into the socket, a ticker sends ``tick`` events, the reader dispatches each
request to a task of its own, and each run the connection starts is a task too (or lives in the
runtime's background nursery when started detached). Nothing the gateway does waits for a slow
client: frames are queued without blocking, and a client whose queue overflows is disconnected
(close code 4008). Closing the socket cancels the connection's nursery: its runs are cancelled
and recorded as aborted.

The protocol (frames, close codes, each method's params and result) is ``wire.control``; this
module does the connection's I/O, the handshake, the dispatch and the methods that start and
follow runs. The methods that answer from the gateway's state are ``control_methods``.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import NoReturn, TypeVar

import msgspec
import trio
from quart import websocket
from quart_trio import QuartTrio

from .._version import __version__
from ..agent import AgentRuntime, RunEvent, RunFailed, RunFinished, RunRequest, RunStarted
from ..agent.active import ActiveRun
from ..agent.events import RunResult, ToolFinished, ToolStarted
from ..agent.kept import decode_result
from ..auth import check_secret, limiter_exempt
from ..cancellation import CONTROL_CLOSING
from ..errors import (
    AuthenticationError,
    AuthRateLimitedError,
    GatewayError,
    NotFoundError,
    OverloadedError,
    ServiceUnavailableError,
    SessionBusyError,
    UpstreamError,
)
from ..messages import Message
from ..providers.base import ReasoningDelta, TextDelta, ToolCallDelta
from ..wire import control as protocol
from ..wire.control import (
    ADVERTISED_METHODS,
    METHODS,
    PROTOCOL_VERSION,
    RELOAD_ONLY_METHODS,
    AbortParams,
    AbortResult,
    AgentAccepted,
    AgentEvent,
    AgentParams,
    ChallengePayload,
    ClientAuth,
    Closing,
    ConnectParams,
    ConnectResult,
    DeltaData,
    ErrorInfo,
    FrameError,
    LifecycleEndData,
    LifecycleErrorData,
    LifecycleStartData,
    Limits,
    ProtocolRange,
    RequestFrame,
    RunIdParams,
    ServerInfo,
    TickPayload,
    ToolCallInfo,
    ToolResultData,
    ToolStartData,
    Usage,
    encode_error_response,
    encode_event,
    encode_response,
    parse_request,
)
from .app_state import guard_credentials
from .control_methods import Handler, abort_session_everywhere, state_handlers
from .wslimits import HandshakeSlot, PendingHandshakes, scope_message_limit

__all__ = ["register_control_plane", "result_payload"]

logger = logging.getLogger(__name__)

#: Bound on sending a close frame to a client that may not be reading.
CLOSE_BOUND_SECONDS = 2.0


class _InvalidParams(GatewayError):
    code = "invalid_params"


class _ReloadOnly(GatewayError):
    http_status = 403
    error_type = "permission_error"
    code = "reload_only"


_P = TypeVar("_P", bound=msgspec.Struct)


def _params(kind: type[_P], params: Mapping[str, object]) -> _P:
    try:
        return msgspec.convert(params, kind)
    except msgspec.ValidationError as exc:
        raise _InvalidParams(f"invalid params: {exc}") from exc


def _error_frame(request_id: str | None, error: GatewayError) -> str:
    retryable = isinstance(error, OverloadedError | SessionBusyError) or (
        isinstance(error, UpstreamError) and error.retryable
    )
    retry_after_ms = None if error.retry_after is None else int(error.retry_after * 1000)
    return encode_error_response(
        request_id,
        code=error.code or error.error_type,
        message=error.message,
        retryable=retryable,
        retry_after_ms=retry_after_ms,
    )


def result_payload(result: RunResult, run_id: str) -> protocol.RunResult:
    """A run's result as the control protocol reports it (``agent``, ``agent.wait``)."""
    error = result.error
    return protocol.RunResult(
        run_id=run_id,
        status=result.status,
        text=result.text,
        stop_reason=result.finish_reason,
        usage=Usage(result.usage.prompt_tokens, result.usage.completion_tokens),
        text_dropped=result.text_dropped,
        error=None if error is None else ErrorInfo(error.code, error.message),
        tool_calls=[ToolCallInfo(c.id, c.name, c.arguments) for c in result.tool_calls],
    )


def _event_data(event: RunEvent) -> tuple[str, msgspec.Struct] | None:
    """An agent event as the protocol's ``(stream, data)``."""
    if type(event) is TextDelta:
        return "assistant", DeltaData(event.text)
    if type(event) is ReasoningDelta:
        return "reasoning", DeltaData(event.text)
    if isinstance(event, ToolStarted):
        return "tool", ToolStartData(event.call_id, event.name, event.arguments)
    if isinstance(event, ToolFinished):
        return "tool", ToolResultData(event.call_id, event.name, event.ok, event.result)
    if isinstance(event, RunStarted):
        return "lifecycle", LifecycleStartData(event.agent_id, event.session_key, event.model)
    if isinstance(event, RunFinished):
        usage = Usage(event.usage.prompt_tokens, event.usage.completion_tokens)
        return "lifecycle", LifecycleEndData(event.finish_reason, usage)
    if isinstance(event, RunFailed):
        return "lifecycle", LifecycleErrorData(ErrorInfo(event.error.code, event.error.message))
    if isinstance(event, ToolCallDelta):
        return None  # client tool calls are an OpenAI-API notion; the result lists them
    return None


@dataclass
class _RunFeed:
    """Turns one run's events into ``agent`` events on a connection."""

    connection: ControlConnection
    run_id: str
    seq: int = 0

    def __call__(self, event: RunEvent) -> None:
        mapped = _event_data(event)
        if mapped is None:
            return
        stream, data = mapped
        self.seq += 1
        self.connection.queue_event(
            "agent", AgentEvent(run_id=self.run_id, seq=self.seq, stream=stream, data=data)
        )


class ControlConnection:
    def __init__(self, runtime: AgentRuntime, slot: HandshakeSlot | None = None) -> None:
        self.runtime = runtime
        #: Its place among the connections waiting to authenticate, until ``connect`` succeeds.
        self._slot = slot
        self.settings = runtime.config.gateway.ws
        self.event_seq = 0
        self.closing: Closing | None = None
        #: The runtime's credentials generation this connection authenticated under.
        self.credentials = runtime.credentials_generation
        #: Authenticated with the config file's credential, not loaded yet: reload only.
        self.reload_only = False
        self._outgoing_send, self._outgoing_receive = trio.open_memory_channel[str](
            self.settings.send_queue_frames
        )
        self._nursery: trio.Nursery | None = None
        # Each takes its method's params struct (wire.control.METHODS) and returns its result.
        self._handlers: dict[str, Handler] = {
            **state_handlers(runtime),
            "agent.wait": self._agent_wait,
            "agent.abort": self._agent_abort,
        }

    # -- outgoing ---------------------------------------------------------------------------

    def queue(self, frame: str) -> None:
        """Queue a frame without waiting; a full queue means the client is too slow."""
        if self.closing is not None:
            return
        try:
            self._outgoing_send.send_nowait(frame)
        except trio.WouldBlock:
            self.close(protocol.SLOW_CONSUMER)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the connection is over; a detached run goes on without it

    def queue_event(self, event: str, payload: object) -> None:
        self.event_seq += 1
        self.queue(encode_event(event, payload, self.event_seq))

    def close(self, closing: Closing) -> None:
        """End the connection (from any task of it): cancel everything, then send the close."""
        if self.closing is None:
            self.closing = closing
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel(reason=CONTROL_CLOSING + closing.sent_reason)

    async def _writer(self) -> None:
        async with self._outgoing_receive:
            async for frame in self._outgoing_receive:
                await websocket.send(frame)

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.settings.tick_seconds)
            self.queue_event("tick", TickPayload(int(time.time() * 1000)))

    # -- the connection ---------------------------------------------------------------------

    async def serve(self) -> None:
        await websocket.accept()
        async with trio.open_nursery() as outer:
            # The writer lives outside the work nursery: when the gateway closes a connection,
            # the frames already queued (the error response that explains the close) still go.
            outer.start_soon(self._writer)
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._watch_message_limit()
                    await self._handshake()
                    nursery.start_soon(self._ticker)
                    nursery.start_soon(self._watch_credentials)
                    await self._read_requests(nursery)
            finally:
                self._outgoing_send.close()
                closing = self.closing
                if closing is protocol.SLOW_CONSUMER:
                    outer.cancel_scope.cancel(reason="slow consumer: queued frames dropped")
                else:
                    outer.cancel_scope.deadline = trio.current_time() + CLOSE_BOUND_SECONDS
        if self.closing is not None:
            closing = self.closing
            reason = closing.sent_reason
            logger.info("control.closed code=%d reason=%s", closing.code, reason)
            with trio.move_on_after(CLOSE_BOUND_SECONDS):
                await websocket.close(closing.code, reason)

    async def _watch_credentials(self) -> None:
        """A reload that changes the credential ends connections made with the old one."""
        await self.runtime.wait_credentials_changed(self.credentials)
        self.close(protocol.CREDENTIALS_CHANGED)

    def _watch_message_limit(self) -> None:
        """Close with 1009 as soon as a message passes its limit, while it is still arriving."""
        limit = scope_message_limit(websocket.scope)
        if limit is not None:
            limit.on_overflow(lambda: self.close(protocol.FRAME_TOO_LARGE))

    def _authenticated(self) -> None:
        """After ``connect``: no longer pending, and frames up to ``maxFrameBytes`` are allowed
        (a reload-only connection keeps the pre-auth limit: its two methods need no more)."""
        if self._slot is not None:
            self._slot.release()
        limit = scope_message_limit(websocket.scope)
        if limit is not None:
            limit.set_limit(
                self.settings.max_pre_auth_frame_bytes
                if self.reload_only
                else self.settings.max_frame_bytes
            )

    async def _end(self, closing: Closing) -> NoReturn:
        """Close the connection from its own task: cancel the nursery and unwind."""
        self.close(closing)
        await trio.lowlevel.checkpoint()  # raises Cancelled: the nursery was just cancelled
        raise AssertionError("a cancelled nursery did not cancel its task")

    async def _receive(self, limit: int) -> str:
        data = await websocket.receive()
        if not isinstance(data, str):  # bytes, or None for an empty binary frame (quart-trio)
            await self._end(protocol.BINARY_FRAME)
        if len(data) > limit or len(data.encode("utf-8")) > limit:
            await self._end(protocol.FRAME_TOO_LARGE)
        return data

    async def _handshake(self) -> None:
        nonce = secrets.token_urlsafe(16)
        offered = ProtocolRange(PROTOCOL_VERSION, PROTOCOL_VERSION)
        self.queue_event("connect.challenge", ChallengePayload(nonce, offered))
        with trio.move_on_after(self.settings.handshake_timeout_seconds):
            text = await self._receive(self.settings.max_pre_auth_frame_bytes)
            try:
                request = parse_request(text)
            except FrameError as exc:
                self.queue(
                    encode_error_response(exc.request_id, code="bad_frame", message=exc.message)
                )
                await self._end(protocol.BAD_FRAME)
            if request.method != "connect":
                self.queue(
                    encode_error_response(
                        request.id,
                        code="connect_required",
                        message="The first request must be 'connect'.",
                    )
                )
                await self._end(protocol.CONNECT_REQUIRED)
            await self._connect(request)
            return
        await self._end(protocol.HANDSHAKE_TIMEOUT)

    async def _connect(self, request: RequestFrame) -> None:
        try:
            params = _params(ConnectParams, request.params)
        except _InvalidParams as exc:
            self.queue(_error_frame(request.id, exc))
            await self._end(protocol.CONNECT_REQUIRED)
        if not params.min_protocol <= PROTOCOL_VERSION <= params.max_protocol:
            self.queue(
                encode_error_response(
                    request.id,
                    code="protocol_mismatch",
                    message=f"This gateway speaks protocol {PROTOCOL_VERSION} only.",
                )
            )
            await self._end(protocol.PROTOCOL_MISMATCH)
        auth = self.runtime.config.gateway.auth
        self.credentials = self.runtime.credentials_generation

        def check() -> None:
            try:
                check_secret(auth, params.auth.token, params.auth.password)
            except AuthenticationError:
                if not self._file_credential(params.auth):
                    raise
                self.reload_only = True

        try:
            guard_credentials(
                self.runtime,
                websocket.scope,
                websocket.headers.get("X-Forwarded-For"),
                check,
                transport="ws",
            )
        except AuthRateLimitedError as exc:
            self.queue(_error_frame(request.id, exc))
            await self._end(protocol.AUTH_FAILED)
        except AuthenticationError as exc:
            self.queue(encode_error_response(request.id, code="auth_failed", message=exc.message))
            await self._end(protocol.AUTH_FAILED)
        self._authenticated()
        logger.info(
            "control.connected client=%r version=%r", params.client.name, params.client.version
        )
        hello = ConnectResult(
            protocol=PROTOCOL_VERSION,
            server=ServerInfo("epiloop-gateway", __version__),
            methods=list(RELOAD_ONLY_METHODS if self.reload_only else ADVERTISED_METHODS),
            events=list(protocol.EVENTS),
            limits=Limits(self.settings.max_frame_bytes, self.settings.tick_seconds),
        )
        self.queue(encode_response(request.id, hello))

    def _file_credential(self, given: ClientAuth) -> bool:
        """Whether ``given`` is the credential the config file holds now, not loaded yet, and
        the client is on loopback. Such a client proves it can read the file, whose credential
        any reload would make valid: it may ask for that reload (and nothing else), so a
        changed token can be reloaded by whoever changed it."""
        config = self.runtime.config.gateway
        client = websocket.scope.get("client")
        peer = client[0] if isinstance(client, list | tuple) and client else None
        trusted = [ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies]
        # A direct loopback peer only: a forwarded address proves nothing (see limiter_exempt).
        if not limiter_exempt(
            peer if isinstance(peer, str) else None,
            websocket.headers.get("X-Forwarded-For"),
            trusted,
        ):
            return False
        pending = self.runtime.file_auth()
        if pending is None or pending.secret is None:
            return False
        try:
            check_secret(pending, given.token, given.password)
        except AuthenticationError:
            return False
        logger.info("control.connected_for_reload reason=file_credential")
        return True

    async def _read_requests(self, nursery: trio.Nursery) -> None:
        while True:
            text = await self._receive(self.settings.max_frame_bytes)
            try:
                request = parse_request(text)
            except FrameError as exc:
                self.queue(
                    encode_error_response(exc.request_id, code="bad_frame", message=exc.message)
                )
                await self._end(protocol.BAD_FRAME)
            nursery.start_soon(self._dispatch, request)

    async def _dispatch(self, request: RequestFrame) -> None:
        try:
            if self.reload_only and request.method not in RELOAD_ONLY_METHODS:
                raise _ReloadOnly(
                    "This connection authenticated with the credential in the gateway's config "
                    "file, which the gateway has not loaded yet: it may only call "
                    "config.reload. Reload first, or use the credential the gateway runs with."
                )
            if request.method == "agent":
                await self._agent(request)
                return
            handler = self._handlers.get(request.method)
            if handler is None:
                raise NotFoundError(f"Unknown method {request.method!r}.", code="unknown_method")
            params = _params(METHODS[request.method].params, request.params)
            self.queue(encode_response(request.id, await handler(params)))
        except GatewayError as exc:
            self.queue(_error_frame(request.id, exc))

    # -- methods ----------------------------------------------------------------------------

    async def _agent(self, request: RequestFrame) -> None:
        params = _params(AgentParams, request.params)
        runtime = self.runtime
        if params.idempotency_key is not None:
            run_id = runtime.active_runs.run_for_idempotency_key(params.idempotency_key)
            if run_id is None and runtime.cluster is not None:
                run_id = await runtime.cluster.find_idempotent(params.idempotency_key)
            if run_id is not None:
                await self._attach(request.id, run_id)
                return
        prepared = await runtime.prepare(
            RunRequest(
                messages=(Message("user", params.message),),
                agent_id=None if params.agent_id is None else params.agent_id.strip(),
                session_key=params.session_key or None,
                default_session="main",
                idempotency_key=params.idempotency_key,
                source="ws",
            )
        )
        admitted = await runtime.admit(prepared)
        feed = _RunFeed(self, prepared.run_id)
        self.queue(encode_response(request.id, AgentAccepted("accepted", prepared.run_id)))

        async def run() -> None:
            with admitted:
                result = await admitted.run(_as_async(feed))
            self.queue(encode_response(request.id, result_payload(result, prepared.run_id)))

        if params.detached:
            runtime.start_background(partial(_detached, run, prepared.run_id))
        else:
            await run()

    async def _attach(self, request_id: str, run_id: str) -> None:
        """An idempotent retry: follow the run that the first request started."""
        runtime = self.runtime
        self.queue(encode_response(request_id, AgentAccepted("accepted", run_id)))
        active = runtime.active_runs.get(run_id)
        if active is not None:
            feed = _RunFeed(self, run_id)
            active.subscribers.append(feed)
            try:
                await active.done.wait()
            finally:
                active.subscribers.remove(feed)
            result = active.result
        else:
            result = await self._finished_result(run_id)
        if result is None:
            raise NotFoundError(f"The run {run_id!r} is no longer known.")
        self.queue(encode_response(request_id, result_payload(result, run_id)))

    async def _agent_wait(self, params: RunIdParams) -> protocol.RunResult:
        run_id = params.run_id
        active: ActiveRun | None = self.runtime.active_runs.get(run_id)
        if active is not None:
            await active.done.wait()
            result = active.result
        else:
            result = await self._finished_result(run_id)
        if result is None:
            raise NotFoundError(f"No run {run_id!r} is running or finished recently.")
        return result_payload(result, run_id)

    async def _finished_result(self, run_id: str) -> RunResult | None:
        """A run that is not running here: its kept result here, else (PostgreSQL mode) the
        one another instance kept, once that run ends."""
        result = self.runtime.active_runs.result(run_id)
        cluster = self.runtime.cluster
        if result is None and cluster is not None:
            kept = await cluster.wait_result(run_id)
            result = None if kept is None else decode_result(kept)
        return result

    async def _agent_abort(self, abort: AbortParams) -> AbortResult:
        await trio.lowlevel.checkpoint()
        runs = self.runtime.active_runs
        cluster = self.runtime.cluster
        if abort.run_id is not None:
            aborted = [abort.run_id] if runs.abort(abort.run_id) else []
            if not aborted and cluster is not None:
                aborted = await cluster.request_abort(abort.run_id)  # on another instance
            if not aborted:
                raise NotFoundError(f"No run {abort.run_id!r} is in progress.")
        elif abort.session_key is not None:
            aborted = await abort_session_everywhere(self.runtime, abort.session_key)
        else:
            raise _InvalidParams("agent.abort needs 'runId' or 'sessionKey'.")
        return AbortResult(aborted)


async def _detached(run: Callable[[], Awaitable[None]], run_id: str) -> None:
    """A detached run in the gateway's background nursery: a failure there must not take the
    nursery (and every other detached run) down with it."""
    try:
        await run()
    except Exception:
        logger.exception("control.detached_run.crashed run_id=%s", run_id)


def _as_async(feed: Callable[[RunEvent], None]) -> Callable[[RunEvent], Awaitable[None]]:
    async def emit(event: RunEvent) -> None:
        feed(event)

    return emit


def register_control_plane(app: QuartTrio, runtime: AgentRuntime) -> None:
    pending = PendingHandshakes()

    async def control() -> None:
        cap = runtime.config.gateway.ws.max_unauthenticated_connections
        slot = pending.try_hold(cap)
        if slot is None:
            # Before the upgrade is accepted: the client gets an HTTP 503 with a JSON body.
            logger.info("control.refused reason=too_many_unauthenticated pending=%d", cap)
            raise ServiceUnavailableError(
                "Too many WebSocket connections are waiting to authenticate "
                "(gateway.ws.maxUnauthenticatedConnections); retry shortly.",
                code="too_many_unauthenticated",
                retry_after=1,
            )
        try:
            await ControlConnection(runtime, slot).serve()
        finally:
            slot.release()

    app.add_websocket("/", "control_root", control)
    app.add_websocket("/ws", "control_ws", control)
