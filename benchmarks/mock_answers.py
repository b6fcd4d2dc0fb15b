"""What the mock upstream answers: the :class:`Scenario` and its faults, and the bytes of each
answer (SSE frames or one JSON body, in the OpenAI Chat Completions and the Anthropic Messages
dialects), encoded ahead of time.

Test and benchmark tooling, sans-IO: plain functions from a scenario and a request to bytes and
objects; :mod:`benchmarks.mock_upstream` (the server) sends them. It imports nothing from
``trio_gateway``: it speaks the upstream protocols from their specs.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import msgspec

__all__ = [
    "STATUS_FAULTS",
    "Fault",
    "Frames",
    "Scenario",
    "anthropic_frames",
    "anthropic_message",
    "check_body",
    "count_events",
    "count_prompt_words",
    "error_body",
    "openai_completion",
    "openai_frames",
]

Fault = Literal[
    # Send the response headers (and the role chunk / message_start), then hang.
    "hang_before_first_token",
    # Read the request, then hang without sending any response.
    "hang_before_headers",
    # Stream ``fault_after`` token events, then hang.
    "hang_mid_stream",
    # Stream ``fault_after`` token events, then abort the connection with a TCP RST.
    "reset_mid_stream",
    # Close the connection right after reading the request, without any response.
    "close_immediately",
    # Stream ``fault_after`` token events, then a ``data:`` line that is not JSON.
    "malformed_sse",
    # Stream ``fault_after`` token events, then an in-band SSE error event; no end marker.
    "error_event",
    # Stream ``fault_after`` token events, then a ``data:`` line that never ends: 16 KiB pieces
    # without a newline (``pace`` apart) until the client closes.
    "endless_line",
    # Stream the token events over and over (``pace`` apart), never ending, until the client
    # closes: a valid answer of unbounded length.
    "endless_stream",
    # Stream ``fault_after`` token events, then an event whose JSON is nested 100,000 deep.
    "deep_json",
    # Stream ``fault_after`` token events, then 100,000 valid events that carry no output
    # (OpenAI: no choices; Anthropic: pings) in one write, then the rest of the stream.
    "empty_events",
    # HTTP errors with a provider-shaped JSON error body; 429 and 503 carry ``Retry-After``.
    "status_400",
    "status_429",
    "status_500",
    "status_503",
    # 200 with an HTML body.
    "wrong_content_type",
]

STATUS_FAULTS: dict[str, tuple[int, str, str]] = {
    # fault: (status, OpenAI error type, Anthropic error type)
    "status_400": (400, "invalid_request_error", "invalid_request_error"),
    "status_429": (429, "rate_limit_error", "rate_limit_error"),
    "status_500": (500, "server_error", "api_error"),
    "status_503": (503, "server_error", "overloaded_error"),
}

#: OpenAI finish reasons and the Anthropic stop reasons the mock sends for them.
_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


@dataclass
class Scenario:
    """What the mock answers to one request."""

    #: Text pieces, streamed one SSE event each.
    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    #: Seconds between the response headers and the first token event.
    first_token_delay: float = 0.0
    #: Seconds between two token events.
    pace: float = 0.0
    #: ``(prompt_tokens, completion_tokens)``; ``None``: prompt words and streamed events.
    usage: tuple[int, int] | None = None
    #: ``(id, name, arguments JSON)``; arguments stream as a few deltas each.
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)
    #: OpenAI ``reasoning_content`` deltas / Anthropic thinking deltas, before the text.
    reasoning: list[str] = field(default_factory=list)
    #: OpenAI finish reason (mapped for Anthropic; unknown names are sent as they are).
    #: ``None``: ``"tool_calls"`` when there are tool calls, else ``"stop"``.
    finish_reason: str | None = None
    fault: Fault | None = None
    #: Token events sent before a mid-stream fault.
    fault_after: int = 2
    #: The ``Retry-After`` header value of ``status_429`` / ``status_503``.
    retry_after: str | None = None
    #: Apply the fault to the first N requests of this scenario only; ``None``: always.
    fail_times: int | None = None

    @property
    def effective_finish_reason(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"


# -- request checks and counting -------------------------------------------------------------


def check_body(body: object, *, anthropic: bool) -> str | None:
    """What is wrong with a request body, as the upstream would say it; ``None``: nothing."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    if not isinstance(body.get("model"), str):
        return "model: a string is required"
    if not isinstance(body.get("messages"), list):
        return "messages: an array is required"
    if anthropic and not isinstance(body.get("max_tokens"), int):
        return "max_tokens: an integer is required"
    return None


