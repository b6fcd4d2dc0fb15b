"""The WebSocket control plane's frames (see docs/control-protocol.md). Sans-IO.

``parse_request`` turns a received text frame into a :class:`RequestFrame` or raises
:class:`FrameError`; the ``encode_*`` functions render responses and events as text frames.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from .decoding import DECODE_ERRORS, DecodeFault, decode_fault

__all__ = [
    "FrameError",
    "RequestFrame",
    "encode_error_response",
    "encode_event",
    "encode_response",
    "parse_request",
]

_encode = msgspec.json.encode


class FrameError(Exception):
    """A frame that is not a valid request. ``request_id`` is set when it could be read."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class RequestFrame(msgspec.Struct, frozen=True, tag="req", tag_field="type"):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    method: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    params: dict[str, object] = msgspec.field(default_factory=dict)


_decoder = msgspec.json.Decoder(RequestFrame)


class _Id(msgspec.Struct):
    id: object = None


def parse_request(text: str | bytes) -> RequestFrame:
    try:
        return _decoder.decode(text)
    except DECODE_ERRORS as exc:
        fault = decode_fault(exc, text)
        if fault in (DecodeFault.ENCODING, DecodeFault.DEPTH):
            # Nothing in such a frame can be trusted, its id included.
            raise FrameError(f"not a request frame: {fault.value}") from exc
        raise FrameError(f"not a request frame: {exc}", request_id=_readable_id(text)) from exc


def _readable_id(text: str | bytes) -> str | None:
    """The frame's ``id`` when it is a string that can be read, to address the error to it."""
    try:
        candidate = msgspec.json.decode(text, type=_Id).id
    except DECODE_ERRORS:
        return None
    return candidate if isinstance(candidate, str) else None


def encode_response(request_id: str, payload: object) -> str:
    return _encode({"type": "res", "id": request_id, "ok": True, "payload": payload}).decode()


def encode_error_response(
    request_id: str | None,
    *,
    code: str,
    message: str,
    retryable: bool = False,
    retry_after_ms: int | None = None,
) -> str:
    error: dict[str, object] = {"code": code, "message": message, "retryable": retryable}
    if retry_after_ms is not None:
        error["retryAfterMs"] = retry_after_ms
    return _encode({"type": "res", "id": request_id, "ok": False, "error": error}).decode()


def encode_event(event: str, payload: object, seq: int) -> str:
    return _encode({"type": "event", "event": event, "payload": payload, "seq": seq}).decode()
