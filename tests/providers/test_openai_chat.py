"""The OpenAI Chat Completions provider and the shared upstream plumbing, against the mock
upstream on 127.0.0.1 (and, for the sans-IO parts, with no event loop at all)."""

from __future__ import annotations

import contextlib
import socket
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import msgspec
import pytest
import trio

from benchmarks.mock_upstream import MockUpstream, Scenario
from trio_gateway.config import Config
from trio_gateway.config.schema import OpenAIChatProviderConfig
from trio_gateway.errors import UpstreamError
from trio_gateway.messages import Message, ToolCall, ToolSpec
from trio_gateway.providers.base import (
    Completion,
    ModelEvent,
    ModelRequest,
    ReasoningDelta,
    TextDelta,
    TokenUsage,
    ToolCallDelta,
)
from trio_gateway.providers.echo import EchoProvider
from trio_gateway.providers.http_provider import USER_AGENT, resolve_api_key
from trio_gateway.providers.openai_chat import (
    ChatStreamParser,
    OpenAIChatProvider,
    encode_chat_request,
)
from trio_gateway.providers.registry import build_providers, close_providers
from trio_gateway.providers.upstream_errors import (
    error_message_from_body,
    retry_after_from_headers,
)
from trio_gateway.wire.sse import SSEEvent

BOUND = 5.0
API_KEY = "sk-test-secret-0123456789"


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> MockUpstream:
    mock = MockUpstream()
    await nursery.start(mock.serve)
    return mock


def config(base_url: str, **overrides: Any) -> OpenAIChatProviderConfig:
    raw = {"api": "openai-chat", "baseUrl": base_url, "apiKey": API_KEY, **overrides}
    return msgspec.convert(raw, OpenAIChatProviderConfig)


@pytest.fixture
async def provider(upstream: MockUpstream) -> AsyncIterator[OpenAIChatProvider]:
    async with OpenAIChatProvider(config(upstream.openai_base_url), name="oa") as provider:
        yield provider


def request(model: str = "m", content: str = "hello there", **fields: Any) -> ModelRequest:
    return ModelRequest(model=model, messages=[Message("user", content)], **fields)


async def collect(
    provider: OpenAIChatProvider, model_request: ModelRequest
) -> tuple[list[ModelEvent], Completion]:
    received: list[ModelEvent] = []

    async def emit(event: ModelEvent) -> None:
        received.append(event)

    with trio.fail_after(BOUND):
        completion = await provider.stream(model_request, emit)
    return received, completion


async def fails(
    provider: OpenAIChatProvider, model_request: ModelRequest, received: list[ModelEvent]
) -> UpstreamError:
    async def emit(event: ModelEvent) -> None:
        received.append(event)

    with trio.fail_after(BOUND), pytest.raises(UpstreamError) as info:
        await provider.stream(model_request, emit)
    return info.value


