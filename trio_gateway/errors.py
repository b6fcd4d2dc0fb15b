"""The one exception tree of Epiloop Gateway.

Every error the gateway raises on purpose is a :class:`GatewayError`. Each class knows the HTTP
status it maps to and the OpenAI error ``type`` and ``code`` it is reported with, so the HTTP
edge, the streaming edge and the WebSocket control plane render errors the same way.
Foreign exceptions (json5, OSError, msgspec, ``trio.TooSlowError``, httpx) are translated into
this tree once, at the boundary where they are caught, with ``raise X(...) from exc``.

::

    GatewayError                      500 server_error
    ├── ConfigError                   the config file is missing, malformed or invalid
    ├── RequestError                  400 invalid_request_error   (the client's fault)
    │   ├── InvalidRequestError       400  a field is wrong; ``param`` names it
    │   ├── AuthenticationError       401  missing or wrong bearer credential
    │   ├── AuthRateLimitedError      429  too_many_auth_failures from this address
    │   ├── ForbiddenOriginError      403  origin_not_allowed: a browser page of another origin
    │   ├── HeadersTooLargeError      431  headers_too_large
    │   ├── NotFoundError             404  no such route
    │   │   ├── EndpointDisabledError 404  the endpoint is switched off in config
    │   │   ├── ModelNotFoundError    404  model_not_found: no such agent
    │   │   └── ResponseNotFoundError 404  response_not_found: no such stored response
    │   ├── MethodNotAllowedError     405  carries the allowed methods
    │   ├── SessionBusyError          409  session_busy: the session's lane stayed busy
    │   ├── PayloadTooLargeError      413  the request body is over the limit
    │   └── OverloadedError           429  gateway_overloaded: run cap and queue are full
    ├── ServiceUnavailableError       503  gateway_busy: maxInFlight requests being served
    │   ├── DrainingError             503  gateway_draining: shutting down, no new runs
    │   └── UnprotectedError          503  auth_required: mode none on a non-loopback address
    ├── SessionStoreError             500 session_store_error: the session store failed
    │   ├── SessionStoreUnavailableError 503 session_store_unavailable: database unreachable
    │   └── LeaseLostError            500  lease_lost: a turn written under a lost lease
    ├── RunError                      500  an agent run failed
    │   ├── ProviderError             502 upstream_error: the model provider failed
    │   │   └── UpstreamError         502  the upstream answered with an error or broke off
    │   ├── RunTimeoutError           504 timeout: the run passed its deadline
    │   ├── RunAbortedError           409 run_aborted: agent.abort stopped the run
    │   ├── EventLogFullError         500 event_log_full: the run's stored events hit their bound
    │   └── RunLostError              500 run_lost: the instance running it went away
    ├── ToolError                     a tool failed; its message goes back to the model
    └── ControlPlaneError             502  client side: a control-plane call or connection failed

Errors that tell the client when to come back carry ``retry_after`` (seconds), sent as the
``Retry-After`` header.

This module imports nothing from the rest of the package: everything else imports it.
"""

from __future__ import annotations

__all__ = [
    "AuthRateLimitedError",
    "AuthenticationError",
    "ConfigError",
    "ControlPlaneError",
    "DrainingError",
    "EndpointDisabledError",
    "EventLogFullError",
    "ForbiddenOriginError",
    "GatewayError",
    "HeadersTooLargeError",
    "InvalidRequestError",
    "LeaseLostError",
    "MethodNotAllowedError",
    "ModelNotFoundError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ProviderError",
    "RequestError",
    "ResponseNotFoundError",
    "RunAbortedError",
    "RunError",
    "RunLostError",
    "RunTimeoutError",
    "ServiceUnavailableError",
    "SessionBusyError",
    "SessionStoreError",
    "SessionStoreUnavailableError",
    "ToolError",
    "UnprotectedError",
    "UpstreamError",
]


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose.

    ``message`` is safe to show to the client: it never contains secrets.
    """

    http_status: int = 500
    error_type: str = "server_error"
    code: str | None = None

    #: Seconds after which a retry may succeed (sent as ``Retry-After``), if known.
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after


class ConfigError(GatewayError):
    """The configuration could not be loaded or is invalid.

    ``source`` names the file (or ``"<embedded default>"``); ``path`` the dotted key, if any.
    """

    def __init__(self, message: str, *, source: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.path = path

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        key = f"{self.path}: " if self.path else ""
        return f"{where}{key}{self.message}"


class RequestError(GatewayError):
    """The request is at fault; the client should not retry it unchanged."""

    http_status = 400
    error_type = "invalid_request_error"


class InvalidRequestError(RequestError):
    """A request field is missing, of the wrong type or out of range (``param`` names it)."""


class AuthenticationError(RequestError):
    """No bearer credential, or the wrong one."""

    http_status = 401
    code = "invalid_api_key"


class ForbiddenOriginError(RequestError):
    """A browser page of an origin the gateway does not allow opened the control plane."""

    http_status = 403
    error_type = "permission_error"
    code = "origin_not_allowed"


class NotFoundError(RequestError):
    """No route at this path."""

    http_status = 404
    code = "not_found"


class EndpointDisabledError(NotFoundError):
    """The route exists but is switched off in the configuration."""

    code = "endpoint_disabled"


class ModelNotFoundError(NotFoundError):
    """The requested agent (the OpenAI ``model``) is not configured."""

    code = "model_not_found"


class ResponseNotFoundError(NotFoundError):
    """No stored response (or resumable stream) with this id for this agent: never stored,
    deleted, past its retention, or another agent's."""

    code = "response_not_found"


