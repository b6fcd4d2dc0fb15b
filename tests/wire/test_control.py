"""The control plane's frames (sans-IO)."""

from __future__ import annotations

import json

import pytest

from trio_gateway.wire.control import (
    FrameError,
    RequestFrame,
    encode_error_response,
    encode_event,
    encode_response,
    parse_request,
)


def test_frames_parse_a_request() -> None:
    frame = parse_request('{"type": "req", "id": "1", "method": "health"}')
    assert frame == RequestFrame(id="1", method="health", params={})


@pytest.mark.parametrize(
    ("text", "request_id"),
    [
        ("not json", None),
        ('{"type": "req", "id": "7"}', "7"),
        ('{"type": "res", "id": "8", "method": "x"}', "8"),
        ('{"type": "req", "id": 5, "method": "x"}', None),
        ('{"type": "req", "id": "", "method": "x"}', ""),
        (
            '{"type": "req", "id": "d", "method": "x", "params": '
            + "[" * 50_000
            + "]" * 50_000
            + "}",
            None,
        ),
        (b'{"type": "req", "id": "u", "method": "\xff"}', None),
    ],
)
def test_frames_bad_requests_raise_frame_error(text: str | bytes, request_id: str | None) -> None:
    with pytest.raises(FrameError) as caught:
        parse_request(text)
    assert caught.value.request_id == request_id


def test_frames_encode_responses_and_events() -> None:
    assert json.loads(encode_response("1", {"a": 1})) == {
        "type": "res",
        "id": "1",
        "ok": True,
        "payload": {"a": 1},
    }
    error = json.loads(
        encode_error_response("2", code="c", message="m", retryable=True, retry_after_ms=10)
    )
    assert error == {
        "type": "res",
        "id": "2",
        "ok": False,
        "error": {"code": "c", "message": "m", "retryable": True, "retryAfterMs": 10},
    }
    assert json.loads(encode_event("tick", {"ts": 1}, 3)) == {
        "type": "event",
        "event": "tick",
        "payload": {"ts": 1},
        "seq": 3,
    }
