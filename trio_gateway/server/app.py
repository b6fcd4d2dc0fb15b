"""The quart-trio application: factory, JSON error handling and the ASGI wrapper hypercorn serves.

Every error leaves as an OpenAI-shaped JSON body: our own :class:`GatewayError` tree, werkzeug's
HTTP exceptions (unknown path, wrong method, body too large) translated once here, and anything
unexpected as a generic 500 whose details go to the log only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from ..agent import AgentRuntime
from ..errors import (
    GatewayError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
)
from ..wire.error_body import encode_error
from .app_state import CLEANUPS_KEY
from .control import register_control_plane
from .routes import register_routes

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


class GatewayApp:
    """The ASGI application hypercorn serves: the quart-trio app behind a final-send shield.

    On HTTP/1.1 quart-trio cancels the request nursery while hypercorn may still be inside the
    last ``send()``; then ``Connection: close`` is ignored, HTTP/1.0 streams never end and
    keep-alive timeouts never fire. Sending the final body message shielded (with a bound)
    lets hypercorn finish the response properly.
    """

    def __init__(self, quart_app: QuartTrio, runtime: AgentRuntime) -> None:
        self.quart_app = quart_app
        self.runtime = runtime

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.quart_app(scope, receive, send)
            return

        cleanups: list[Callable[[], None]] = []
        scope[CLEANUPS_KEY] = cleanups  # type: ignore[literal-required]  # our own scope key

        async def send_shielding_the_end(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.move_on_after(FINAL_SEND_BOUND_SECONDS, shield=True):
                    await send(message)
            else:
                await send(message)

        try:
            await self.quart_app(scope, receive, send_shielding_the_end)
        finally:
            for cleanup in cleanups:
                cleanup()


def create_app(runtime: AgentRuntime) -> GatewayApp:
    """Build the application for ``runtime`` (its config decides what is enabled)."""
    app = QuartTrio("trio_gateway")
    http = runtime.config.gateway.http
    app.config.update(
        # Streams own their deadlines (the run's timeoutSeconds); quart's 60 s cut is off.
        RESPONSE_TIMEOUT=None,
        MAX_CONTENT_LENGTH=http.max_body_bytes,
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
        logger.error("request.failed", exc_info=error)
        return error_response(GatewayError("The gateway failed to handle this request."))

    register_routes(app, runtime)
    register_control_plane(app, runtime)
    return GatewayApp(app, runtime)
