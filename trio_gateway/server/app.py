"""The quart-trio application: factory, JSON error handling and the ASGI wrapper hypercorn serves.

Every error leaves as an OpenAI-shaped JSON body: our own :class:`GatewayError` tree, werkzeug's
HTTP exceptions (unknown path, wrong method, body too large) translated once here, and anything
unexpected as a generic 500 whose details go to the log only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPScope,
    Scope,
    WebsocketScope,
)
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from .. import disconnects, metrics
from ..agent import AgentRuntime
from ..config import Config
from ..errors import (
    GatewayError,
    HeadersTooLargeError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
    ServiceUnavailableError,
    UnprotectedError,
)
from ..logs import accepted_request_id, bind_request_id
from ..pg.instances import live_instance_ids
from ..wire.error_body import encode_error
from .app_state import CLEANUPS_KEY, on_loopback
from .chat_routes import register_chat_routes
from .control import register_control_plane
from .control_ui import register_ui_routes
from .ops import register_ops_routes
from .response_log import ResponseLogs
from .responses_routes import register_responses_routes
from .streaming import KeepAliveClock
from .wslimits import MESSAGE_LIMIT_KEY, install_message_limit

__all__ = ["GatewayApp", "create_app", "error_response"]

logger = logging.getLogger(__name__)

#: How long the last body message of a response may take to send, shielded from cancellation.
FINAL_SEND_BOUND_SECONDS = 5.0


def error_response(error: GatewayError, headers: Mapping[str, str] | None = None) -> Response:
    """The JSON response for ``error`` with its status."""
    response = Response(
        encode_error(error), status=error.http_status, content_type="application/json"
    )
    if isinstance(error, MethodNotAllowedError):
        response.headers["Allow"] = ", ".join(error.allowed)
    if error.http_status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _translate_http_exception(exc: HTTPException) -> GatewayError:
    code = exc.code or 500
    if code == 404:
        return NotFoundError("No route matches this path.")
    if code == 405:
        allowed = tuple(
            sorted((exc.valid_methods or []) if isinstance(exc, MethodNotAllowed) else [])
        )
        allowed = (
            tuple(method for method in allowed if method not in ("HEAD", "OPTIONS")) or allowed
        )
        return MethodNotAllowedError(
            f"Method not allowed; this path accepts {', '.join(allowed)}.", allowed=allowed
        )
    if code == 413:
        return PayloadTooLargeError(
            "The request body is too large (limit: gateway.http.maxBodyBytes)."
        )
    if 400 <= code < 500:
        error = RequestError(exc.description or exc.name)
        error.http_status = code
        return error
    return GatewayError("The gateway failed to handle this request.")


def _request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's ``x-request-id`` if it is usable, else a generated one."""
    value = next((value for name, value in headers if name.lower() == b"x-request-id"), None)
    return accepted_request_id(value)


