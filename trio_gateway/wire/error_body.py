"""OpenAI-shaped error bodies: ``{"error": {"message", "type", "param", "code"}}``.

Used for every HTTP error response and, framed as an SSE ``data:`` event, for errors that happen
after a stream has started.
"""

from __future__ import annotations

import msgspec

from ..errors import GatewayError
from .sse import encode_data

__all__ = ["ErrorBody", "ErrorDetail", "encode_error", "encode_error_event"]


class ErrorDetail(msgspec.Struct, frozen=True, omit_defaults=False):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail


def encode_error(error: GatewayError) -> bytes:
    """The JSON body for ``error`` (its ``message`` is safe to show to clients)."""
    detail = ErrorDetail(error.message, error.error_type, error.param, error.code)
    return msgspec.json.encode(ErrorBody(detail))


def encode_error_event(error: GatewayError) -> bytes:
    """The same body as an in-band SSE event, for errors after the first byte of a stream."""
    return encode_data(encode_error(error))