def count_prompt_words(body: dict[str, object]) -> int:
    words = 0
    messages = body.get("messages")
    assert isinstance(messages, list)
    system = body.get("system")
    if isinstance(system, str):
        words += len(system.split())
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    words += len(text.split())
    return words


def count_events(scenario: Scenario) -> int:
    return (
        len(scenario.tokens)
        + len(scenario.reasoning)
        + sum(1 + len(_split_arguments(arguments)) for _, _, arguments in scenario.tool_calls)
    )


def _split_arguments(arguments: str) -> list[str]:
    """Tool-call arguments as the deltas they stream in: three pieces (fewer when short)."""
    if not arguments:
        return []
    size = max(1, math.ceil(len(arguments) / 3))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def error_body(message: str, error_type: str, anthropic: bool) -> dict[str, object]:
    if anthropic:
        return {"type": "error", "error": {"type": error_type, "message": message}}
    return {"error": {"message": message, "type": error_type, "param": None, "code": None}}


# -- streamed frames --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frames:
    """One stream, encoded ahead of time so the send loop only sleeps and writes."""

    head: bytes
    #: ``(payload, is_token)``: token events count for pacing and ``fault_after``.
    body: list[tuple[bytes, bool]]
    tail: bytes
    #: An in-band error event in the dialect of the stream.
    error: bytes
    #: A valid event that carries no output.
    empty: bytes


_encode = msgspec.json.encode
_ids = itertools.count(1)


