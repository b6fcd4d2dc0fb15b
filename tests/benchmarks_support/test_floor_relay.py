"""The floor relays (benchmarks/floor_relay.py, bare and quart-trio) against the mock upstream
on 127.0.0.1, and the floor section's numbers (benchmarks/report.py)."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio

from benchmarks.floor_relay import FRAMEWORKS, Framework, serve_floor_relay
from benchmarks.mock_upstream import MockUpstream, Scenario
from benchmarks.processes import open_floor_relay
from benchmarks.profiles import SHORT
from benchmarks.report import Machine, Report, floor_targets
from benchmarks.results import DisconnectResult, FloorResult, MemoryResult
from benchmarks.summary import Percentiles
from benchmarks.tables import markdown
from benchmarks.targets import StackNumbers, floor_rows, stack_numbers
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


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> Framework:
    """Each test runs against both relays: they must behave alike."""
    value: Framework = request.param
    return value


@pytest.fixture
async def relay(upstream: MockUpstream, framework: Framework) -> AsyncIterator[str]:
    """The relay served in this test's trio run; shut down (lifespan included) at the end."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            partial(
                serve_floor_relay, upstream.url, framework=framework, shutdown_trigger=stop.wait
            )
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


async def test_floor_relay_answers_502_when_the_upstream_is_unreachable(
    framework: Framework,
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # closed again before the relay connects
    stop = trio.Event()
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                partial(
                    serve_floor_relay,
                    f"http://127.0.0.1:{port}",
                    framework=framework,
                    shutdown_trigger=stop.wait,
                )
            )
            async with httpx.AsyncClient(base_url=urls[0]) as client:
                answer = await client.post("/v1/chat/completions", json=BODY)
            stop.set()
    assert answer.status_code == 502
    assert "ConnectError" in answer.text


async def test_open_floor_relay_runs_the_script_and_stops_it(
    upstream: MockUpstream, framework: Framework
) -> None:
    upstream.scenarios["m"] = Scenario(tokens=[" tok~"] * 3)
    with trio.fail_after(START_BOUND):
        async with open_floor_relay(upstream.url, cpus=None, framework=framework) as relay:
            assert relay.host == "127.0.0.1"
            assert relay.command.endswith(f"--framework {framework}")
            async with httpx.AsyncClient(base_url=f"http://{relay.host}:{relay.port}") as client:
                answer = await client.post("/v1/chat/completions", json=BODY)
        # Stopped at the block's exit: the relay's pooled upstream connection is gone too.
        while upstream.open_connections:
            await trio.sleep(0.01)
    assert contents(answer.text) == ([" tok~"] * 3, True)


def memory(per_stream_kib: float | None, target: str = "floor-bare") -> MemoryResult:
    return MemoryResult(target, 50.0, [], per_stream_kib, per_stream_kib, 50.0, 0.01)


def cancel(p99_ms: float, target: str = "floor-bare") -> DisconnectResult:
    latency = Percentiles(n=10, mean=1.0, p50=1.0, p90=2.0, p99=p99_ms, max=p99_ms)
    return DisconnectResult(target, 20, 10, 10, 10, 0, latency, {})


def relay_result(framework: Framework, per_stream_kib: float, cancel_ms: float) -> FloorResult:
    target = f"floor-{framework}"
    return FloorResult(
        framework=framework,
        command=f"python benchmarks/floor_relay.py --upstream URL --framework {framework}",
        cpus="on cores 0",
        startup_rss_mib=50.0,
        latency=[],
        memory=memory(per_stream_kib, target),
        disconnect=cancel(cancel_ms, target),
        direct_reused=False,
    )


def bench_report(floors: list[FloorResult]) -> Report:
    facts = Machine("cpu", 2, 4.0, "6.1", "3.11.9", {}, None, [], 0.0)
    return Report(
        profile=SHORT,
        started_at="2026-01-01T00:00:00Z",
        duration_s=1.0,
        machine=facts,
        pinning="none",
        gateway_startup_rss_mib=50.0,
        gateway_command="python -m trio_gateway gateway",
        memory=[memory(56.0, "gateway")],
        disconnect=[cancel(4.0, "gateway")],
        floors=floors,
    )