class _ResponseSend:
    """The ``send`` quart gets: adds ``x-request-id`` to the response headers, remembers the
    status, and sends the final body message shielded (see :class:`GatewayApp`). One object
    per request, called once per chunk."""

    __slots__ = ("_header", "_send", "status")

    def __init__(self, send: ASGISendCallable, request_id: str) -> None:
        self._send = send
        self._header = (b"x-request-id", request_id.encode("ascii"))
        self.status: int | None = None

    async def __call__(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                await self._send(message)
            else:
                with trio.move_on_after(FINAL_SEND_BOUND_SECONDS, shield=True):
                    await self._send(message)
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = list(message["headers"])
            if not any(name.lower() == b"x-request-id" for name, _ in headers):
                headers.append(self._header)
            message = message.copy()
            message["headers"] = headers
        await self._send(message)


class GatewayApp:
    """The ASGI application hypercorn serves: the quart-trio app behind a final-send shield.

    On HTTP/1.1 quart-trio cancels the request nursery while hypercorn may still be inside the
    last ``send()``; then ``Connection: close`` is ignored, HTTP/1.0 streams never end and
    keep-alive timeouts never fire. Sending the final body message shielded (with a bound)
    lets hypercorn finish the response properly.

    It also binds the request id (the client's ``x-request-id`` or a generated one, echoed in
    the response) for everything the request does, and logs ``request.complete`` / ``.failed``.
    """

    def __init__(self, quart_app: QuartTrio, runtime: AgentRuntime) -> None:
        self.quart_app = quart_app
        self.runtime = runtime
        #: Requests and WebSocket connections being served.
        self.in_flight = 0
        #: The runtime config whose body limits quart's config holds.
        self._limits_from: Config | None = None
        self._apply_body_limits()

    def _apply_body_limits(self) -> None:
        """quart reads the body limits from its config as each request starts: write the
        runtime's values there, at start and again only when a reload replaced the config
        (so a reload applies to the next request)."""
        config = self.runtime.config
        if config is self._limits_from:
            return
        http = config.gateway.http
        self.quart_app.config["MAX_CONTENT_LENGTH"] = http.max_body_bytes
        # A request body must arrive in time (slowloris senders get 408).
        self.quart_app.config["BODY_TIMEOUT"] = http.body_timeout_seconds
        self._limits_from = config

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await self.quart_app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await _refuse(scope, send, refusal)
            return
        self.in_flight += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _refusal(self, scope: HTTPScope | WebsocketScope) -> GatewayError | None:
        """Refuse a request at the door: too many in flight, or an oversized head."""
        http = self.runtime.config.gateway.http
        if self.in_flight >= http.max_in_flight:
            return ServiceUnavailableError(
                "The gateway is serving as many requests as it may (gateway.http.maxInFlight); "
                "retry shortly.",
                retry_after=1,
            )
        if self.runtime.config.gateway.auth.mode == "none" and not on_loopback(scope):
            # The start-up and reload checks know the address only under `epiloop gateway`;
            # under hypercorn's own --bind this is where the rule holds.
            return UnprotectedError(
                'gateway.auth.mode is "none", which is allowed on loopback only, but this '
                'request reached a non-loopback address. Set gateway.auth.mode to "token" '
                "with a token (or EPILOOP_GATEWAY_TOKEN), or bind to loopback."
            )
        head = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if head > http.max_header_bytes:
            return HeadersTooLargeError(
                "The request headers are too large (gateway.http.maxHeaderBytes)."
            )
        return None

    async def _serve(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "websocket":
            # Every connection starts unauthenticated: its messages are bounded by the pre-auth
            # limit while they arrive, until the control plane raises it after `connect`.
            limit = install_message_limit(
                send, self.runtime.config.gateway.ws.max_pre_auth_frame_bytes
            )
            if limit is not None:
                scope[MESSAGE_LIMIT_KEY] = limit  # type: ignore[typeddict-unknown-key]  # our own key
            with bind_request_id(_request_id(scope["headers"])):
                await self.quart_app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.quart_app(scope, receive, send)
            return
        with bind_request_id(_request_id(scope["headers"])) as request_id:
            response_send = _ResponseSend(send, request_id)
            # As sent (%-escapes kept: no decoded newline reaches a log line), without the query
            # string, which may hold secrets.
            method, path = scope["method"], scope["raw_path"].decode("ascii", "backslashreplace")
            logger.debug("request.started method=%s path=%s", method, path)
            started = time.monotonic()
            error: str | None = None
            try:
                await self._serve_http(scope, receive, response_send)
            except BaseException as exc:
                error = type(exc).__name__
                raise
            finally:
                seconds = time.monotonic() - started
                if response_send.status is not None and error is None:
                    logger.info(
                        "request.complete method=%s path=%s status=%d duration_ms=%.1f",
                        method,
                        path,
                        response_send.status,
                        seconds * 1000,
                    )
                else:  # raised, or ended without a response (the client went away)
                    logger.info(
                        "request.failed method=%s path=%s status=%s error=%s duration_ms=%.1f",
                        method,
                        path,
                        response_send.status or "-",
                        error or "no_response",
                        seconds * 1000,
                    )

    async def _serve_http(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        cleanups: list[Callable[[], None]] = []
        scope[CLEANUPS_KEY] = cleanups  # type: ignore[literal-required]  # our own scope key
        self._apply_body_limits()
        hooks, token = disconnects.open_request_hooks()
        try:
            await self.quart_app(scope, _DisconnectWatch(receive, hooks), send)
        finally:
            disconnects.reset_request_hooks(token)
            for cleanup in cleanups:
                cleanup()


class _DisconnectWatch:
    """The ``receive`` quart gets: runs the request's disconnect hooks (see
    :mod:`trio_gateway.disconnects`) as soon as the client is known to be gone, before quart
    cancels the request's tasks."""

    __slots__ = ("_hooks", "_receive")

    def __init__(self, receive: ASGIReceiveCallable, hooks: list[disconnects.Hook]) -> None:
        self._receive = receive
        self._hooks = hooks

    async def __call__(self) -> ASGIReceiveEvent:
        message = await self._receive()
        if message["type"] == "http.disconnect" and self._hooks:
            disconnects.run_hooks(self._hooks)
        return message


async def _refuse(
    scope: HTTPScope | WebsocketScope, send: ASGISendCallable, error: GatewayError
) -> None:
    """Answer without the framework: a JSON error for HTTP, a close for a WebSocket."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1013, "reason": error.code or ""})
        return
    body = encode_error(error)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(error.retry_after))).encode()))
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def create_app(runtime: AgentRuntime) -> GatewayApp:
    """Build the application for ``runtime`` (its config decides what is enabled)."""
    app = QuartTrio("trio_gateway")
    # "/v1//models" is not "/v1/models": answer 404, not a redirect clients may not follow.
    app.url_map.merge_slashes = False
    app.config.update(
        # Streams own their deadlines (the run's timeoutSeconds); quart's 60 s cut is off.
        RESPONSE_TIMEOUT=None,
        JSON_SORT_KEYS=False,
    )

    @app.errorhandler(GatewayError)
    async def handle_gateway_error(error: GatewayError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def handle_http_exception(error: HTTPException) -> Response:
        return error_response(_translate_http_exception(error))

    @app.errorhandler(Exception)
    async def handle_unexpected(error: Exception) -> Response:
        logger.error("request.crashed", exc_info=error)
        return error_response(GatewayError("The gateway failed to handle this request."))

    # One keep-alive clock for every stream the app serves (see the streaming module).
    clock = KeepAliveClock()

    @app.before_serving
    async def start_keep_alive_clock() -> None:
        # The app's lifespan nursery owns it; it ends when the app stops serving.
        await app.nursery.start(clock.run)

    @app.after_serving
    async def stop_keep_alive_clock() -> None:
        clock.stop()

    # The stored responses' live logs, and their upkeep (retention, runs lost in a restart).
    logs = ResponseLogs(
        lambda: runtime.sessions, lambda: runtime.config, instance_id=runtime.instance_id
    )
    tidy_scope = trio.CancelScope()

    async def live_instances() -> frozenset[str]:
        cluster = runtime.cluster
        assert cluster is not None
        return await cluster.db.run(live_instance_ids)

    async def serve_tidy(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with tidy_scope:
            await logs.serve(
                live_instances if runtime.cluster is not None else None, task_status=task_status
            )

    @app.before_serving
    async def start_response_upkeep() -> None:
        # At start: the responses of a run this instance lost in a restart are marked failed.
        await app.nursery.start(serve_tidy)

    @app.after_serving
    async def stop_response_upkeep() -> None:
        tidy_scope.cancel(reason="the app stopped serving")

    register_chat_routes(app, runtime, clock, logs)
    register_responses_routes(app, runtime, clock, logs)
    register_ops_routes(app, runtime)
    register_control_plane(app, runtime)
    register_ui_routes(app, runtime)

    @app.after_request
    async def count_request(response: Response) -> Response:
        rule = request.url_rule
        route = rule.rule if rule is not None else "unmatched"
        metrics.HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        return response

    return GatewayApp(app, runtime)