def openai_frames(
    scenario: Scenario, model: str, usage: tuple[int, int], *, include_usage: bool
) -> Frames:
    chunk_id = f"chatcmpl-mock{next(_ids)}".encode()
    prefix = (
        b'data: {"id":"'
        + chunk_id
        + b'","object":"chat.completion.chunk","created":'
        + str(int(time.time())).encode()
        + b',"model":'
        + _encode(model)
        + b',"choices":'
    )

    def choice(delta: bytes, finish: bytes = b"null") -> bytes:
        return prefix + b'[{"index":0,"delta":' + delta + b',"finish_reason":' + finish + b"}]}\n\n"

    body: list[tuple[bytes, bool]] = []
    for piece in scenario.reasoning:
        body.append((choice(b'{"reasoning_content":' + _encode(piece) + b"}"), True))
    for token in scenario.tokens:
        body.append((choice(b'{"content":' + _encode(token) + b"}"), True))
    for index, (call_id, name, arguments) in enumerate(scenario.tool_calls):
        start = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        body.append((choice(b'{"tool_calls":[' + _encode(start) + b"]}"), True))
        for piece in _split_arguments(arguments):
            delta = {"index": index, "function": {"arguments": piece}}
            body.append((choice(b'{"tool_calls":[' + _encode(delta) + b"]}"), True))
    tail = choice(b"{}", _encode(scenario.effective_finish_reason))
    if include_usage:
        prompt, completion = usage
        usage_json = _encode(
            {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        )
        tail += prefix + b'[],"usage":' + usage_json + b"}\n\n"
    tail += b"data: [DONE]\n\n"
    error = b"data: " + _encode(error_body("mock upstream error", "server_error", False)) + b"\n\n"
    head = choice(b'{"role":"assistant","content":""}')
    return Frames(head, body, tail, error, prefix + b"[]}\n\n")


def _sse(event: str, payload: object) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _encode(payload) + b"\n\n"


def anthropic_frames(scenario: Scenario, model: str, usage: tuple[int, int]) -> Frames:
    prompt, completion = usage
    message: dict[str, object] = {
        "id": f"msg_mock{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": 1},
    }
    head = _sse("message_start", {"type": "message_start", "message": message})
    head += _sse("ping", {"type": "ping"})
    body: list[tuple[bytes, bool]] = []
    block = 0

    def delta_frame(index: bytes, delta: bytes) -> bytes:
        return (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
            + index
            + b',"delta":'
            + delta
            + b"}\n\n"
        )

    def stop_frame(index: int) -> bytes:
        return _sse("content_block_stop", {"type": "content_block_stop", "index": index})

    if scenario.reasoning:
        thinking = {"type": "thinking", "thinking": ""}
        body.append((_sse("content_block_start", _block_start(block, thinking)), False))
        index = str(block).encode()
        for piece in scenario.reasoning:
            delta = b'{"type":"thinking_delta","thinking":' + _encode(piece) + b"}"
            body.append((delta_frame(index, delta), True))
        signature = b'{"type":"signature_delta","signature":"bW9jaw=="}'
        body.append((delta_frame(index, signature), False))
        body.append((stop_frame(block), False))
        block += 1
    if scenario.tokens:
        text = {"type": "text", "text": ""}
        body.append((_sse("content_block_start", _block_start(block, text)), False))
        index = str(block).encode()
        for token in scenario.tokens:
            delta = b'{"type":"text_delta","text":' + _encode(token) + b"}"
            body.append((delta_frame(index, delta), True))
        body.append((stop_frame(block), False))
        block += 1
    for call_id, name, arguments in scenario.tool_calls:
        tool_use = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        body.append((_sse("content_block_start", _block_start(block, tool_use)), True))
        index = str(block).encode()
        for piece in _split_arguments(arguments):
            delta = b'{"type":"input_json_delta","partial_json":' + _encode(piece) + b"}"
            body.append((delta_frame(index, delta), True))
        body.append((stop_frame(block), False))
        block += 1
    finish = scenario.effective_finish_reason
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": _ANTHROPIC_STOP.get(finish, finish), "stop_sequence": None},
        "usage": {"output_tokens": completion},
    }
    tail = _sse("message_delta", message_delta) + _sse("message_stop", {"type": "message_stop"})
    error = _sse("error", error_body("Overloaded", "overloaded_error", True))
    return Frames(head, body, tail, error, _sse("ping", {"type": "ping"}))


def _block_start(index: int, block: Mapping[str, object]) -> dict[str, object]:
    return {"type": "content_block_start", "index": index, "content_block": block}


# -- whole answers ----------------------------------------------------------------------------


def openai_completion(scenario: Scenario, model: str, usage: tuple[int, int]) -> object:
    message: dict[str, object] = {"role": "assistant", "content": "".join(scenario.tokens) or None}
    if scenario.reasoning:
        message["reasoning_content"] = "".join(scenario.reasoning)
    if scenario.tool_calls:
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            for call_id, name, arguments in scenario.tool_calls
        ]
    prompt, completion = usage
    return {
        "id": f"chatcmpl-mock{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": scenario.effective_finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def anthropic_message(scenario: Scenario, model: str, usage: tuple[int, int]) -> object:
    content: list[object] = []
    if scenario.reasoning:
        thinking = "".join(scenario.reasoning)
        content.append({"type": "thinking", "thinking": thinking, "signature": "bW9jaw=="})
    if scenario.tokens:
        content.append({"type": "text", "text": "".join(scenario.tokens)})
    for call_id, name, arguments in scenario.tool_calls:
        arguments_value: object = msgspec.json.decode(arguments) if arguments else {}
        content.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments_value})
    finish = scenario.effective_finish_reason
    prompt, completion = usage
    return {
        "id": f"msg_mock{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _ANTHROPIC_STOP.get(finish, finish),
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": completion},
    }
