"""The WebSocket limits for unauthenticated clients, without an event loop."""

from __future__ import annotations

import pytest
from hypercorn.protocol.ws_stream import FrameTooLargeError
from wsproto.events import BytesMessage, TextMessage

from trio_gateway.server.wslimits import (
    MESSAGE_LIMIT_KEY,
    MessageLimit,
    PendingHandshakes,
    _BoundedBuffer,
    install_message_limit,
    scope_message_limit,
)


def text(data: str, *, finished: bool = False) -> TextMessage:
    return TextMessage(data=data, frame_finished=finished, message_finished=finished)


def test_message_limit_buffer_keeps_a_message_within_the_limit() -> None:
    buffer = _BoundedBuffer(MessageLimit(10))
    buffer.extend(text("abcde"))
    buffer.extend(text("fghij", finished=True))
    assert buffer.to_message() == {"type": "websocket.receive", "bytes": None, "text": "abcdefghij"}
    buffer.clear()
    buffer.extend(BytesMessage(data=b"\x00" * 10))
    assert buffer.to_message()["bytes"] == b"\x00" * 10


def test_message_limit_buffer_drops_an_oversized_message_as_it_arrives() -> None:
    limit = MessageLimit(10)
    overflows: list[str] = []
    limit.on_overflow(lambda: overflows.append("overflow"))
    buffer = _BoundedBuffer(limit)
    buffer.extend(text("abcdefgh"))
    buffer.extend(text("ijk"))  # 11 bytes: over the limit, before the message has ended
    assert limit.overflowed
    assert overflows == ["overflow"]
    assert (buffer.value, buffer.length) == (None, 0)
    for _ in range(100):
        buffer.extend(text("x" * 1000))  # the rest of the frame is not kept
    assert (buffer.value, buffer.length) == (None, 0)
    with pytest.raises(FrameTooLargeError):  # hypercorn delivers nothing
        buffer.extend(text("end", finished=True))
    assert overflows == ["overflow"]  # told once


def test_message_limit_counts_utf8_bytes() -> None:
    limit = MessageLimit(10)
    buffer = _BoundedBuffer(limit)
    buffer.extend(text("ééééé"))  # 5 characters, 10 bytes
    assert not limit.overflowed
    buffer.extend(text("é"))
    assert limit.overflowed


def test_message_limit_raised_after_authentication() -> None:
    limit = MessageLimit(4)
    buffer = _BoundedBuffer(limit)
    limit.set_limit(100)
    buffer.extend(text("x" * 100, finished=True))
    assert buffer.to_message()["text"] == "x" * 100


def test_message_limit_overflow_before_anyone_listens_is_reported_at_once() -> None:
    limit = MessageLimit(1)
    assert not limit.admit(2)
    overflows: list[str] = []
    limit.on_overflow(lambda: overflows.append("overflow"))
    assert overflows == ["overflow"]


def test_message_limit_needs_hypercorn_send() -> None:
    async def send(message: object) -> None:
        raise AssertionError("not called")

    assert install_message_limit(send, 1024) is None
    assert scope_message_limit({}) is None
    limit = MessageLimit(1024)
    assert scope_message_limit({MESSAGE_LIMIT_KEY: limit}) is limit


def test_pending_handshakes_cap_and_release_once() -> None:
    pending = PendingHandshakes()
    first = pending.try_hold(2)
    second = pending.try_hold(2)
    assert first is not None
    assert second is not None
    assert pending.try_hold(2) is None
    first.release()
    first.release()  # idempotent: the place is given back once
    assert pending.count == 1
    third = pending.try_hold(2)
    assert third is not None
    assert pending.try_hold(2) is None
    second.release()
    third.release()
    assert pending.count == 0
