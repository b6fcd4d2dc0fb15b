"""The WebSocket control plane on ``/`` and ``/ws`` (protocol: docs/control-protocol.md).

One :class:`ControlConnection` per socket. It is a nursery: a writer task drains the bounded
outgoing queue into the socket, a ticker sends ``tick`` events, the reader dispatches each
request to a task of its own, and each run the connection starts is a task too (or lives in the
runtime's background nursery when started detached). Nothing the gateway does waits for a slow
client: frames are queued without blocking, and a client whose queue overflows is disconnected
(close code 4008). Closing the socket cancels the connection's nursery: its runs are cancelled
and recorded as aborted.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn, TypeVar

import msgspec
import trio
from quart import websocket
from quart_trio import QuartTrio

from .._version import __version__
from ..agent import AgentRuntime, RunEvent, RunFailed, RunFinished, RunStarted
from ..agent.active import ActiveRun
from ..agent.events import RunResult, ToolFinished, ToolStarted
from ..agent.routing import select_agent
from ..auth import check_secret, client_address, is_loopback_host
from ..cancellation import CONTROL_CLOSING
from ..config import redacted
from ..errors import (
    AuthenticationError,
    AuthRateLimitedError,
    ConfigError,
    GatewayError,
    OverloadedError,
    ServiceUnavailableError,
    SessionBusyError,
    UpstreamError,
)
from ..providers.base import ReasoningDelta, TextDelta, ToolCallDelta
from ..sessions.store import SessionInfo
from ..wire.chat import ChatRequest, UserMessage
from ..wire.frames import (
    FrameError,
    RequestFrame,
    encode_error_response,
    encode_event,
    encode_response,
    parse_request,
)
from .app_state import guard_credentials
from .wslimits import HandshakeSlot, PendingHandshakes, scope_message_limit

__all__ = ["register_control_plane"]

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
METHODS = (
    "health",
    "status",
    "agents.list",
    "models.list",
    "agent",
    "agent.wait",
    "agent.abort",
    "sessions.list",
    "sessions.get",
    "sessions.reset",
    "sessions.delete",
    "config.get",
    "config.reload",
)
EVENTS = ("connect.challenge", "tick", "agent")
#: What a connection authenticated with the config file's new credential may call (see
#: ``_file_credential``).
RELOAD_ONLY_METHODS = ("health", "config.reload")
#: Bound on sending a close frame to a client that may not be reading.
CLOSE_BOUND_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class _Closing:
    """Why the gateway ends a connection: the close code and reason it sends."""

    code: int
    reason: str


class _Params(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    pass


class _ClientInfo(msgspec.Struct, frozen=True):
    name: str = "unknown"
    version: str = ""


class _Auth(msgspec.Struct, frozen=True):
    token: str | None = None
    password: str | None = None


class ConnectParams(_Params, frozen=True):
    min_protocol: int = PROTOCOL_VERSION
    max_protocol: int = PROTOCOL_VERSION
    client: _ClientInfo = msgspec.field(default_factory=_ClientInfo)
    auth: _Auth = msgspec.field(default_factory=_Auth)


class AgentParams(_Params, frozen=True):
    message: Annotated[str, msgspec.Meta(min_length=1)]
    agent_id: str | None = None
    session_key: str | None = None
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    detached: bool = False


class RunIdParams(_Params, frozen=True):
    run_id: str


class AbortParams(_Params, frozen=True):
    run_id: str | None = None
    session_key: str | None = None


class SessionsListParams(_Params, frozen=True):
    agent_id: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class SessionKeyParams(_Params, frozen=True):
    key: str


class _InvalidParams(GatewayError):
    code = "invalid_params"


class _NotFound(GatewayError):
    code = "not_found"


class _InvalidConfig(GatewayError):
    code = "invalid_config"


class _ReloadOnly(GatewayError):
    http_status = 403
    error_type = "permission_error"
    code = "reload_only"


_P = TypeVar("_P", bound=_Params)


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


def _result_payload(result: RunResult, run_id: str) -> dict[str, object]:
    payload: dict[str, object] = {
        "runId": run_id,
        "status": result.status,
        "text": result.text,
        "stopReason": result.finish_reason,
        "usage": {
            "promptTokens": result.usage.prompt_tokens,
            "completionTokens": result.usage.completion_tokens,
        },
    }
    if result.text_dropped:
        payload["textDropped"] = True
    if result.error is not None:
        payload["error"] = {"code": result.error.code, "message": result.error.message}
    if result.tool_calls:
        payload["toolCalls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in result.tool_calls
        ]
    return payload


def _event_data(event: RunEvent) -> tuple[str, dict[str, object]] | None:
    """An agent event as the protocol's ``(stream, data)``."""
    if type(event) is TextDelta:
        return "assistant", {"delta": event.text}
    if type(event) is ReasoningDelta:
        return "reasoning", {"delta": event.text}
    if isinstance(event, ToolStarted):
        return "tool", {
            "phase": "start",
            "callId": event.call_id,
            "name": event.name,
            "arguments": event.arguments,
        }
    if isinstance(event, ToolFinished):
        return "tool", {
            "phase": "result",
            "callId": event.call_id,
            "name": event.name,
            "ok": event.ok,
            "result": event.result,
        }
    if isinstance(event, RunStarted):
        return "lifecycle", {
            "phase": "start",
            "agentId": event.agent_id,
            "sessionKey": event.session_key,
            "model": event.model,
        }
    if isinstance(event, RunFinished):
        usage = {
            "promptTokens": event.usage.prompt_tokens,
            "completionTokens": event.usage.completion_tokens,
        }
        return "lifecycle", {"phase": "end", "stopReason": event.finish_reason, "usage": usage}
    if isinstance(event, RunFailed):
        error = {"code": event.error.code, "message": event.error.message}
        return "lifecycle", {"phase": "error", "error": error}
    if isinstance(event, ToolCallDelta):
        return None  # client tool calls are an OpenAI-API notion; the result lists them
    return None


