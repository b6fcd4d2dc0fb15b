"""How an upstream's failures become :class:`~trio_gateway.errors.UpstreamError`: the one place
HTTP statuses, error bodies, ``Retry-After`` and httpx's exceptions are translated.

* HTTP status >= 400: ``status`` set, the upstream's own error message, ``retryable`` for
  408/409/425/429/5xx, ``retry_after`` from ``Retry-After`` (seconds or HTTP date) or
  ``retry-after-ms``; ``code`` ``upstream_auth_failed`` (401/403), ``upstream_rate_limited``
  (429) or ``upstream_http_error``.
* connection faults (refused, reset, closed early): ``status=None``, ``retryable``; ``code``
  ``upstream_unreachable`` (before a connection existed) or ``upstream_disconnected``.
* a 200 that is not an event stream, an event that is not what the protocol says (JSON that
  does not decode, nested too deeply, not UTF-8): ``code="bad_upstream_response"``, not
  retryable.

Messages name the provider and host, never a key. Plain functions: the client
(:mod:`.upstream`) and the parsers call them. This module must not import the agent, server or
tools layers.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping

import httpx
import msgspec

from ..errors import UpstreamError
from ..wire.decoding import DECODE_ERRORS, decode_fault

__all__ = [
    "bad_event",
    "bad_response",
    "error_message_from_body",
    "retry_after_from_headers",
    "status_error",
    "transport_error",
]

#: Retryable HTTP statuses below 500 (every 5xx is retryable).
_RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
#: Longest upstream error message passed on.
_MESSAGE_LIMIT = 500


def retry_after_from_headers(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (delay or HTTP date);
    ``now`` is the wall clock (``time.time()``) an HTTP date is measured from."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        seconds = _parse_seconds(milliseconds)
        if seconds is not None:
            return seconds / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _parse_seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def _parse_seconds(value: str) -> float | None:
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def error_message_from_body(body: bytes) -> str | None:
    """The message of a JSON error body: OpenAI and Anthropic ``error.message``, or the
    ``error`` / ``message`` / ``detail`` string other OpenAI-compatible servers send."""
    try:
        document = msgspec.json.decode(body)
    except DECODE_ERRORS:  # too deep or not UTF-8 too: the status alone is the answer
        return None
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    for candidate in (error, document.get("message"), document.get("detail")):
        if isinstance(candidate, str) and candidate.strip():
            return _clip(candidate)
    return None


def _clip(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > _MESSAGE_LIMIT:
        text = text[: _MESSAGE_LIMIT - 1] + "…"
    return text


def status_error(
    provider: str, status: int, body: bytes, headers: Mapping[str, str], *, now: float
) -> UpstreamError:
    """The error for an upstream answer with HTTP status >= 400."""
    detail = error_message_from_body(body)
    message = f"The upstream {provider!r} answered HTTP {status}"
    message += f": {detail}" if detail else "."
    if status in (401, 403):
        code = "upstream_auth_failed"
    elif status == 429:
        code = "upstream_rate_limited"
    else:
        code = "upstream_http_error"
    return UpstreamError(
        message,
        status=status,
        retryable=status in _RETRYABLE_STATUSES or status >= 500,
        retry_after=retry_after_from_headers(headers, now=now),
        code=code,
    )


def bad_response(provider: str, what: str) -> UpstreamError:
    """The upstream answered something its protocol does not allow."""
    return UpstreamError(
        f"The upstream {provider!r} sent {what}.", retryable=False, code="bad_upstream_response"
    )


def bad_event(provider: str, exc: Exception, data: str | bytes) -> UpstreamError:
    """A stream event whose JSON could not be decoded (``exc``, one of ``DECODE_ERRORS``): a
    bad answer, whatever msgspec raised (a recursion error for deep nesting included)."""
    return bad_response(provider, f"a malformed stream event ({decode_fault(exc, data).value})")


def transport_error(
    exc: httpx.HTTPError, *, provider: str, host: str, connect_timeout: float
) -> UpstreamError:
    """The error for an httpx failure of a call to ``provider`` at ``host``."""
    where = f"the upstream {provider!r} at {host}"
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamError(
            f"Could not connect to {where} within {connect_timeout:g} seconds "
            "(connectTimeoutSeconds).",
            retryable=True,
            code="upstream_timeout",
        )
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(
            f"Timed out talking to {where}: {reason}", retryable=True, code="upstream_timeout"
        )
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError(
            f"Could not connect to {where}: {reason}",
            retryable=True,
            code="upstream_unreachable",
        )
    if isinstance(exc, httpx.DecodingError):
        return bad_response(provider, f"a body that could not be decoded ({reason})")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return UpstreamError(
            f"Cannot reach {where}: {reason}", retryable=False, code="upstream_unreachable"
        )
    if isinstance(exc, httpx.LocalProtocolError):
        # Our request could not be put on the wire (an invalid configured header, say):
        # sending it again would fail the same way.
        return UpstreamError(f"The request to {where} could not be sent: {reason}", retryable=False)
    if isinstance(exc, httpx.TransportError):
        return UpstreamError(
            f"The connection to {where} broke off: {reason}",
            retryable=True,
            code="upstream_disconnected",
        )
    return UpstreamError(f"The call to {where} failed: {reason}", retryable=False)
