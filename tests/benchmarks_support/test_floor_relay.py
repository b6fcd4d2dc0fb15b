"""The floor relay (benchmarks/floor_relay.py) against the mock upstream on 127.0.0.1, and the
floor section's numbers (benchmarks/report.py)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio
from floor_relay import serve_floor_relay
from mock_upstream import MockUpstream, Scenario
from processes import open_floor_relay
from report import StackNumbers, floor_rows, stack_numbers
from scenarios import DisconnectResult, MemoryResult
from summary import Percentiles

from trio_gateway.wire.sse import SSEDecoder

BOUND = 10.0
#: Starting a Python process that imports the gateway's package (a loaded machine is slow).
START_BOUND = 60.0
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> MockUpstream:
    mock = MockUpstream()
    await nursery.start(mock.serve)
    return mock


@pytest.fixture
async def relay(upstream: MockUpstream) -> AsyncIterator[str]:
    """The relay served in this test's trio run; shut down (lifespan included) at the end."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            partial(serve_floor_relay, upstream.url, shutdown_trigger=stop.wait)
        )
        yield urls[0]
        stop.set()


def contents(text: str) -> tuple[list[str], bool]:
    """The content deltas of an OpenAI chat stream, and whether it ended with ``[DONE]``."""
    data = [event.data for event in SSEDecoder().feed(text.encode())]
    done = data[-1:] == ["[DONE]"]
    pieces = []
    for payload in data[:-1] if done else data:
        delta = json.loads(payload)["choices"][0]["delta"]
        if delta.get("content"):
            pieces.append(delta["content"])
    return pieces, done


async def test_floor_relay_relays_a_stream_unchanged_over_a_pooled_connection(
    upstream: MockUpstream, relay: str
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=[" tok~"] * 5)
    with trio.fail_after(BOUND):
        async with httpx.AsyncClient(base_url=relay) as client:
            answers = [await client.post("/v1/chat/completions", json=BODY) for _ in range(2)]
    for answer in answers:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert contents(answer.text) == ([" tok~"] * 5, True)
    assert [record.json for record in upstream.requests] == [BODY, BODY]
    assert all(record.closed_at is None for record in upstream.requests)
    assert upstream.total_connections == 1  # the second request reused the first connection


async def test_floor_relay_closes_the_upstream_connection_when_the_client_leaves(
    upstream: MockUpstream, relay: str
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=[" tok~"] * 1000, pace=0.01)
    with trio.fail_after(BOUND):
        async with (
            httpx.AsyncClient(base_url=relay) as client,
            client.stream("POST", "/v1/chat/completions", json=BODY) as response,
        ):
            async for text in response.aiter_text():
                if "~" in text:
                    break
        record = upstream.requests[0]
        await record.closed.wait()
    assert record.closed_by == "client"
    assert record.completed_at is None
    assert record.tokens_sent < 1000


async def read_through(relay: str, received: list[str]) -> None:
    async with (
        httpx.AsyncClient(base_url=relay) as client,
        client.stream("POST", "/v1/chat/completions", json=BODY) as response,
    ):
        async for text in response.aiter_text():
            received.append(text)


async def test_floor_relay_cuts_the_answer_off_when_the_upstream_fails_mid_stream(
    upstream: MockUpstream, relay: str
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=[" tok~"] * 4, fault="reset_mid_stream")
    received: list[str] = []
    with trio.fail_after(BOUND), pytest.raises(httpx.RemoteProtocolError):
        await read_through(relay, received)
    assert "~" in "".join(received)
    assert "[DONE]" not in "".join(received)


async def test_floor_relay_answers_404_elsewhere_and_405_to_get(relay: str) -> None:
    with trio.fail_after(BOUND):
        async with httpx.AsyncClient(base_url=relay) as client:
            elsewhere = await client.post("/v1/completions", json=BODY)
            get = await client.get("/v1/chat/completions")
    assert elsewhere.status_code == 404
    assert get.status_code == 405


async def test_floor_relay_answers_502_when_the_upstream_is_unreachable() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # closed again before the relay connects
    stop = trio.Event()
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                partial(serve_floor_relay, f"http://127.0.0.1:{port}", shutdown_trigger=stop.wait)
            )
            async with httpx.AsyncClient(base_url=urls[0]) as client:
                answer = await client.post("/v1/chat/completions", json=BODY)
            stop.set()
    assert answer.status_code == 502
    assert "ConnectError" in answer.text


async def test_open_floor_relay_runs_the_script_and_stops_it(upstream: MockUpstream) -> None:
    upstream.scenarios["m"] = Scenario(tokens=[" tok~"] * 3)
    with trio.fail_after(START_BOUND):
        async with open_floor_relay(upstream.url, cpus=None) as relay:
            assert relay.host == "127.0.0.1"
            async with httpx.AsyncClient(base_url=f"http://{relay.host}:{relay.port}") as client:
                answer = await client.post("/v1/chat/completions", json=BODY)
        # Stopped at the block's exit: the relay's pooled upstream connection is gone too.
        while upstream.open_connections:
            await trio.sleep(0.01)
    assert contents(answer.text) == ([" tok~"] * 3, True)


def memory(per_stream_kib: float | None) -> MemoryResult:
    return MemoryResult("floor", 50.0, [], per_stream_kib, per_stream_kib, 50.0, 0.01)


def cancel(p99_ms: float) -> DisconnectResult:
    latency = Percentiles(n=10, mean=1.0, p50=1.0, p90=2.0, p99=p99_ms, max=p99_ms)
    return DisconnectResult("floor", 20, 10, 10, 10, 0, latency, {})


def test_stack_numbers_takes_memory_and_disconnect_without_streaming() -> None:
    numbers = stack_numbers([], memory(12.5), cancel(3.0))
    assert numbers == StackNumbers(per_stream_kib=12.5, cancel_p99_ms=3.0)


def test_floor_rows_show_what_the_gateway_adds_above_the_floor() -> None:
    gateway = StackNumbers(
        added_ttft_p50_ms=3.0,
        cpu_per_token_us=200.0,
        tokens_per_s=7000.0,
        idle_rss_mib=52.0,
        per_stream_kib=70.0,
    )
    floor = StackNumbers(
        added_ttft_p50_ms=1.0,
        added_gap_p99_ms=0.5,
        cpu_per_token_us=60.0,
        tokens_per_s=8000.0,
        per_stream_kib=20.0,
    )
    rows = {row.name: (row.gateway, row.floor, row.added) for row in floor_rows(gateway, floor)}
    assert rows == {
        "added TTFT p50, concurrency 1": (3.0, 1.0, 2.0),
        "added inter-token gap p99, concurrency 50": (None, 0.5, None),
        "gateway CPU per streamed token, concurrency 50": (200.0, 60.0, 140.0),
        "streamed tokens/s, concurrency 200": (7000.0, 8000.0, -1000.0),
        "RSS per open idle stream": (70.0, 20.0, 50.0),
        "disconnect to upstream cancel p99": (None, None, None),
    }