class MethodNotAllowedError(RequestError):
    """The path exists but not for this method; ``allowed`` lists the methods it accepts."""

    http_status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed


class SessionBusyError(RequestError):
    """Another run of the same session held its lane past ``session.queueTimeoutSeconds``."""

    http_status = 409
    code = "session_busy"


class AuthRateLimitedError(RequestError):
    """Too many failed credential checks from this client address; retry later."""

    http_status = 429
    error_type = "rate_limit_error"
    code = "too_many_auth_failures"


class HeadersTooLargeError(RequestError):
    """The request's headers are larger than ``gateway.http.maxHeaderBytes``."""

    http_status = 431
    code = "headers_too_large"


class OverloadedError(RequestError):
    """The gateway-wide run cap and its wait queue are both full."""

    http_status = 429
    error_type = "rate_limit_error"
    code = "gateway_overloaded"


class PayloadTooLargeError(RequestError):
    """The request body is larger than ``gateway.http.maxBodyBytes``."""

    http_status = 413
    code = "payload_too_large"


class ServiceUnavailableError(GatewayError):
    """The gateway cannot take this request now (``maxInFlight``); retry shortly."""

    http_status = 503
    code = "gateway_busy"


class DrainingError(ServiceUnavailableError):
    """The gateway is shutting down: it finishes the runs it has and starts no new ones."""

    http_status = 503
    code = "gateway_draining"


class UnprotectedError(ServiceUnavailableError):
    """Auth mode ``none`` while the request reached a non-loopback address (a hypercorn
    ``--bind`` the gateway could not check at start): every request is refused until the
    operator sets a credential."""

    http_status = 503
    code = "auth_required"


class SessionStoreError(GatewayError):
    """The session store could not read or write (a damaged file, a full disk, ...)."""

    code = "session_store_error"


class SessionStoreUnavailableError(SessionStoreError):
    """The session database cannot be reached (PostgreSQL down, the network cut): a stateful
    request is refused before its first byte; stateless ones keep working."""

    http_status = 503
    code = "session_store_unavailable"
    retry_after = 1


class LeaseLostError(SessionStoreError):
    """A turn was written under a session lease this instance no longer holds (it was paused
    or cut off past the lease period and another run took the session): the write is refused,
    so the transcript stays whole."""

    code = "lease_lost"


class RunError(GatewayError):
    """An agent run failed after it was accepted."""

    code = "run_failed"


class ProviderError(RunError):
    """The model provider failed (upstream error, bad answer, connection lost)."""

    http_status = 502
    error_type = "upstream_error"
    code = "provider_error"


class UpstreamError(ProviderError):
    """The upstream model server answered with an error, or the exchange broke off.

    ``status`` is the upstream HTTP status (``None`` for connection faults); ``retryable`` says
    whether the same request may succeed later (429, 5xx, connection errors, timeouts).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.status = status
        self.retryable = retryable


class RunTimeoutError(RunError):
    """The run did not finish within its deadline (``timeoutSeconds``)."""

    http_status = 504
    error_type = "timeout"
    code = "run_timeout"


class RunAbortedError(RunError):
    """The run was stopped on purpose (``agent.abort``), not by a failure."""

    http_status = 409
    error_type = "invalid_request_error"
    code = "run_aborted"


class EventLogFullError(RunError):
    """A stored run produced more events than its log keeps
    (``gateway.http.endpoints.responses.maxEventsPerRun`` / ``maxEventBytesPerRun``)."""

    code = "event_log_full"


class RunLostError(RunError):
    """The gateway instance that ran a stored response stopped (a restart, a crash) before the
    run ended."""

    code = "run_lost"


class ToolError(GatewayError):
    """A tool could not do what was asked. The run goes on: the message is the tool result."""

    code = "tool_error"


class ControlPlaneError(GatewayError):
    """A WebSocket control-plane call failed, as a client (the ``epiloop`` CLI) sees it.

    ``code`` is the gateway's error code (``auth_failed``, ``model_not_found``, ...), or the one
    the client gives what it saw itself (``gateway_unreachable``, ``connection_closed``).
    ``retryable`` and ``retry_after_ms`` repeat what the gateway said. When the connection closed,
    ``close_code`` and ``close_reason`` are those of the WebSocket close frame.
    """

    http_status = 502
    error_type = "upstream_error"
    code = "control_plane_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool = False,
        retry_after_ms: int | None = None,
        close_code: int | None = None,
        close_reason: str | None = None,
    ) -> None:
        retry_after = retry_after_ms / 1000 if retry_after_ms is not None else None
        super().__init__(message, code=code, retry_after=retry_after)
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms
        self.close_code = close_code
        self.close_reason = close_reason
