"""The Anthropic Messages provider, against the mock upstream on 127.0.0.1 (and, for the
sans-IO parts, with no event loop at all)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import trio

from benchmarks.mock_upstream import MockUpstream, Scenario
from trio_gateway.config.schema import AnthropicProviderConfig
from trio_gateway.errors import UpstreamError
from trio_gateway.messages import Message, ToolCall, ToolSpec
from trio_gateway.providers.anthropic import (
    AnthropicProvider,
    MessagesStreamParser,
    encode_messages_request,
)
from trio_gateway.providers.base import (
    Completion,
    ModelEvent,
    ModelRequest,
    ReasoningDelta,
    TextDelta,
    TokenUsage,
    ToolCallDelta,
)
from trio_gateway.wire.sse import SSEEvent

BOUND = 5.0
API_KEY = "sk-ant-test-secret-0123456789"


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> MockUpstream:
    mock = MockUpstream()
    await nursery.start(mock.serve)
    return mock


def config(base_url: str, **overrides: Any) -> AnthropicProviderConfig:
    raw = {"api": "anthropic-messages", "baseUrl": base_url, "apiKey": API_KEY, **overrides}
    return msgspec.convert(raw, AnthropicProviderConfig)


@pytest.fixture
async def provider(upstream: MockUpstream) -> AsyncIterator[AnthropicProvider]:
    async with AnthropicProvider(config(upstream.anthropic_base_url), name="an") as provider:
        yield provider


def request(model: str = "m", content: str = "hello there", **fields: Any) -> ModelRequest:
    return ModelRequest(model=model, messages=[Message("user", content)], **fields)


async def collect(
    provider: AnthropicProvider, model_request: ModelRequest
) -> tuple[list[ModelEvent], Completion]:
    received: list[ModelEvent] = []

    async def emit(event: ModelEvent) -> None:
        received.append(event)

    with trio.fail_after(BOUND):
        completion = await provider.stream(model_request, emit)
    return received, completion


async def fails(
    provider: AnthropicProvider, model_request: ModelRequest, received: list[ModelEvent]
) -> UpstreamError:
    async def emit(event: ModelEvent) -> None:
        received.append(event)

    with trio.fail_after(BOUND), pytest.raises(UpstreamError) as info:
        await provider.stream(model_request, emit)
    return info.value


def text_of(events: list[ModelEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# -- streaming ----------------------------------------------------------------------------------


async def test_anthropic_streams_text_and_usage(
    upstream: MockUpstream, provider: AnthropicProvider
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["Hel", "lo"], usage=(21, 2))
    events, completion = await collect(provider, request())
    assert events == [TextDelta("Hel"), TextDelta("lo")]
    assert completion == Completion("stop", TokenUsage(21, 2), ())


async def test_anthropic_streams_thinking_text_and_tool_calls(
    upstream: MockUpstream, provider: AnthropicProvider
) -> None:
    arguments = '{"city": "Paris"}'
    upstream.scenarios["m"] = Scenario(
        reasoning=["hmm", "..."],
        tokens=["Let me check."],
        tool_calls=[("toolu_a", "weather", arguments), ("toolu_b", "clock", '{"tz": "UTC"}')],
    )
    events, completion = await collect(provider, request())
    assert events[:3] == [ReasoningDelta("hmm"), ReasoningDelta("..."), TextDelta("Let me check.")]
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    # Content blocks 2 and 3 are tool calls 0 and 1: only tool_use blocks are counted.
    assert calls[0] == ToolCallDelta(0, "toolu_a", "weather", "")
    assert [c.index for c in calls if c.id is not None] == [0, 1]
    assert "".join(c.arguments for c in calls if c.index == 0) == arguments
    assert len([c for c in calls if c.index == 0]) > 2
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == (
        ToolCall("toolu_a", "weather", arguments),
        ToolCall("toolu_b", "clock", '{"tz": "UTC"}'),
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
async def test_anthropic_maps_stop_reasons(
    upstream: MockUpstream, provider: AnthropicProvider, stop_reason: str, finish_reason: str
) -> None:
    upstream.scenarios["m"] = Scenario(finish_reason=stop_reason)  # sent as it is
    _, completion = await collect(provider, request())
    assert completion.finish_reason == finish_reason


async def test_anthropic_reuses_the_pooled_connection(
    upstream: MockUpstream, provider: AnthropicProvider
) -> None:
    for _ in range(3):
        await collect(provider, request())
    assert upstream.total_connections == 1


# -- request mapping ----------------------------------------------------------------------------


async def test_anthropic_maps_the_request(upstream: MockUpstream) -> None:
    base = config(upstream.anthropic_base_url, headers={"X-Team": "blue"})
    model_request = ModelRequest(
        model="claude-test",
        messages=[
            Message("system", "be brief"),
            Message("developer", "use metric units"),
            Message("user", "weather?"),
            Message("user", "in Paris"),
            Message(
                "assistant",
                "Checking.",
                tool_calls=(
                    ToolCall("toolu_1", "weather", '{"city": "Paris"}'),
                    ToolCall("toolu_2", "clock", ""),
                ),
            ),
            Message("tool", "sunny", tool_call_id="toolu_1"),
            Message("tool", "noon", tool_call_id="toolu_2"),
            Message("user", "thanks"),
            Message("assistant", ""),
        ],
        max_tokens=64,
        temperature=1.5,
        top_p=0.9,
        stop=["END"],
        tools=[ToolSpec("weather", "Weather by city", {"type": "object", "properties": {}})],
        tool_choice="required",
    )
    async with AnthropicProvider(base, name="an") as provider:
        await collect(provider, model_request)
    recorded = upstream.requests[0]
    assert recorded.path == "/v1/messages"
    assert recorded.headers["x-api-key"] == API_KEY
    assert recorded.headers["anthropic-version"] == "2023-06-01"
    assert recorded.headers["x-team"] == "blue"
    assert "authorization" not in recorded.headers
    assert recorded.json == {
        "model": "claude-test",
        "max_tokens": 64,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "weather?"},
                    {"type": "text", "text": "in Paris"},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    },
                    {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "noon"},
                    {"type": "text", "text": "thanks"},
                ],
            },
        ],
        "stream": True,
        "system": "be brief\n\nuse metric units",
        "temperature": 1.0,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "tools": [
            {
                "name": "weather",
                "input_schema": {"type": "object", "properties": {}},
                "description": "Weather by city",
            }
        ],
        "tool_choice": {"type": "any"},
    }


async def test_anthropic_uses_the_default_max_tokens(upstream: MockUpstream) -> None:
    base = config(upstream.anthropic_base_url, defaultMaxTokens=123)
    async with AnthropicProvider(base) as provider:
        await collect(provider, request())
    assert upstream.requests[0].json == {
        "model": "m",
        "max_tokens": 123,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        "stream": True,
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "weather"}},
            {"type": "tool", "name": "weather"},
        ),
        ("sometimes", None),
        (None, None),
    ],
)
def test_anthropic_maps_tool_choice(choice: Any, expected: object) -> None:
    tools = [ToolSpec("weather", "", {"type": "object"})]
    body = json.loads(
        encode_messages_request(request(tools=tools, tool_choice=choice), default_max_tokens=1)
    )
    assert body.get("tool_choice") == expected
    assert body["tools"] == [{"name": "weather", "input_schema": {"type": "object"}}]


DEEP_ARGUMENTS = "[" * 100_000 + "]" * 100_000


def test_anthropic_wraps_tool_arguments_that_are_not_an_object() -> None:
    model_request = ModelRequest(
        model="m",
        messages=[
            Message("user", "go"),
            Message(
                "assistant",
                "",
                tool_calls=(
                    ToolCall("t1", "f", "[1, 2]"),
                    ToolCall("t2", "g", "{broken"),
                    ToolCall("t3", "h", DEEP_ARGUMENTS),
                ),
            ),
        ],
    )
    body = json.loads(encode_messages_request(model_request, default_max_tokens=1))
    assert [block["input"] for block in body["messages"][1]["content"]] == [
        {"arguments": [1, 2]},
        {"arguments": "{broken"},
        {"arguments": DEEP_ARGUMENTS},
    ]


async def test_anthropic_reads_the_api_key_from_the_environment(
    upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPILOOP_TEST_ANTHROPIC_KEY", "sk-ant-from-env")
    base = config(
        upstream.anthropic_base_url,
        apiKey=None,
        apiKeyEnv="EPILOOP_TEST_ANTHROPIC_KEY",
        anthropicVersion="2099-01-01",
    )
    async with AnthropicProvider(base) as provider:
        await collect(provider, request())
    assert upstream.requests[0].headers["x-api-key"] == "sk-ant-from-env"
    assert upstream.requests[0].headers["anthropic-version"] == "2099-01-01"


async def test_anthropic_missing_api_key_fails_the_call(
    upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EPILOOP_TEST_MISSING_KEY", raising=False)
    base = config(upstream.anthropic_base_url, apiKey=None, apiKeyEnv="EPILOOP_TEST_MISSING_KEY")
    async with AnthropicProvider(base) as provider:
        error = await fails(provider, request(), [])
    assert "EPILOOP_TEST_MISSING_KEY" in error.message
    assert error.retryable is False
    assert upstream.requests == []


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "retryable", "retry_after"),
    [
        ("status_429", 429, True, 3.0),
        ("status_503", 503, True, 3.0),
        ("status_500", 500, True, None),
        ("status_400", 400, False, None),
    ],
)
async def test_anthropic_http_errors(
    upstream: MockUpstream,
    provider: AnthropicProvider,
    fault: Any,
    status: int,
    retryable: bool,
    retry_after: float | None,
) -> None:
    upstream.scenarios["m"] = Scenario(fault=fault, retry_after="3")
    error = await fails(provider, request(), [])
    assert error.status == status
    assert error.retryable is retryable
    assert error.retry_after == retry_after
    assert f"mock upstream fault {fault}" in error.message
    assert API_KEY not in error.message


async def test_anthropic_wrong_content_type(
    upstream: MockUpstream, provider: AnthropicProvider
) -> None:
    upstream.scenarios["m"] = Scenario(fault="wrong_content_type")
    error = await fails(provider, request(), [])
    assert error.code == "bad_upstream_response"
    assert error.retryable is False


async def test_anthropic_malformed_event(
    upstream: MockUpstream, provider: AnthropicProvider
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c"], fault="malformed_sse")
    received: list[ModelEvent] = []
    error = await fails(provider, request(), received)
    assert error.code == "bad_upstream_response"
    assert received == [TextDelta("a"), TextDelta("b")]


async def test_anthropic_deeply_nested_event_is_a_bad_response(
    upstream: MockUpstream, provider: AnthropicProvider
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c"], fault="deep_json")
    received: list[ModelEvent] = []
    error = await fails(provider, request(), received)
    assert error.code == "bad_upstream_response"
    assert "nested too deeply" in error.message
    assert received == [TextDelta("a"), TextDelta("b")]


async def test_anthropic_in_band_error_event(
    upstream: MockUpstream, provider: AnthropicProvider
) -> None:
    upstream.scenarios["m"] = Scenario(fault="error_event", fault_after=0)
    error = await fails(provider, request(), [])
    assert error.code == "upstream_stream_error"
    assert error.retryable is True  # overloaded_error
    assert "Overloaded" in error.message


@pytest.mark.parametrize("fault", ["close_immediately", "reset_mid_stream"])
async def test_anthropic_connection_faults(
    upstream: MockUpstream, provider: AnthropicProvider, fault: Any
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c"], fault=fault)
    error = await fails(provider, request(), [])
    assert error.status is None
    assert error.retryable is True
    assert error.code == "upstream_disconnected"
    assert "'an'" in error.message


async def test_anthropic_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with AnthropicProvider(config(f"http://127.0.0.1:{port}"), name="an") as provider:
        error = await fails(provider, request(), [])
    assert error.code == "upstream_unreachable"
    assert error.retryable is True
    assert f"127.0.0.1:{port}" in error.message


# -- deadlines ----------------------------------------------------------------------------------


async def test_anthropic_first_token_deadline_covers_message_start(
    upstream: MockUpstream,
) -> None:
    # message_start and ping arrive at once; no content follows.
    upstream.scenarios["m"] = Scenario(fault="hang_before_first_token")
    base = config(upstream.anthropic_base_url, firstTokenTimeoutSeconds=0.2)
    async with AnthropicProvider(base) as provider:
        start = trio.current_time()
        error = await fails(provider, request(), [])
        elapsed = trio.current_time() - start
    assert error.code == "upstream_timeout"
    assert "firstTokenTimeoutSeconds" in error.message
    assert 0.2 <= elapsed < 1.0


async def test_anthropic_idle_deadline(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c"], fault="hang_mid_stream")
    base = config(upstream.anthropic_base_url, idleTimeoutSeconds=0.2)
    received: list[ModelEvent] = []
    async with AnthropicProvider(base) as provider:
        error = await fails(provider, request(), received)
    assert error.code == "upstream_timeout"
    assert "idleTimeoutSeconds" in error.message
    assert received == [TextDelta("a"), TextDelta("b")]


# -- cancellation -------------------------------------------------------------------------------


async def test_anthropic_cancelling_the_caller_closes_the_upstream_connection(
    upstream: MockUpstream, provider: AnthropicProvider
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["x"] * 1000, pace=0.005)
    received: list[ModelEvent] = []
    cancelled_at = 0.0
    with trio.CancelScope() as scope:

        async def emit(event: ModelEvent) -> None:
            nonlocal cancelled_at
            received.append(event)
            if len(received) == 3:
                cancelled_at = trio.current_time()
                scope.cancel(reason="the client went away")

        with trio.fail_after(BOUND):
            await provider.stream(request(), emit)
    assert scope.cancelled_caught
    record = upstream.requests[0]
    with trio.fail_after(BOUND):
        await record.closed.wait()
    assert record.closed_by == "client"
    assert record.closed_at is not None
    assert record.closed_at - cancelled_at < 2  # promptly; the benchmarks measure how fast
    assert record.tokens_sent < 50


# -- the sans-IO parser -------------------------------------------------------------------------


def feed(parser: MessagesStreamParser, *payloads: object) -> list[ModelEvent]:
    events: list[ModelEvent] = []
    for payload in payloads:
        events.extend(parser.feed(SSEEvent(json.dumps(payload))))
    return events


def test_messages_stream_parser_counts_cache_tokens_and_ignores_unknown_events() -> None:
    parser = MessagesStreamParser("an")
    usage = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 10,
        "cache_read_input_tokens": 100,
        "output_tokens": 1,
    }
    events = feed(
        parser,
        {"type": "message_start", "message": {"usage": usage}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "server_tool_use"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta"}},
        {"type": "brand_new_event", "whatever": [1, 2]},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "pause_turn"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    )
    assert events == []
    assert parser.done
    assert parser.completion() == Completion("stop", TokenUsage(115, 9))


def test_messages_stream_parser_ends_an_empty_tool_input_with_an_empty_object() -> None:
    parser = MessagesStreamParser("an")
    tool_use = {"type": "tool_use", "id": "t1", "name": "clock", "input": {}}
    events = feed(
        parser,
        {"type": "content_block_start", "index": 0, "content_block": tool_use},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}},
    )
    assert events == [ToolCallDelta(0, "t1", "clock", ""), ToolCallDelta(0, arguments="{}")]
    assert parser.completion().tool_calls == (ToolCall("t1", "clock", "{}"),)


def test_messages_stream_parser_incomplete_stream() -> None:
    parser = MessagesStreamParser("an")
    feed(parser, {"type": "message_start", "message": {"usage": {"input_tokens": 1}}})
    with pytest.raises(UpstreamError) as info:
        parser.completion()
    assert info.value.code == "upstream_disconnected"


@pytest.mark.parametrize(
    ("payload", "code", "retryable"),
    [
        ({"no_type": True}, "bad_upstream_response", False),
        (
            {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use"}},
            "bad_upstream_response",
            False,
        ),
        (
            {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}},
            "upstream_stream_error",
            False,
        ),
        (
            {"type": "error", "error": {"type": "api_error", "message": "oops"}},
            "upstream_stream_error",
            True,
        ),
    ],
)
def test_messages_stream_parser_rejects_bad_events(
    payload: object, code: str, retryable: bool
) -> None:
    with pytest.raises(UpstreamError) as info:
        feed(MessagesStreamParser("an"), payload)
    assert info.value.code == code
    assert info.value.retryable is retryable
