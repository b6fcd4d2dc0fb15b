"""The SSE stream over raw HTTP: framing, keep-alives, in-band errors, connection endings."""

from __future__ import annotations

import json

import httpx
import trio
from gateway_harness import TOKEN, RunningGateway, start_gateway

from benchmarks.scripted_provider import Fail, Hang, Pause, Say, ScriptedProvider
from trio_gateway.errors import ProviderError
from trio_gateway.wire.sse import SSEDecoder

STREAM_BODY = {"stream": True, "messages": [{"role": "user", "content": "alpha beta gamma"}]}


async def read_stream(gateway: RunningGateway, body: object) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gateway.api_url}/chat/completions", json=body, headers=gateway.headers
        )
        return response


def data_events(text: str) -> list[str]:
    return [event.data for event in SSEDecoder().feed(text.encode())]


async def test_stream_headers_and_framing(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    response = await read_stream(gateway, STREAM_BODY)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = data_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == (
        "alpha beta gamma"
    )
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert response.text.endswith("data: [DONE]\n\n")


async def silent_for_a_while(nursery: trio.Nursery) -> RunningGateway:
    """A gateway whose runs are silent for 0.4 s, with keep-alives every 0.05 s."""
    return await start_gateway(
        nursery,
        {"gateway": {"http": {"keepAliveSeconds": 0.05}}},
        providers={"local": ScriptedProvider([Pause(0.4), Say("late")])},
    )


async def test_stream_sends_keep_alive_comments_while_the_run_is_silent(
    nursery: trio.Nursery,
) -> None:
    gateway = await silent_for_a_while(nursery)
    response = await read_stream(gateway, STREAM_BODY)
    assert response.text.count(": keep-alive\n\n") >= 2
    assert "late" in "".join(data_events(response.text))
    assert response.text.endswith("data: [DONE]\n\n")


async def test_keep_alives_reach_every_silent_stream_and_stop_with_them(
    nursery: trio.Nursery,
) -> None:
    # One clock serves every open stream; a stream that has ended gets nothing more.
    gateway = await silent_for_a_while(nursery)
    responses: list[httpx.Response] = []

    async def one() -> None:
        responses.append(await read_stream(gateway, STREAM_BODY))

    with trio.fail_after(10):
        async with trio.open_nursery() as streams:
            for _ in range(3):
                streams.start_soon(one)
    assert len(responses) == 3
    for response in responses:
        assert response.text.count(": keep-alive\n\n") >= 2
        assert response.text.endswith("data: [DONE]\n\n")
    # A quiet gateway keeps serving: the clock went back to waiting for streams.
    again = await read_stream(gateway, STREAM_BODY)
    assert again.text.endswith("data: [DONE]\n\n")


async def test_stream_error_after_first_byte_is_in_band_and_has_no_done(
    nursery: trio.Nursery,
) -> None:
    provider = ScriptedProvider([Say("partial"), Fail(ProviderError("upstream broke"))])
    gateway = await start_gateway(nursery, providers={"local": provider})
    response = await read_stream(gateway, STREAM_BODY)
    assert response.status_code == 200
    events = data_events(response.text)
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last == {
        "error": {
            "message": "upstream broke",
            "type": "upstream_error",
            "param": None,
            "code": "provider_error",
        }
    }
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == "partial"
    assert not any('"finish_reason":"stop"' in event for event in events)


async def test_stream_run_deadline_is_an_in_band_timeout_error(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("slow"), Hang()])
    gateway = await start_gateway(
        nursery,
        {"agents": {"list": [{"id": "main", "timeoutSeconds": 0.2}]}},
        providers={"local": provider},
    )
    response = await read_stream(gateway, STREAM_BODY)
    events = data_events(response.text)
    assert json.loads(events[-1])["error"]["code"] == "run_timeout"
    assert "[DONE]" not in events


async def test_stream_max_tokens_stops_with_finish_reason_length(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    response = await read_stream(gateway, {**STREAM_BODY, "max_tokens": 2})
    chunks = [json.loads(event) for event in data_events(response.text)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "alpha beta "
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def raw_exchange(gateway: RunningGateway, request: bytes) -> bytes:
    """Send ``request`` on a fresh TCP connection and read until the server closes it."""
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    async with stream:
        await stream.send_all(request)
        with trio.fail_after(10):
            while chunk := await stream.receive_some():
                received += chunk
    return received


def raw_request(version: str, body: bytes, *extra_headers: str) -> bytes:
    headers = [
        f"POST /v1/chat/completions {version}",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {TOKEN}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *extra_headers,
    ]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


async def test_stream_over_http10_ends_by_closing_the_connection(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    received = await raw_exchange(
        gateway, raw_request("HTTP/1.0", json.dumps(STREAM_BODY).encode())
    )
    assert received.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
    assert received.endswith(b"data: [DONE]\n\n")


async def test_connection_close_is_honoured_after_the_last_byte(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    streamed = await raw_exchange(
        gateway, raw_request("HTTP/1.1", json.dumps(STREAM_BODY).encode(), "Connection: close")
    )
    assert streamed.startswith(b"HTTP/1.1 200")
    assert streamed.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")  # then the last chunk
    whole = {**STREAM_BODY, "stream": False}
    answered = await raw_exchange(
        gateway, raw_request("HTTP/1.1", json.dumps(whole).encode(), "Connection: close")
    )
    head, _, body = answered.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["choices"][0]["message"]["content"] == "alpha beta gamma"


async def test_many_concurrent_streams_each_get_their_own_answer(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, {"models": {"providers": {"local": {"paceMs": 1}}}})
    answers: dict[int, str] = {}

    async def one(client: httpx.AsyncClient, index: int) -> None:
        body = {"stream": True, "messages": [{"role": "user", "content": f"stream {index} ok"}]}
        response = await client.post(
            f"{gateway.api_url}/chat/completions", json=body, headers=gateway.headers
        )
        chunks = [json.loads(event) for event in data_events(response.text)[:-1]]
        answers[index] = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)

    limits = httpx.Limits(max_connections=60)
    # One bound for the whole batch instead of httpx's 5 s per step, which 50 streams at once
    # can exceed on a loaded machine.
    with trio.fail_after(60):
        async with (
            httpx.AsyncClient(limits=limits, timeout=None) as client,
            trio.open_nursery() as requests,
        ):
            for index in range(50):
                requests.start_soon(one, client, index)
    assert answers == {index: f"stream {index} ok" for index in range(50)}
