"""Tests for :mod:`trio_gateway.wire.response_events`, with no event loop: every event and the
response object validate strictly against the official SDK's types, sequence numbers go up by
one from 0, and streaming and not give the same final object."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response, ResponseOutputMessage, ResponseStreamEvent
from pydantic import TypeAdapter

from trio_gateway.errors import RunTimeoutError, UpstreamError
from trio_gateway.wire.response_events import (
    ResponseEvents,
    ResponseMeta,
    ToolChoiceFunctionOut,
    Usage,
    response_id,
)

_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
META = ResponseMeta(id="resp_0123abcd", created_at=1_732_000_000, model="epiloop:main")
TRICKY_TEXTS = ['say "hi"', "line 1\nline 2\r\n", "ünï 😀", "</script>", "\u2028", "\x00", ""]


def events_of(frames: bytes) -> list[dict[str, Any]]:
    """Each SSE event's data, checked strictly against the SDK, its ``event:`` matching."""
    payloads = []
    for frame in frames.split(b"\n\n")[:-1]:
        event_line, data_line = frame.split(b"\n")
        assert event_line.startswith(b"event: ")
        assert data_line.startswith(b"data: ")
        payload = json.loads(data_line.removeprefix(b"data: "))
        assert payload["type"] == event_line.removeprefix(b"event: ").decode()
        _EVENT.validate_python(payload, strict=True)
        payloads.append(payload)
    return payloads


def response_of(raw: bytes) -> Response:
    return Response.model_validate(json.loads(raw), strict=True)


def run(events: ResponseEvents, *, text: list[str], tool: bool = False) -> bytes:
    out = events.start()
    out += events.reasoning("Thinking")
    for piece in text:
        out += events.text(piece)
    if tool:
        out += events.tool_call(0, "call_1", "lookup", '{"q":')
        out += events.tool_call(0, None, None, '"x"}')
        out += events.tool_call(1, "call_2", "other", "")
    return out


def test_response_id_keeps_the_run_id_part() -> None:
    assert response_id("chatcmpl-0123abcd") == "resp_0123abcd"


def test_stream_events_validate_and_are_numbered_from_zero() -> None:
    events = ResponseEvents(META, stream=True)
    frames = run(events, text=["Hel", "lo"], tool=True)
    frames += events.finish("tool_calls", Usage.of(5, 7), completed_at=1_732_000_009)

    payloads = events_of(frames)

    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert [p["type"] for p in payloads] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",  # reasoning
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # message
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # first call
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",  # second call
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = Response.model_validate(payloads[-1]["response"], strict=True)
    assert final.status == "completed"
    assert final.output_text == "Hello"
    kinds = [item.type for item in final.output]
    assert kinds == ["reasoning", "message", "function_call", "function_call"]
    call = final.output[2]
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments, call.status) == (
        "call_1",
        "lookup",
        '{"q":"x"}',
        "completed",
    )
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (
        5,
        7,
        12,
    )
    assert final.completed_at == 1_732_000_009
    assert {p["response"]["id"] for p in payloads if "response" in p} == {META.id}


def test_added_items_start_without_content_parts() -> None:
    """The SDK's stream helper appends each added part: an item announced with its part
    already in would end with two."""
    events = ResponseEvents(META, stream=True)
    payloads = events_of(events.start() + events.text("x"))

    added = [p for p in payloads if p["type"] == "response.output_item.added"]
    assert added[0]["item"]["content"] == []


def test_non_streaming_collects_the_same_final_object() -> None:
    streamed = ResponseEvents(META, stream=True)
    frames = run(streamed, text=["a", "b"], tool=True)
    frames += streamed.finish("tool_calls", Usage.of(1, 2), completed_at=3)
    collected = ResponseEvents(META, stream=False)
    silent = run(collected, text=["a", "b"], tool=True)
    silent += collected.finish("tool_calls", Usage.of(1, 2), completed_at=3)

    assert silent == b""
    assert json.loads(collected.response()) == events_of(frames)[-1]["response"]
    assert response_of(collected.response()).output_text == "ab"


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_text_deltas_round_trip(text: str) -> None:
    events = ResponseEvents(META, stream=True)
    payloads = events_of(events.start() + events.text(text) + events.text(text))

    deltas = [p for p in payloads if p["type"] == "response.output_text.delta"]
    assert [d["delta"] for d in deltas] == [text, text]


@pytest.mark.parametrize(
    ("finish_reason", "reason"),
    [("length", "max_output_tokens"), ("content_filter", "content_filter")],
)
def test_a_cut_answer_is_incomplete(finish_reason: str, reason: str) -> None:
    events = ResponseEvents(META, stream=True)
    payloads = events_of(
        events.start() + events.text("cut") + events.finish(finish_reason, Usage.of(1, 1))
    )

    assert payloads[-1]["type"] == "response.incomplete"
    final = Response.model_validate(payloads[-1]["response"], strict=True)
    assert final.status == "incomplete"
    assert final.incomplete_details is not None
    assert final.incomplete_details.reason == reason
    (message,) = final.output
    assert isinstance(message, ResponseOutputMessage)
    assert message.status == "incomplete"
    assert final.completed_at is None


def test_a_failed_run_sends_error_then_failed_with_its_usage() -> None:
    events = ResponseEvents(META, stream=True)
    frames = events.start() + events.text("part")
    frames += events.fail(RunTimeoutError("too slow"), Usage.of(3, 1))
    payloads = events_of(frames)

    assert [p["type"] for p in payloads[-3:]] == [
        "response.output_item.done",
        "error",
        "response.failed",
    ]
    assert (payloads[-2]["code"], payloads[-2]["message"]) == ("run_timeout", "too slow")
    final = Response.model_validate(payloads[-1]["response"], strict=True)
    assert final.status == "failed"
    assert final.error is not None
    assert (final.error.code, final.error.message) == ("server_error", "too slow")
    assert final.output_text == "part"
    assert final.usage is not None
    assert final.usage.input_tokens == 3
    assert events.status == "failed"


def test_an_upstream_rate_limit_maps_to_rate_limit_exceeded() -> None:
    events = ResponseEvents(META, stream=False)
    events.fail(UpstreamError("slow down", status=429), None)

    final = response_of(events.response())
    assert final.error is not None
    assert final.error.code == "rate_limit_exceeded"


def test_a_cancelled_run_ends_with_failed_and_the_status_cancelled() -> None:
    events = ResponseEvents(META, stream=True)
    frames = events.start() + events.text("half")
    frames += events.cancel(Usage.of(2, 1))
    payloads = events_of(frames)

    assert payloads[-1]["type"] == "response.failed"
    final = Response.model_validate(payloads[-1]["response"], strict=True)
    assert final.status == "cancelled"
    assert final.error is None
    assert final.usage is not None
    assert final.usage.total_tokens == 3


def test_the_request_settings_are_echoed() -> None:
    meta = ResponseMeta(
        id="resp_1",
        created_at=1,
        model="epiloop:helper",
        instructions="Be brief.",
        tool_choice=ToolChoiceFunctionOut("f"),
        max_output_tokens=100,
        temperature=0.2,
        top_p=0.9,
        metadata={"k": "v"},
        user="u1",
    )
    events = ResponseEvents(meta, stream=False)
    events.finish("stop", Usage.of(0, 0))

    final = response_of(events.response())
    assert final.instructions == "Be brief."
    assert final.tool_choice.type == "function"  # type: ignore[union-attr]  # checked here
    assert (final.max_output_tokens, final.temperature, final.top_p) == (100, 0.2, 0.9)
    assert final.metadata == {"k": "v"}
    assert final.user == "u1"
    assert final.output == []
