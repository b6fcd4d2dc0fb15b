"""The mock LLM upstream (benchmarks/mock_upstream.py), driven with httpx on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from benchmarks.mock_upstream import MockUpstream, Scenario
from trio_gateway.wire.sse import SSEDecoder

BOUND = 5.0
MESSAGES = [{"role": "user", "content": "one two three"}]


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> MockUpstream:
    mock = MockUpstream()
    await nursery.start(mock.serve)
    return mock


def chat_body(model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "stream": True, **extra}


def messages_body(model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "max_tokens": 100, "stream": True, **extra}


def events(text: str) -> list[tuple[str, str]]:
    return [(event.event, event.data) for event in SSEDecoder().feed(text.encode())]


def chunks(text: str) -> list[Any]:
    data = [payload for _, payload in events(text)]
    assert data[-1] == "[DONE]"
    return [json.loads(payload) for payload in data[:-1]]


async def post(upstream: MockUpstream, path: str, body: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=upstream.url) as client:
        return await client.post(path, json=body)


async def test_mock_upstream_streams_openai_chunks(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(
        tokens=["Hi", " there"],
        reasoning=["hmm"],
        tool_calls=[("call_1", "lookup", '{"q": "x"}')],
        usage=(7, 5),
    )
    with trio.fail_after(BOUND):
        response = await post(
            upstream, "/v1/chat/completions", chat_body(stream_options={"include_usage": True})
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    parsed = chunks(response.text)
    deltas = [c["choices"][0]["delta"] for c in parsed if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"reasoning_content": "hmm"}
    assert [d.get("content") for d in deltas[2:4]] == ["Hi", " there"]
    tool_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert tool_deltas[0] == {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": ""},
    }
    assert len(tool_deltas) > 2  # the arguments arrive in pieces
    assert "".join(d["function"]["arguments"] for d in tool_deltas) == '{"q": "x"}'
    assert parsed[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert parsed[-1]["choices"] == []
    assert parsed[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in parsed)


async def test_mock_upstream_sends_usage_only_when_asked(upstream: MockUpstream) -> None:
    with trio.fail_after(BOUND):
        response = await post(upstream, "/v1/chat/completions", chat_body())
    parsed = chunks(response.text)
    assert all("usage" not in c for c in parsed)
    assert parsed[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in parsed)
    assert text == "Hello, world!"


async def test_mock_upstream_answers_openai_without_streaming(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b"], finish_reason="length")
    with trio.fail_after(BOUND):
        response = await post(upstream, "/v1/chat/completions", chat_body(stream=False))
    assert response.status_code == 200
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "ab"}
    assert answer["choices"][0]["finish_reason"] == "length"
    # Derived usage: the prompt's words and the streamed events.
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


async def test_mock_upstream_streams_anthropic_events(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(
        tokens=["Hi"],
        reasoning=["think"],
        tool_calls=[("toolu_1", "lookup", '{"q": "x"}')],
        usage=(11, 4),
    )
    with trio.fail_after(BOUND):
        response = await post(upstream, "/v1/messages", messages_body())
    assert response.status_code == 200
    stream = events(response.text)
    names = [name for name, _ in stream]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    payloads = [json.loads(data) for _, data in stream]
    assert all(p["type"] == name for p, name in zip(payloads, names, strict=True))
    assert payloads[0]["message"]["usage"]["input_tokens"] == 11
    starts = [p for p in payloads if p["type"] == "content_block_start"]
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [
        (0, "thinking"),
        (1, "text"),
        (2, "tool_use"),
    ]
    assert starts[2]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "lookup",
        "input": {},
    }
    deltas = [p["delta"] for p in payloads if p["type"] == "content_block_delta"]
    assert {"type": "thinking_delta", "thinking": "think"} in deltas
    assert {"type": "text_delta", "text": "Hi"} in deltas
    pieces = [d["partial_json"] for d in deltas if d["type"] == "input_json_delta"]
    assert "".join(pieces) == '{"q": "x"}'
    assert payloads[-2]["delta"]["stop_reason"] == "tool_use"
    assert payloads[-2]["usage"] == {"output_tokens": 4}


async def test_mock_upstream_answers_anthropic_without_streaming(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b"], tool_calls=[("t1", "f", '{"k": 1}')])
    with trio.fail_after(BOUND):
        response = await post(upstream, "/v1/messages", messages_body(stream=False))
    answer = response.json()
    assert answer["type"] == "message"
    assert answer["content"] == [
        {"type": "text", "text": "ab"},
        {"type": "tool_use", "id": "t1", "name": "f", "input": {"k": 1}},
    ]
    assert answer["stop_reason"] == "tool_use"


async def test_mock_upstream_maps_finish_reasons_for_anthropic(upstream: MockUpstream) -> None:
    upstream.scenarios["a"] = Scenario(finish_reason="length")
    upstream.scenarios["b"] = Scenario(finish_reason="stop_sequence")
    with trio.fail_after(BOUND):
        first = await post(upstream, "/v1/messages", messages_body("a"))
        second = await post(upstream, "/v1/messages", messages_body("b"))
    assert json.loads(events(first.text)[-2][1])["delta"]["stop_reason"] == "max_tokens"
    assert json.loads(events(second.text)[-2][1])["delta"]["stop_reason"] == "stop_sequence"


async def test_mock_upstream_records_requests(upstream: MockUpstream) -> None:
    upstream.scenarios["special"] = Scenario(tokens=["special"])
    with trio.fail_after(BOUND):
        async with httpx.AsyncClient(base_url=upstream.url) as client:
            await client.post(
                "/v1/chat/completions", json=chat_body("special"), headers={"X-Test": "yes"}
            )
            await client.post("/v1/chat/completions", json=chat_body("other"))
    assert [r.scenario for r in upstream.requests] == ["special", "default"]
    first = upstream.requests[0]
    assert first.method == "POST"
    assert first.path == "/v1/chat/completions"
    assert first.headers["x-test"] == "yes"
    assert first.json["model"] == "special"
    assert first.tokens_sent == 1
    assert first.completed_at is not None
    # One keep-alive connection served both; closing the client closed it.
    assert upstream.total_connections == 1
    with trio.fail_after(BOUND):
        await first.closed.wait()
    assert first.closed_by == "client"
    assert upstream.statistics().open_connections == 0
    assert upstream.statistics().requests == 2


async def test_mock_upstream_rejects_bad_requests(upstream: MockUpstream) -> None:
    with trio.fail_after(BOUND):
        async with httpx.AsyncClient(base_url=upstream.url) as client:
            missing = await client.post("/v1/messages", json={"model": "m", "messages": []})
            not_json = await client.post("/v1/chat/completions", content=b"{nope")
            unknown = await client.post("/v1/nothing", json={})
            wrong_method = await client.get("/v1/chat/completions")
    assert missing.status_code == 400
    assert missing.json()["error"]["message"] == "max_tokens: an integer is required"
    assert not_json.status_code == 400
    assert unknown.status_code == 404
    assert wrong_method.status_code == 405


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [("status_429", 429, "rate_limit_error"), ("status_500", 500, "server_error")],
)
async def test_mock_upstream_status_faults(
    upstream: MockUpstream, fault: Any, status: int, error_type: str
) -> None:
    upstream.scenarios["m"] = Scenario(fault=fault, retry_after="7")
    with trio.fail_after(BOUND):
        response = await post(upstream, "/v1/chat/completions", chat_body())
        anthropic = await post(upstream, "/v1/messages", messages_body())
    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type
    assert anthropic.status_code == status
    assert anthropic.json()["type"] == "error"
    if status == 429:
        assert response.headers["retry-after"] == "7"
    else:
        assert "retry-after" not in response.headers


async def test_mock_upstream_wrong_content_type(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(fault="wrong_content_type")
    with trio.fail_after(BOUND):
        response = await post(upstream, "/v1/chat/completions", chat_body())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")


async def test_mock_upstream_close_immediately(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(fault="close_immediately")
    with trio.fail_after(BOUND), pytest.raises(httpx.RemoteProtocolError):
        await post(upstream, "/v1/chat/completions", chat_body())
    assert upstream.requests[0].closed_by == "server"


async def read_stream(
    upstream: MockUpstream, path: str, body: object, received: list[bytes]
) -> None:
    async with (
        httpx.AsyncClient(base_url=upstream.url) as client,
        client.stream("POST", path, json=body) as response,
    ):
        async for chunk in response.aiter_bytes():
            received.append(chunk)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_mock_upstream_reset_mid_stream(upstream: MockUpstream, path: str) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c", "d"], fault="reset_mid_stream")
    received: list[bytes] = []
    body = messages_body() if path == "/v1/messages" else chat_body()
    with trio.fail_after(BOUND), pytest.raises(httpx.ReadError):
        await read_stream(upstream, path, body, received)
    record = upstream.requests[0]
    assert record.tokens_sent == 2
    assert record.closed_by == "server"


async def test_mock_upstream_malformed_sse(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c"], fault="malformed_sse")
    with trio.fail_after(BOUND):
        response = await post(upstream, "/v1/chat/completions", chat_body())
    data = [payload for _, payload in events(response.text)]
    assert data[3] == "{this is not json"  # after the role chunk and two tokens


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_mock_upstream_error_event(upstream: MockUpstream, path: str) -> None:
    upstream.scenarios["m"] = Scenario(fault="error_event", fault_after=1)
    body = messages_body() if path == "/v1/messages" else chat_body()
    with trio.fail_after(BOUND):
        response = await post(upstream, path, body)
    name, data = events(response.text)[-1]
    assert "error" in json.loads(data)
    if path == "/v1/messages":
        assert name == "error"


@pytest.mark.parametrize(
    ("fault", "tokens_before_hang"),
    [("hang_before_first_token", 0), ("hang_mid_stream", 2)],
)
async def test_mock_upstream_hangs_until_the_client_leaves(
    upstream: MockUpstream, fault: Any, tokens_before_hang: int
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c"], fault=fault)
    received: list[bytes] = []
    with trio.move_on_after(0.3) as scope:
        await read_stream(upstream, "/v1/chat/completions", chat_body(), received)
    assert scope.cancelled_caught
    left_at = trio.current_time()
    text = b"".join(received).decode()
    assert text.count('"content"') == tokens_before_hang + 1  # the role chunk has content ""
    record = upstream.requests[0]
    with trio.fail_after(BOUND):
        await record.closed.wait()
    assert record.closed_by == "client"
    assert record.closed_at is not None
    assert record.closed_at - left_at < 2
    assert record.completed_at is None


async def test_mock_upstream_hang_before_headers(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(fault="hang_before_headers")
    answered = trio.Event()

    async def ask() -> None:
        await post(upstream, "/v1/chat/completions", chat_body())
        answered.set()

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            # From when the mock has the request (a loaded machine may take a while to get
            # there), it never answers.
            while not upstream.requests:
                await trio.sleep(0.01)
            await trio.sleep(0.2)
            assert not answered.is_set()
            nursery.cancel_scope.cancel(reason="the client gives up")
        await upstream.requests[0].closed.wait()


async def test_mock_upstream_fail_times_then_behaves(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(fault="status_500", fail_times=2)
    with trio.fail_after(BOUND):
        statuses = [
            (await post(upstream, "/v1/chat/completions", chat_body())).status_code
            for _ in range(3)
        ]
    assert statuses == [500, 500, 200]
    assert [r.fault for r in upstream.requests] == ["status_500", "status_500", None]


async def test_mock_upstream_notices_a_client_that_leaves_mid_stream(
    upstream: MockUpstream,
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["x"] * 1000, pace=0.01)
    with trio.fail_after(BOUND):
        async with (
            httpx.AsyncClient(base_url=upstream.url) as client,
            client.stream("POST", "/v1/chat/completions", json=chat_body()) as response,
        ):
            async for _ in response.aiter_bytes():
                break
        left_at = trio.current_time()
        record = upstream.requests[0]
        await record.closed.wait()
    assert record.closed_by == "client"
    assert record.closed_at is not None
    assert record.closed_at - left_at < 2
    assert record.tokens_sent < 100
    assert upstream.open_connections == 0


async def test_mock_upstream_paces_tokens(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(tokens=["a", "b", "c"], first_token_delay=0.1, pace=0.05)
    arrivals: list[float] = []
    with trio.fail_after(BOUND):
        start = trio.current_time()
        async with (
            httpx.AsyncClient(base_url=upstream.url) as client,
            client.stream("POST", "/v1/chat/completions", json=chat_body()) as response,
        ):
            async for line in response.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    arrivals.append(trio.current_time() - start)
    assert len(arrivals) == 3
    # Token k cannot leave before the first-token delay plus k paces. Intervals between
    # arrivals are no bound: one late delivery on a busy machine shortens the next interval.
    assert arrivals[0] >= 0.1
    assert arrivals[1] >= 0.1 + 0.05
    assert arrivals[2] >= 0.1 + 2 * 0.05