def text_of(events: list[ModelEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# -- streaming ----------------------------------------------------------------------------------


async def test_openai_chat_streams_text_and_usage(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["Hel", "lo", "!"], usage=(12, 3))
    events, completion = await collect(provider, request())
    assert events == [TextDelta("Hel"), TextDelta("lo"), TextDelta("!")]
    assert completion == Completion("stop", TokenUsage(12, 3), ())


async def test_openai_chat_streams_reasoning_before_text(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    upstream.scenarios["m"] = Scenario(reasoning=["let me ", "think"], tokens=["42"])
    events, _ = await collect(provider, request())
    assert events == [ReasoningDelta("let me "), ReasoningDelta("think"), TextDelta("42")]


async def test_openai_chat_streams_tool_calls(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    arguments = '{"city": "Paris", "days": 3}'
    upstream.scenarios["m"] = Scenario(
        tokens=[],
        tool_calls=[("call_a", "weather", arguments), ("call_b", "clock", "{}")],
    )
    events, completion = await collect(provider, request())
    assert all(isinstance(e, ToolCallDelta) for e in events)
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert calls[0] == ToolCallDelta(0, "call_a", "weather", "")
    assert len([c for c in calls if c.index == 0]) > 2
    assert all(c.id is None and c.name is None for c in calls[1:] if c.index == 0)
    assert "".join(c.arguments for c in calls if c.index == 0) == arguments
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == (
        ToolCall("call_a", "weather", arguments),
        ToolCall("call_b", "clock", "{}"),
    )


@pytest.mark.parametrize("finish_reason", ["length", "content_filter", "stop"])
async def test_openai_chat_passes_finish_reasons(
    upstream: MockUpstream, provider: OpenAIChatProvider, finish_reason: str
) -> None:
    upstream.scenarios["m"] = Scenario(finish_reason=finish_reason)
    _, completion = await collect(provider, request())
    assert completion.finish_reason == finish_reason


async def test_openai_chat_reuses_the_pooled_connection(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    for _ in range(3):
        await collect(provider, request())
    assert upstream.total_connections == 1
    assert upstream.open_connections == 1
    await provider.aclose()
    with trio.fail_after(BOUND):
        await upstream.requests[-1].closed.wait()
    assert upstream.open_connections == 0


# -- request mapping ----------------------------------------------------------------------------


async def test_openai_chat_maps_the_request(upstream: MockUpstream) -> None:
    base = config(upstream.openai_base_url, headers={"X-Team": "blue"})
    model_request = ModelRequest(
        model="gpt-test",
        messages=[
            Message("system", "be brief"),
            Message("developer", "use metric units"),
            Message("user", "weather?", name="ann"),
            Message("assistant", "", tool_calls=(ToolCall("call_1", "weather", '{"c":"P"}'),)),
            Message("tool", "sunny", tool_call_id="call_1"),
            Message("assistant", "It is sunny."),
            Message("user", "thanks"),
        ],
        max_tokens=50,
        temperature=0.5,
        top_p=0.9,
        stop=["END"],
        tools=[ToolSpec("weather", "Weather by city", {"type": "object", "properties": {}})],
        tool_choice={"type": "function", "function": {"name": "weather"}},
    )
    async with OpenAIChatProvider(base, name="oa") as provider:
        await collect(provider, model_request)
    recorded = upstream.requests[0]
    assert recorded.path == "/v1/chat/completions"
    assert recorded.headers["authorization"] == f"Bearer {API_KEY}"
    assert recorded.headers["content-type"] == "application/json"
    assert recorded.headers["user-agent"] == USER_AGENT
    assert recorded.headers["x-team"] == "blue"
    assert recorded.json == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "system", "content": "use metric units"},
            {"role": "user", "content": "weather?", "name": "ann"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "function": {"name": "weather", "arguments": '{"c":"P"}'},
                        "type": "function",
                    }
                ],
            },
            {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": "thanks"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END"],
        "tools": [
            {
                "function": {
                    "name": "weather",
                    "parameters": {"type": "object", "properties": {}},
                    "description": "Weather by city",
                },
                "type": "function",
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
    }


def test_openai_chat_request_leaves_out_unset_options() -> None:
    body = msgspec.json.decode(encode_chat_request(request(tool_choice="auto")))
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "hello there"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_openai_chat_reads_the_api_key_from_the_environment(
    upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPILOOP_TEST_OPENAI_KEY", "sk-from-env")
    base = config(upstream.openai_base_url, apiKey=None, apiKeyEnv="EPILOOP_TEST_OPENAI_KEY")
    async with OpenAIChatProvider(base) as provider:
        monkeypatch.delenv("EPILOOP_TEST_OPENAI_KEY")  # read once, at construction
        await collect(provider, request())
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-from-env"


async def test_openai_chat_missing_api_key_fails_the_call_not_the_start(
    upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EPILOOP_TEST_MISSING_KEY", raising=False)
    base = config(upstream.openai_base_url, apiKey=None, apiKeyEnv="EPILOOP_TEST_MISSING_KEY")
    async with OpenAIChatProvider(base, name="oa") as provider:
        error = await fails(provider, request(), [])
    assert "EPILOOP_TEST_MISSING_KEY" in error.message
    assert error.retryable is False
    assert error.code == "upstream_api_key_missing"
    assert upstream.requests == []


async def test_openai_chat_without_a_key_sends_no_authorization(upstream: MockUpstream) -> None:
    async with OpenAIChatProvider(config(upstream.openai_base_url, apiKey=None)) as provider:
        await collect(provider, request())
    assert "authorization" not in upstream.requests[0].headers


# -- faults -------------------------------------------------------------------------------------


async def test_openai_chat_429_is_retryable_with_retry_after(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    upstream.scenarios["m"] = Scenario(fault="status_429", retry_after="7")
    error = await fails(provider, request(), [])
    assert error.status == 429
    assert error.retryable is True
    assert error.retry_after == 7
    assert error.code == "upstream_rate_limited"
    assert "mock upstream fault status_429" in error.message
    assert "'oa'" in error.message
    assert API_KEY not in error.message


@pytest.mark.parametrize(
    ("fault", "status", "retryable"),
    [("status_500", 500, True), ("status_503", 503, True), ("status_400", 400, False)],
)
async def test_openai_chat_http_errors(
    upstream: MockUpstream,
    provider: OpenAIChatProvider,
    fault: Any,
    status: int,
    retryable: bool,
) -> None:
    upstream.scenarios["m"] = Scenario(fault=fault)
    error = await fails(provider, request(), [])
    assert error.status == status
    assert error.retryable is retryable
    assert error.retry_after is None
    assert error.code == "upstream_http_error"


async def test_openai_chat_wrong_content_type_is_a_bad_response(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    upstream.scenarios["m"] = Scenario(fault="wrong_content_type")
    error = await fails(provider, request(), [])
    assert error.code == "bad_upstream_response"
    assert error.retryable is False
    assert "text/html" in error.message


async def test_openai_chat_malformed_event_is_a_bad_response(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c"], fault="malformed_sse")
    received: list[ModelEvent] = []
    error = await fails(provider, request(), received)
    assert error.code == "bad_upstream_response"
    assert error.retryable is False
    assert received == [TextDelta("a"), TextDelta("b")]


async def test_openai_chat_endless_line_is_a_bad_response(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c"], fault="endless_line")
    settings = config(upstream.openai_base_url, maxEventBytes=64 * 1024)
    received: list[ModelEvent] = []
    async with OpenAIChatProvider(settings, name="oa") as provider:
        error = await fails(provider, request(), received)
    assert error.code == "bad_upstream_response"
    assert error.retryable is False
    assert "longer than 65536 bytes (maxEventBytes)" in error.message
    assert received == [TextDelta("a"), TextDelta("b")]
    with trio.fail_after(BOUND):
        await upstream.requests[0].closed.wait()  # the endless answer was let go


async def test_openai_chat_deeply_nested_event_is_a_bad_response(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c"], fault="deep_json")
    received: list[ModelEvent] = []
    error = await fails(provider, request(), received)
    assert error.code == "bad_upstream_response"
    assert error.retryable is False
    assert "nested too deeply" in error.message
    assert received == [TextDelta("a"), TextDelta("b")]


async def test_openai_chat_a_flood_of_empty_events_does_not_starve_other_tasks(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    # 100,000 events without output arrive at once; the consumer is never awaited for them, so
    # only the read loop's own yields let other tasks run meanwhile.
    upstream.scenarios["m"] = Scenario(tokens=["a", "b"], fault="empty_events", fault_after=1)
    ticks = 0
    streaming = True

    async def ticker() -> None:
        nonlocal ticks
        while streaming:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        events, _ = await collect(provider, request())
        streaming = False
    assert text_of(events) == "ab"
    # One yield every 64 events is 1,562 turns for the ticker; reads alone give it ~100 at most.
    assert ticks >= 500, ticks


async def test_openai_chat_in_band_error_event(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    upstream.scenarios["m"] = Scenario(fault="error_event", fault_after=1)
    received: list[ModelEvent] = []
    error = await fails(provider, request(), received)
    assert error.code == "upstream_stream_error"
    assert error.status is None
    assert "mock upstream error" in error.message
    assert received == [TextDelta("Hello")]


async def test_openai_chat_connection_closed_without_answer(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    upstream.scenarios["m"] = Scenario(fault="close_immediately")
    error = await fails(provider, request(), [])
    assert error.status is None
    assert error.retryable is True
    assert error.code == "upstream_disconnected"
    assert "'oa'" in error.message
    assert "127.0.0.1" in error.message


async def test_openai_chat_reset_mid_stream(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c", "d"], fault="reset_mid_stream")
    received: list[ModelEvent] = []
    error = await fails(provider, request(), received)
    assert error.status is None
    assert error.retryable is True
    assert error.code == "upstream_disconnected"
    assert received == [TextDelta("a"), TextDelta("b")]


async def test_openai_chat_retry_after_a_fault_succeeds(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    upstream.scenarios["m"] = Scenario(fault="status_500", fail_times=1)
    await fails(provider, request(), [])
    events, completion = await collect(provider, request())
    assert text_of(events) == "Hello, world!"
    assert completion.finish_reason == "stop"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_openai_chat_connection_refused() -> None:
    port = closed_port()
    async with OpenAIChatProvider(config(f"http://127.0.0.1:{port}/v1"), name="oa") as provider:
        error = await fails(provider, request(), [])
    assert error.status is None
    assert error.retryable is True
    assert error.code == "upstream_unreachable"
    assert f"127.0.0.1:{port}" in error.message
    assert "'oa'" in error.message


# -- deadlines ----------------------------------------------------------------------------------


async def test_openai_chat_connect_deadline() -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, connect hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            base = config(
                f"http://127.0.0.1:{port}/v1", connectTimeoutSeconds=0.2, firstTokenTimeoutSeconds=3
            )
            async with OpenAIChatProvider(base, name="oa") as provider:
                start = trio.current_time()
                error = await fails(provider, request(), [])
                elapsed = trio.current_time() - start
        finally:
            for filler in fillers:
                filler.close()
    assert error.code == "upstream_timeout"
    assert error.retryable is True
    assert "connectTimeoutSeconds" in error.message
    assert 0.2 <= elapsed < 1.0


@pytest.mark.parametrize("fault", ["hang_before_first_token", "hang_before_headers"])
async def test_openai_chat_first_token_deadline(upstream: MockUpstream, fault: Any) -> None:
    upstream.scenarios["m"] = Scenario(fault=fault)
    base = config(upstream.openai_base_url, firstTokenTimeoutSeconds=0.2)
    async with OpenAIChatProvider(base) as provider:
        start = trio.current_time()
        error = await fails(provider, request(), [])
        elapsed = trio.current_time() - start
    assert error.code == "upstream_timeout"
    assert error.retryable is True
    assert "firstTokenTimeoutSeconds" in error.message
    assert 0.2 <= elapsed < 1.0
    with trio.fail_after(BOUND):
        await upstream.requests[0].closed.wait()
    assert upstream.requests[0].closed_by == "client"


async def test_openai_chat_idle_deadline(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c"], fault="hang_mid_stream")
    base = config(upstream.openai_base_url, idleTimeoutSeconds=0.2)
    received: list[ModelEvent] = []
    async with OpenAIChatProvider(base) as provider:
        start = trio.current_time()
        error = await fails(provider, request(), received)
        elapsed = trio.current_time() - start
    assert error.code == "upstream_timeout"
    assert "idleTimeoutSeconds" in error.message
    assert received == [TextDelta("a"), TextDelta("b")]
    assert 0.2 <= elapsed < 1.0


async def test_openai_chat_idle_deadline_starts_after_the_first_token(
    upstream: MockUpstream,
) -> None:
    # The role chunk comes at once, the first token only after 0.3 s: longer than the idle
    # deadline, shorter than the first-token one.
    upstream.scenarios["m"] = Scenario(tokens=["a", "b"], first_token_delay=0.3, pace=0.01)
    base = config(upstream.openai_base_url, idleTimeoutSeconds=0.1, firstTokenTimeoutSeconds=2)
    async with OpenAIChatProvider(base) as provider:
        events, completion = await collect(provider, request())
    assert text_of(events) == "ab"
    assert completion.finish_reason == "stop"


async def test_openai_chat_a_slow_consumer_is_not_upstream_silence(
    upstream: MockUpstream,
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c"])
    base = config(upstream.openai_base_url, idleTimeoutSeconds=0.1)
    received: list[ModelEvent] = []

    async def slow_emit(event: ModelEvent) -> None:
        await trio.sleep(0.15)
        received.append(event)

    async with OpenAIChatProvider(base) as provider:
        with trio.fail_after(BOUND):
            completion = await provider.stream(request(), slow_emit)
    assert text_of(received) == "abc"
    assert completion.finish_reason == "stop"


# -- cancellation -------------------------------------------------------------------------------


async def test_openai_chat_cancelling_the_caller_closes_the_upstream_connection(
    upstream: MockUpstream, provider: OpenAIChatProvider
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
    assert record.completed_at is None


# -- the sans-IO parts --------------------------------------------------------------------------


def feed(parser: ChatStreamParser, *payloads: str) -> list[ModelEvent]:
    events: list[ModelEvent] = []
    for payload in payloads:
        events.extend(parser.feed(SSEEvent(payload)))
    return events


def test_chat_stream_parser_names_tool_calls_without_ids() -> None:
    parser = ChatStreamParser("oa")
    events = feed(
        parser,
        '{"choices":[{"delta":{"tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}}]}',
        '{"choices":[{"delta":{},"finish_reason":"stop"}]}',
        "[DONE]",
    )
    assert parser.done
    assert len(events) == 1
    first = events[0]
    assert isinstance(first, ToolCallDelta)
    assert first.id is not None
    assert first.id.startswith("call_")
    completion = parser.completion()
    assert completion.finish_reason == "tool_calls"  # some local servers say "stop"
    assert completion.tool_calls == (ToolCall(first.id, "f", "{}"),)


def test_chat_stream_parser_accepts_reasoning_and_null_fields() -> None:
    parser = ChatStreamParser("oa")
    events = feed(
        parser,
        '{"choices":[{"index":0,"delta":{"reasoning":"r","content":null},"logprobs":null}],'
        '"usage":null}',
        '{"choices":[{"index":1,"delta":{"content":"other choice"}}]}',
        '{"choices":[{"index":0,"delta":{"content":"t"},"finish_reason":"length"}],'
        '"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}',
    )
    assert events == [ReasoningDelta("r"), TextDelta("t")]
    assert not parser.done
    assert parser.completion() == Completion("length", TokenUsage(4, 2))


def test_chat_stream_parser_incomplete_stream() -> None:
    parser = ChatStreamParser("oa")
    feed(parser, '{"choices":[{"delta":{"content":"t"}}]}')
    with pytest.raises(UpstreamError) as info:
        parser.completion()
    assert info.value.retryable is True
    assert info.value.code == "upstream_disconnected"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ('{"choices": "nope"}', "bad_upstream_response"),
        ("not json", "bad_upstream_response"),
        ('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}", "bad_upstream_response"),
        ('{"error": "model is loading"}', "upstream_stream_error"),
    ],
)
def test_chat_stream_parser_rejects_bad_events(payload: str, code: str) -> None:
    with pytest.raises(UpstreamError) as info:
        feed(ChatStreamParser("oa"), payload)
    assert info.value.code == code


def test_retry_after_from_headers() -> None:
    now = 1_700_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 30, tz=UTC), usegmt=True)
    assert retry_after_from_headers({"retry-after": "12"}, now=now) == 12
    assert retry_after_from_headers({"retry-after": "1.5"}, now=now) == 1.5
    assert retry_after_from_headers({"retry-after": date}, now=now) == 30
    assert retry_after_from_headers({"retry-after": "-5"}, now=now) == 0
    assert retry_after_from_headers({"retry-after": "soon"}, now=now) is None
    assert retry_after_from_headers({"retry-after": "nan"}, now=now) is None
    assert retry_after_from_headers({"retry-after-ms": "250", "retry-after": "9"}, now=now) == 0.25
    assert retry_after_from_headers({}, now=now) is None


def test_error_message_from_body() -> None:
    assert error_message_from_body(b'{"error": {"message": "bad  key\\n"}}') == "bad key"
    assert error_message_from_body(b'{"type":"error","error":{"message":"slow"}}') == "slow"
    assert error_message_from_body(b'{"error": "model not found"}') == "model not found"
    assert error_message_from_body(b'{"detail": "Not Found"}') == "Not Found"
    assert error_message_from_body(b"<html>") is None
    assert error_message_from_body(b"[1]") is None
    assert error_message_from_body(b'{"error": ' + b"[" * 60_000) is None  # too deep
    assert error_message_from_body(b'{"error": "\xff"}') is None  # not UTF-8
    assert len(error_message_from_body(b'{"message": "' + b"x" * 5000 + b'"}') or "") == 500


def test_resolve_api_key() -> None:
    assert resolve_api_key("k", "VAR", {"VAR": "env"}) == ("k", None)
    assert resolve_api_key(None, "VAR", {"VAR": "env"}) == ("env", None)
    assert resolve_api_key(None, "VAR", {"VAR": ""}) == (None, "VAR")
    assert resolve_api_key(None, "VAR", {}) == (None, "VAR")
    assert resolve_api_key(None, None, {}) == (None, None)


# -- the registry -------------------------------------------------------------------------------


async def test_build_providers_from_config(upstream: MockUpstream) -> None:
    raw = {
        "models": {
            "providers": {
                "local": {"api": "echo"},
                "oa": {"api": "openai-chat", "baseUrl": upstream.openai_base_url},
                "an": {"api": "anthropic-messages", "baseUrl": upstream.anthropic_base_url},
            }
        }
    }
    providers = build_providers(msgspec.convert(raw, Config))
    try:
        assert isinstance(providers["local"], EchoProvider)
        oa = providers["oa"]
        assert isinstance(oa, OpenAIChatProvider)
        assert oa.name == "oa"
        _, completion = await collect(oa, request())
        assert completion.finish_reason == "stop"
    finally:
        await close_providers(providers)
    with trio.fail_after(BOUND):
        await upstream.requests[0].closed.wait()
    assert upstream.open_connections == 0


async def test_close_providers_runs_in_a_cancelled_scope(upstream: MockUpstream) -> None:
    provider = OpenAIChatProvider(config(upstream.openai_base_url))
    await collect(provider, request())
    with trio.CancelScope() as scope:
        scope.cancel(reason="shutting down")
        await close_providers({"oa": provider})
    with trio.fail_after(BOUND):
        await upstream.requests[0].closed.wait()


async def test_openai_chat_does_not_hold_the_sent_conversation_while_streaming(
    upstream: MockUpstream, provider: OpenAIChatProvider
) -> None:
    # A stream can stay open for minutes: the encoded request (the whole conversation) must
    # not stay alive with it. Counted: memory allocated by the gateway's own code (the mock
    # in this process keeps its copy of the request, which is not ours).
    upstream.scenarios["m"] = Scenario(tokens=["a", "b"], pace=0.05)
    big = request(content="x" * 4_000_000)
    held: list[int] = []

    async def emit(event: ModelEvent) -> None:
        if not held:
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, "*/trio_gateway/*", all_frames=True)]
            )
            held.append(sum(stat.size for stat in snapshot.statistics("filename")))

    tracemalloc.start(50)
    try:
        with trio.fail_after(BOUND):
            await provider.stream(big, emit)
    finally:
        tracemalloc.stop()
    assert held
    assert held[0] < 1_000_000, f"{held[0]:,} bytes held during the stream"