def test_stack_numbers_takes_memory_and_disconnect_without_streaming() -> None:
    numbers = stack_numbers([], memory(12.5), cancel(3.0))
    assert numbers == StackNumbers(per_stream_kib=12.5, cancel_p99_ms=3.0)


def stack(
    ttft: float | None, gap: float | None, cpu: float, rate: float, kib: float, cancel: float | None
) -> StackNumbers:
    """A stack's target numbers (idle RSS set too: the floor table leaves it out)."""
    return StackNumbers(
        ttft, gap, cpu, rate, idle_rss_mib=52.0, per_stream_kib=kib, cancel_p99_ms=cancel
    )


def test_floor_rows_split_the_gateway_cost_into_quart_trio_and_its_own_logic() -> None:
    gateway = stack(3.0, None, 200.0, 7000.0, 70.0, None)
    bare = stack(1.0, 0.5, 60.0, 8000.0, 20.0, None)
    quart = stack(1.5, 0.75, 90.0, 7500.0, 32.0, 2.0)
    rows = {
        row.name: (row.gateway, row.bare, row.quart, row.quart_minus_bare, row.gateway_minus_quart)
        for row in floor_rows(gateway, bare, quart)
    }
    assert rows == {
        "added TTFT p50, concurrency 1": (3.0, 1.0, 1.5, 0.5, 1.5),
        "added inter-token gap p99, concurrency 50": (None, 0.5, 0.75, 0.25, None),
        "gateway CPU per streamed token, concurrency 50": (200.0, 60.0, 90.0, 30.0, 110.0),
        "streamed tokens/s, concurrency 200": (7000.0, 8000.0, 7500.0, -500.0, -500.0),
        "RSS per open idle stream": (70.0, 20.0, 32.0, 12.0, 38.0),
        "disconnect to upstream cancel p99": (None, None, 2.0, None, None),
    }


def test_floor_targets_read_each_relay_by_its_framework() -> None:
    report = bench_report([relay_result("bare", 33.0, 2.0), relay_result("quart", 45.0, 2.5)])
    rows = {row.name: row for row in floor_targets(report)}
    per_stream = rows["RSS per open idle stream"]
    assert (per_stream.gateway, per_stream.bare, per_stream.quart) == (56.0, 33.0, 45.0)
    assert (per_stream.quart_minus_bare, per_stream.gateway_minus_quart) == (12.0, 11.0)
    cancelled = rows["disconnect to upstream cancel p99"]
    assert (cancelled.gateway, cancelled.bare, cancelled.quart) == (4.0, 2.0, 2.5)


def test_floor_targets_leave_the_quart_columns_empty_without_its_run() -> None:
    rows = floor_targets(bench_report([relay_result("bare", 33.0, 2.0)]))
    per_stream = next(row for row in rows if row.name == "RSS per open idle stream")
    assert (per_stream.bare, per_stream.quart, per_stream.quart_minus_bare) == (33.0, None, None)
    assert per_stream.gateway_minus_quart is None
    assert floor_targets(bench_report([])) == []


def test_markdown_floor_section_has_the_layer_table_and_each_relays_tables() -> None:
    report = bench_report([relay_result("bare", 33.0, 2.0), relay_result("quart", 45.0, 2.5)])
    text = markdown(report)
    section = text[text.index("## Stack floor") :]
    assert "| gateway | bare relay | quart relay | quart minus bare" in section
    assert "| RSS per open idle stream | <= 40 KiB | 56.0 KiB | 33.0 KiB | 45.0 KiB | " in section
    assert "+12.0 KiB | +11.0 KiB |" in section
    for name in ("bare relay", "quart relay"):
        assert f"Streaming through the {name}" in section
        assert f"| {name} | 50.0 |" in section  # its idle-stream memory table
        assert f"--framework {name.split()[0]}" in section
