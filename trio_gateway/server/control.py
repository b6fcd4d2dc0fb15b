"""The WebSocket control plane on ``/`` and ``/ws`` (protocol: docs/control-protocol.md).

One :class:`ControlConnection` per socket. It is a nursery: a writer task drains the bounded
outgoing queue into the socket, a ticker sends ``tick`` events, the reader dispatches each
request to a task of its own, and each run the connection starts is a task too (or lives in the
runtime's background nursery when started detached). Nothing the gateway does waits for a slow
client: frames are queued without blocking, and a client whose queue overflows is disconnected
(close code 4008). Closing the socket cancels the connection's nursery: its runs are cancelled
and recorded as aborted. An upgrade that carries an ``Origin`` (a browser page) is refused with
403 unless that origin is the gateway's own or listed in ``gateway.controlUi.allowedOrigins``.

The protocol (frames, close codes, each method's params and result) is ``wire.control``; this
module does the connection's I/O, the handshake and the dispatch. The methods that start and
follow runs are ``control_runs``; those that answer from the gateway's state,
``control_methods``.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from typing import NoReturn

import trio
from quart import websocket
from quart_trio import QuartTrio

from .._version import __version__
from ..agent import AgentRuntime
from ..auth import check_secret, limiter_exempt, origin_allowed
from ..cancellation import CONTROL_CLOSING
from ..config import AuthConfig
from ..errors import (
    AuthenticationError,
    AuthRateLimitedError,
    ForbiddenOriginError,
    GatewayError,
    NotFoundError,
    OverloadedError,
    ServiceUnavailableError,
    SessionBusyError,
    UpstreamError,
)
from ..wire import control as protocol
from ..wire.control import (
    ADVERTISED_METHODS,
    METHODS,
    PROTOCOL_VERSION,
    RELOAD_ONLY_METHODS,
    AgentParams,
    ChallengePayload,
    ClientAuth,
    Closing,
    ConnectParams,
    ConnectResult,
    FrameError,
    Limits,
    ProtocolRange,
    RequestFrame,
    ServerInfo,
    TickPayload,
    encode_error_response,
    encode_event,
    encode_response,
    parse_request,
)
from .app_state import guard_credentials
from .control_methods import Handler, InvalidParams, method_params, state_handlers
from .control_runs import agent, run_handlers
from .wslimits import HandshakeSlot, PendingHandshakes, scope_message_limit

__all__ = ["register_control_plane"]

logger = logging.getLogger(__name__)

#: Bound on sending a close frame to a client that may not be reading.
CLOSE_BOUND_SECONDS = 2.0


class _ReloadOnly(GatewayError):
    http_status = 403
    error_type = "permission_error"
    code = "reload_only"


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
        self._handlers: dict[str, Handler] = {**state_handlers(runtime), **run_handlers(runtime)}

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
            params = method_params(ConnectParams, request.params)
        except InvalidParams as exc:
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
        file_auth = await self._file_auth_for(params.auth)
        auth = self.runtime.config.gateway.auth
        self.credentials = self.runtime.credentials_generation

        def check() -> None:
            try:
                check_secret(auth, params.auth.token, params.auth.password)
            except AuthenticationError:
                if not self._file_credential(params.auth, file_auth):
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

    async def _file_auth_for(self, given: ClientAuth) -> AuthConfig | None:
        """The auth settings the config file holds now, for a client on loopback whose
        credential the running config refuses (``None`` for any other: only such a client may
        use the file's credential, see :meth:`_file_credential`). The file is read off the
        event loop, and only then."""
        try:
            check_secret(self.runtime.config.gateway.auth, given.token, given.password)
        except AuthenticationError:
            config = self.runtime.config.gateway
            client = websocket.scope.get("client")
            peer = client[0] if isinstance(client, list | tuple) and client else None
            trusted = [ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies]
            # A direct loopback peer only: a forwarded address proves nothing (see
            # limiter_exempt).
            if limiter_exempt(
                peer if isinstance(peer, str) else None,
                websocket.headers.get("X-Forwarded-For"),
                trusted,
            ):
                return await self.runtime.file_auth()
        return None

    def _file_credential(self, given: ClientAuth, file_auth: AuthConfig | None) -> bool:
        """Whether ``given`` is the credential the config file holds now (``file_auth``, read
        only for a client on loopback), not loaded yet. Such a client proves it can read the
        file, whose credential any reload would make valid: it may ask for that reload (and
        nothing else), so a changed token can be reloaded by whoever changed it."""
        if file_auth is None or file_auth.secret is None:
            return False
        try:
            check_secret(file_auth, given.token, given.password)
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
                agent_params = method_params(AgentParams, request.params)
                await agent(self.runtime, self, request.id, agent_params)
                return
            handler = self._handlers.get(request.method)
            if handler is None:
                raise NotFoundError(f"Unknown method {request.method!r}.", code="unknown_method")
            params = method_params(METHODS[request.method].params, request.params)
            self.queue(encode_response(request.id, await handler(params)))
        except GatewayError as exc:
            self.queue(_error_frame(request.id, exc))


def register_control_plane(app: QuartTrio, runtime: AgentRuntime) -> None:
    pending = PendingHandshakes()

    async def control() -> None:
        origin = websocket.headers.get("Origin")
        allowed = runtime.config.gateway.control_ui.allowed_origins
        if not origin_allowed(origin, websocket.headers.get("Host"), allowed):
            # A page of another site is driving the visitor's browser (cross-site WebSocket
            # hijacking): refused before the upgrade, whatever credential it may hold.
            logger.info("control.refused reason=origin_not_allowed origin=%r", (origin or "")[:200])
            raise ForbiddenOriginError(
                "This page's origin may not open the control plane (allowed: the gateway's "
                "own pages and gateway.controlUi.allowedOrigins)."
            )
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