def _session_info(info: SessionInfo) -> dict[str, object]:
    return {
        "key": info.key,
        "agentId": info.agent_id,
        "createdAt": info.created_at,
        "updatedAt": info.updated_at,
        "model": info.model,
        "lastStatus": info.last_status,
        "lastRunId": info.last_run_id,
        "messageCount": info.message_count,
        "promptTokens": info.prompt_tokens,
        "completionTokens": info.completion_tokens,
    }


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
        payload = {"runId": self.run_id, "seq": self.seq, "stream": stream, "data": data}
        self.connection.queue_event("agent", payload)


class ControlConnection:
    def __init__(self, runtime: AgentRuntime, slot: HandshakeSlot | None = None) -> None:
        self.runtime = runtime
        #: Its place among the connections waiting to authenticate, until ``connect`` succeeds.
        self._slot = slot
        self.settings = runtime.config.gateway.ws
        self.event_seq = 0
        self.closing: _Closing | None = None
        #: The runtime's credentials generation this connection authenticated under.
        self.credentials = runtime.credentials_generation
        #: Authenticated with the config file's credential, not loaded yet: reload only.
        self.reload_only = False
        self._outgoing_send, self._outgoing_receive = trio.open_memory_channel[str](
            self.settings.send_queue_frames
        )
        self._nursery: trio.Nursery | None = None
        self._handlers: dict[str, Callable[[Mapping[str, object]], Awaitable[object]]] = {
            "health": self._health,
            "status": self._status,
            "agents.list": self._agents_list,
            "models.list": self._models_list,
            "agent.wait": self._agent_wait,
            "agent.abort": self._agent_abort,
            "sessions.list": self._sessions_list,
            "sessions.get": self._sessions_get,
            "sessions.reset": self._sessions_reset,
            "sessions.delete": self._sessions_delete,
            "config.get": self._config_get,
            "config.reload": self._config_reload,
        }

    # -- outgoing ---------------------------------------------------------------------------

    def queue(self, frame: str) -> None:
        """Queue a frame without waiting; a full queue means the client is too slow."""
        if self.closing is not None:
            return
        try:
            self._outgoing_send.send_nowait(frame)
        except trio.WouldBlock:
            self.close(4008, "slow_consumer")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the connection is over; a detached run goes on without it

    def queue_event(self, event: str, payload: object) -> None:
        self.event_seq += 1
        self.queue(encode_event(event, payload, self.event_seq))

    def close(self, code: int, reason: str) -> None:
        """End the connection (from any task of it): cancel everything, then send the close."""
        if self.closing is None:
            self.closing = _Closing(code, reason)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel(reason=CONTROL_CLOSING + reason)

    async def _writer(self) -> None:
        async with self._outgoing_receive:
            async for frame in self._outgoing_receive:
                await websocket.send(frame)

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.settings.tick_seconds)
            self.queue_event("tick", {"ts": int(time.time() * 1000)})

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
                if closing is not None and closing.code == 4008:
                    outer.cancel_scope.cancel(reason="slow consumer: queued frames dropped")
                else:
                    outer.cancel_scope.deadline = trio.current_time() + CLOSE_BOUND_SECONDS
        if self.closing is not None:
            closing = self.closing
            logger.info("control.closed code=%d reason=%s", closing.code, closing.reason)
            with trio.move_on_after(CLOSE_BOUND_SECONDS):
                await websocket.close(closing.code, closing.reason)

    async def _watch_credentials(self) -> None:
        """A reload that changes the credential ends connections made with the old one."""
        await self.runtime.wait_credentials_changed(self.credentials)
        self.close(4001, "credentials_changed")

    def _watch_message_limit(self) -> None:
        """Close with 1009 as soon as a message passes its limit, while it is still arriving."""
        limit = scope_message_limit(websocket.scope)
        if limit is not None:
            limit.on_overflow(lambda: self.close(1009, "frame_too_large"))

    def _authenticated(self) -> None:
        """After ``connect``: no longer pending, and frames up to ``maxFrameBytes`` are allowed."""
        if self._slot is not None:
            self._slot.release()
        limit = scope_message_limit(websocket.scope)
        if limit is not None:
            limit.set_limit(self.settings.max_frame_bytes)

    async def _end(self, code: int, reason: str) -> NoReturn:
        """Close the connection from its own task: cancel the nursery and unwind."""
        self.close(code, reason)
        await trio.lowlevel.checkpoint()  # raises Cancelled: the nursery was just cancelled
        raise AssertionError("a cancelled nursery did not cancel its task")

    async def _receive(self, limit: int) -> str:
        data = await websocket.receive()
        if not isinstance(data, str):  # bytes, or None for an empty binary frame (quart-trio)
            await self._end(1003, "binary frames are not supported")
        if len(data) > limit or len(data.encode("utf-8")) > limit:
            await self._end(1009, "frame_too_large")
        return data

    async def _handshake(self) -> None:
        nonce = secrets.token_urlsafe(16)
        protocol = {"min": PROTOCOL_VERSION, "max": PROTOCOL_VERSION}
        self.queue_event("connect.challenge", {"nonce": nonce, "protocol": protocol})
        with trio.move_on_after(self.settings.handshake_timeout_seconds):
            text = await self._receive(self.settings.max_pre_auth_frame_bytes)
            try:
                request = parse_request(text)
            except FrameError as exc:
                self.queue(
                    encode_error_response(exc.request_id, code="bad_frame", message=exc.message)
                )
                await self._end(1007, "bad_frame")
            if request.method != "connect":
                self.queue(
                    encode_error_response(
                        request.id,
                        code="connect_required",
                        message="The first request must be 'connect'.",
                    )
                )
                await self._end(4004, "connect_required")
            await self._connect(request)
            return
        await self._end(4002, "handshake_timeout")

    async def _connect(self, request: RequestFrame) -> None:
        try:
            params = _params(ConnectParams, request.params)
        except _InvalidParams as exc:
            self.queue(_error_frame(request.id, exc))
            await self._end(4004, "connect_required")
        if not params.min_protocol <= PROTOCOL_VERSION <= params.max_protocol:
            self.queue(
                encode_error_response(
                    request.id,
                    code="protocol_mismatch",
                    message=f"This gateway speaks protocol {PROTOCOL_VERSION} only.",
                )
            )
            await self._end(4003, "protocol_mismatch")
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
            await self._end(4001, "auth_failed")
        except AuthenticationError as exc:
            self.queue(encode_error_response(request.id, code="auth_failed", message=exc.message))
            await self._end(4001, "auth_failed")
        self._authenticated()
        logger.info(
            "control.connected client=%r version=%r", params.client.name, params.client.version
        )
        payload = {
            "protocol": PROTOCOL_VERSION,
            "server": {"name": "epiloop-gateway", "version": __version__},
            "methods": list(RELOAD_ONLY_METHODS if self.reload_only else METHODS),
            "events": list(EVENTS),
            "limits": {
                "maxFrameBytes": self.settings.max_frame_bytes,
                "tickSeconds": self.settings.tick_seconds,
            },
        }
        self.queue(encode_response(request.id, payload))

    def _file_credential(self, given: _Auth) -> bool:
        """Whether ``given`` is the credential the config file holds now, not loaded yet, and
        the client is on loopback. Such a client proves it can read the file, whose credential
        any reload would make valid: it may ask for that reload (and nothing else), so a
        changed token can be reloaded by whoever changed it."""
        config = self.runtime.config.gateway
        client = websocket.scope.get("client")
        peer = client[0] if isinstance(client, list | tuple) and client else None
        trusted = [ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies]
        address = client_address(
            peer if isinstance(peer, str) else None,
            websocket.headers.get("X-Forwarded-For"),
            trusted,
        )
        if not is_loopback_host(address):
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
                await self._end(1007, "bad_frame")
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
                raise _NotFound(f"Unknown method {request.method!r}.", code="unknown_method")
            self.queue(encode_response(request.id, await handler(request.params)))
        except GatewayError as exc:
            self.queue(_error_frame(request.id, exc))

    # -- methods ----------------------------------------------------------------------------

    async def _health(self, params: Mapping[str, object]) -> object:
        await trio.lowlevel.checkpoint()
        return {"ok": True, "uptimeSeconds": round(time.time() - self.runtime.started_at, 3)}

    async def _status(self, params: Mapping[str, object]) -> object:
        await trio.lowlevel.checkpoint()
        now = time.time()
        runs = [
            {
                "runId": run.run_id,
                "agentId": run.agent_id,
                "sessionKey": run.session_key,
                "source": run.source,
                "startedAt": run.started_at,
                "ageSeconds": round(now - run.started_at, 3),
                "textChars": run.text_chars,
                # Text deltas streamed so far: the upstream's tokens, as it sent them.
                "deltas": len(run.parts),
            }
            for run in self.runtime.active_runs.running()
        ]
        stats = self.runtime.admission.statistics()
        return {
            "uptimeSeconds": round(now - self.runtime.started_at, 3),
            "runs": runs,
            "admission": {
                "running": stats.running,
                "queued": stats.queued,
                "busySessions": stats.busy_sessions,
                "waitingForSession": stats.waiting_for_session,
            },
        }

    async def _agents_list(self, params: Mapping[str, object]) -> object:
        await trio.lowlevel.checkpoint()
        config = self.runtime.config
        default_model = config.agents.defaults.model
        default = select_agent(config, header_agent_id=None, model="epiloop")
        agents = [
            {
                "id": agent.id,
                "name": agent.name or agent.id,
                "model": agent.model or default_model,
                "default": agent.id == default.id,
            }
            for agent in config.agents.entries
        ]
        return {"agents": agents}

    async def _models_list(self, params: Mapping[str, object]) -> object:
        await trio.lowlevel.checkpoint()
        return {"models": [{"id": f"epiloop:{a.id}"} for a in self.runtime.config.agents.entries]}

    async def _agent(self, request: RequestFrame) -> None:
        params = _params(AgentParams, request.params)
        runtime = self.runtime
        if params.idempotency_key is not None:
            run_id = runtime.active_runs.run_for_idempotency_key(params.idempotency_key)
            if run_id is not None:
                await self._attach(request.id, run_id)
                return
        agent = select_agent(runtime.config, header_agent_id=params.agent_id, model="epiloop")
        chat = ChatRequest(messages=[UserMessage(content=params.message)])
        prepared = await runtime.prepare(
            chat,
            header_agent_id=agent.id,
            header_session_key=params.session_key or f"agent:{agent.id.lower()}:main",
        )
        ticket = await runtime.admit(prepared)
        if params.idempotency_key is not None:
            runtime.active_runs.remember_idempotency_key(params.idempotency_key, prepared.run_id)
        feed = _RunFeed(self, prepared.run_id)
        self.queue(encode_response(request.id, {"status": "accepted", "runId": prepared.run_id}))

        async def run() -> None:
            with ticket:
                result = await runtime.run(prepared, _as_async(feed), source="ws")
            self.queue(encode_response(request.id, _result_payload(result, prepared.run_id)))

        if params.detached and runtime.background is not None:
            runtime.background.start_soon(_detached, run, prepared.run_id)
        else:
            await run()

    async def _attach(self, request_id: str, run_id: str) -> None:
        """An idempotent retry: follow the run that the first request started."""
        runtime = self.runtime
        self.queue(encode_response(request_id, {"status": "accepted", "runId": run_id}))
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
            result = runtime.active_runs.result(run_id)
        if result is None:
            raise _NotFound(f"The run {run_id!r} is no longer known.")
        self.queue(encode_response(request_id, _result_payload(result, run_id)))

    async def _agent_wait(self, params: Mapping[str, object]) -> object:
        run_id = _params(RunIdParams, params).run_id
        active: ActiveRun | None = self.runtime.active_runs.get(run_id)
        if active is not None:
            await active.done.wait()
            result = active.result
        else:
            result = self.runtime.active_runs.result(run_id)
        if result is None:
            raise _NotFound(f"No run {run_id!r} is running or finished recently.")
        return _result_payload(result, run_id)

    async def _agent_abort(self, params: Mapping[str, object]) -> object:
        await trio.lowlevel.checkpoint()
        abort = _params(AbortParams, params)
        runs = self.runtime.active_runs
        if abort.run_id is not None:
            aborted = [abort.run_id] if runs.abort(abort.run_id) else []
            if not aborted:
                raise _NotFound(f"No run {abort.run_id!r} is in progress.")
        elif abort.session_key is not None:
            aborted = runs.abort_session(abort.session_key)
        else:
            raise _InvalidParams("agent.abort needs 'runId' or 'sessionKey'.")
        return {"aborted": aborted}

    async def _sessions_list(self, params: Mapping[str, object]) -> object:
        query = _params(SessionsListParams, params)
        sessions = await self.runtime.sessions.list_sessions(
            agent_id=query.agent_id, limit=query.limit
        )
        return {"sessions": [_session_info(info) for info in sessions]}

    async def _sessions_get(self, params: Mapping[str, object]) -> object:
        key = _params(SessionKeyParams, params).key
        session = await self.runtime.sessions.get(key)
        if session is None:
            raise _NotFound(f"No session {key!r}.")
        payload: dict[str, Any] = _session_info(session)
        payload["transcript"] = [
            {
                "role": entry.role,
                "content": entry.content,
                "status": entry.status,
                "internal": entry.internal,
                **(
                    {
                        "toolCalls": [
                            {"id": c.id, "name": c.name, "arguments": c.arguments}
                            for c in entry.tool_calls
                        ]
                    }
                    if entry.tool_calls
                    else {}
                ),
                **({"toolCallId": entry.tool_call_id} if entry.tool_call_id else {}),
            }
            for entry in session.transcript
        ]
        return payload

    async def _sessions_reset(self, params: Mapping[str, object]) -> object:
        key = _params(SessionKeyParams, params).key
        if not await self.runtime.sessions.reset(key):
            raise _NotFound(f"No session {key!r}.")
        return {"reset": True}

    async def _sessions_delete(self, params: Mapping[str, object]) -> object:
        key = _params(SessionKeyParams, params).key
        if not await self.runtime.sessions.delete(key):
            raise _NotFound(f"No session {key!r}.")
        return {"deleted": True}

    async def _config_reload(self, params: Mapping[str, object]) -> object:
        await trio.lowlevel.checkpoint()
        try:
            result = self.runtime.reload_from_file()
        except ConfigError as exc:
            raise _InvalidConfig(f"config not reloaded, the running config stays: {exc}") from exc
        return {
            "reloaded": True,
            "source": str(self.runtime.config_path),
            "warnings": result.warnings,
            "restartRequired": result.restart_required,
        }

    async def _config_get(self, params: Mapping[str, object]) -> object:
        await trio.lowlevel.checkpoint()
        return redacted(self.runtime.config)


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
