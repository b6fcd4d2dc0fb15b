"""A client that goes away cancels its agent run: streaming or not, through trio cancellation.

Each test asserts what happened to the provider's call (``outcome == "cancelled"``), not just
that the response ended.
"""

from __future__ import annotations

import socket

import httpx
import openai
import trio
from gateway_harness import TOKEN, RunningGateway, start_gateway
from prometheus_client import REGISTRY

from benchmarks.scripted_provider import Hang, Say, ScriptedProvider

BOUND = 5  # seconds: a generous upper bound; the benchmarks measure the real latency
MESSAGES = [{"role": "user", "content": "hi"}]


def _cancelled_runs(reason: str) -> float:
    """``epiloop_cancelled_runs_total`` for ``reason`` (metrics are per process: compare)."""
    return REGISTRY.get_sample_value("epiloop_cancelled_runs_total", {"reason": reason}) or 0.0


def _disconnect_cancelled_runs() -> float:
    return REGISTRY.get_sample_value("epiloop_disconnect_cancelled_runs_total") or 0.0


async def _wait_until_counted(reason: str, before: float) -> None:
    """Until a run cancelled for ``reason`` is counted (the count follows the call's end)."""
    with trio.fail_after(BOUND):
        while _cancelled_runs(reason) == before:
            await trio.sleep(0.01)


async def test_disconnect_during_stream_cancels_the_run(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("first"), Hang()])
    gateway = await start_gateway(nursery, providers={"local": provider})
    disconnects, stalls = _cancelled_runs("client_disconnect"), _cancelled_runs("stall")
    legacy = _disconnect_cancelled_runs()
    async with (
        httpx.AsyncClient() as client,
        client.stream(
            "POST",
            f"{gateway.api_url}/chat/completions",
            json={"stream": True, "messages": MESSAGES},
            headers=gateway.headers,
        ) as response,
    ):
        async for line in response.aiter_lines():
            if '"content":"first"' in line:
                break
    # Leaving the block closed the connection mid-stream.
    with trio.fail_after(BOUND):
        await provider.call_ended.wait()
    assert provider.calls[0].outcome == "cancelled"
    await _wait_until_counted("client_disconnect", disconnects)
    assert _cancelled_runs("client_disconnect") == disconnects + 1
    assert _disconnect_cancelled_runs() == legacy + 1
    assert _cancelled_runs("stall") == stalls


async def test_sdk_stream_close_cancels_the_run(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("a"), Say("b"), Hang()])
    gateway = await start_gateway(nursery, providers={"local": provider})
    async with openai.AsyncOpenAI(base_url=gateway.api_url, api_key=TOKEN, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="epiloop", messages=[{"role": "user", "content": "x"}], stream=True
        )
        received = ""
        async for chunk in stream:  # queued deltas may arrive coalesced ("ab")
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
            if "b" in received:
                break
        await stream.close()
    with trio.fail_after(BOUND):
        await provider.call_ended.wait()
    assert provider.calls[0].outcome == "cancelled"


async def test_disconnect_while_waiting_for_a_non_streaming_answer_cancels_the_run(
    nursery: trio.Nursery,
) -> None:
    provider = ScriptedProvider([Hang()])
    gateway = await start_gateway(nursery, providers={"local": provider})
    async with httpx.AsyncClient() as client, trio.open_nursery() as requests:
        requests.start_soon(
            lambda: client.post(
                f"{gateway.api_url}/chat/completions",
                json={"messages": MESSAGES},
                headers=gateway.headers,
            )
        )
        with trio.fail_after(BOUND):
            await provider.call_started.wait()
        requests.cancel_scope.cancel()  # the client gives up and closes its connection
    with trio.fail_after(BOUND):
        await provider.call_ended.wait()
    assert provider.calls[0].outcome == "cancelled"


async def test_cancelled_run_of_a_stable_session_is_recorded_as_aborted(
    nursery: trio.Nursery,
) -> None:
    provider = ScriptedProvider([Say("half an "), Say("answer"), Hang()])
    gateway = await start_gateway(nursery, providers={"local": provider})
    headers = {**gateway.headers, "x-epiloop-session-key": "desk-42"}
    async with (
        httpx.AsyncClient() as client,
        client.stream(
            "POST",
            f"{gateway.api_url}/chat/completions",
            json={"stream": True, "messages": [{"role": "user", "content": "question"}]},
            headers=headers,
        ) as response,
    ):
        async for line in response.aiter_lines():
            if "answer" in line:  # alone or coalesced with "half an "
                break
    with trio.fail_after(BOUND):
        await provider.call_ended.wait()
        session = await gateway.runtime.sessions.get("desk-42")
        while session is None or session.last_status == "completed":
            await trio.sleep(0.01)
            session = await gateway.runtime.sessions.get("desk-42")
    assert session.last_status == "aborted"
    assert [(e.role, e.content, e.status) for e in session.transcript] == [
        ("user", "question", "completed"),
        ("assistant", "half an answer", "aborted"),
    ]


async def test_slow_reader_applies_backpressure_to_the_run(nursery: trio.Nursery) -> None:
    """A client that stops reading makes the run wait on the bounded channel."""
    piece = "x" * 4096
    total = 20_000  # 80 MB if nothing pushed back
    provider = ScriptedProvider([Say(piece)] * total + [Hang()])
    gateway = await start_gateway(
        nursery,
        {"gateway": {"http": {"streamBufferEvents": 4}}},
        providers={"local": provider},
    )
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    body = b'{"stream": true, "messages": [{"role": "user", "content": "x"}]}'
    request = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        await stream.receive_some(1024)  # the headers arrived; now stop reading
        with trio.fail_after(BOUND * 2):
            await provider.call_started.wait()
            settled = -1
            while settled != len(provider.calls[0].emitted):
                settled = len(provider.calls[0].emitted)
                await trio.sleep(0.3)
        assert settled < total // 2
    # Closing the connection ends the stalled run too.
    with trio.fail_after(BOUND):
        await provider.call_ended.wait()
    assert provider.calls[0].outcome == "cancelled"


async def test_client_that_stops_reading_frees_the_run_after_the_stall_deadline(
    nursery: trio.Nursery,
) -> None:
    """hypercorn would hold a non-reading client's send forever: the stall deadline frees the
    run, its session lane and its run slot while the connection is still open."""
    provider = ScriptedProvider([Say("x" * 4096)] * 20_000 + [Hang()])
    gateway = await start_gateway(
        nursery,
        {"gateway": {"http": {"streamBufferEvents": 4, "streamStallSeconds": 0.3}}},
        providers={"local": provider},
    )
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    body = b'{"stream": true, "messages": [{"role": "user", "content": "x"}]}'
    request = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-epiloop-session-key: stalled\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    stalls, legacy = _cancelled_runs("stall"), _disconnect_cancelled_runs()
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        await stream.receive_some(1024)  # the headers arrived; now stop reading
        with trio.fail_after(BOUND * 2):
            await provider.call_ended.wait()
        assert provider.calls[0].outcome == "cancelled"
        await _wait_until_counted("stall", stalls)
        assert _disconnect_cancelled_runs() == legacy  # a stall is not a disconnect
        with trio.fail_after(BOUND):  # the run records its turn, then lets go of its ticket
            while gateway.runtime.admission.statistics().running:
                await trio.sleep(0.01)
        assert gateway.runtime.admission.statistics().busy_sessions == 0
        session = await gateway.runtime.sessions.get("stalled")
        assert session is not None
        assert session.last_status == "aborted"


async def _open_non_reading_client(gateway: RunningGateway, session_key: str) -> trio.SocketStream:
    """A streaming request from a client with a small receive buffer that, once the response
    headers arrived, never reads again: its TCP window fills and the gateway's writes block."""
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    body = b'{"stream": true, "messages": [{"role": "user", "content": "x"}]}'
    await stream.send_all(
        (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"x-epiloop-session-key: {session_key}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    await stream.receive_some(1024)
    return stream


async def _wait_until_blocked(provider: ScriptedProvider) -> None:
    """Until the run stops emitting: the channel is full and the writer is stuck in a send."""
    await provider.call_started.wait()
    settled = -1
    while settled != len(provider.calls[0].emitted):
        settled = len(provider.calls[0].emitted)
        await trio.sleep(0.3)


async def test_client_that_stops_reading_frees_its_in_flight_slot_after_the_stall_deadline(
    nursery: trio.Nursery,
) -> None:
    """Freeing the run is not enough: the write to the client is bounded too, so the request
    ends and its gateway.http.maxInFlight slot is free while the client still holds the
    connection open."""
    provider = ScriptedProvider([Say("x" * 4096)] * 20_000 + [Hang()])
    gateway = await start_gateway(
        nursery,
        {
            "gateway": {
                "http": {"streamBufferEvents": 4, "streamStallSeconds": 0.3, "maxInFlight": 1}
            }
        },
        providers={"local": provider},
    )
    stream = await _open_non_reading_client(gateway, "stalled")
    async with stream, httpx.AsyncClient() as client:
        with trio.fail_after(BOUND * 2):
            await provider.call_ended.wait()
        status = None
        with trio.move_on_after(BOUND):
            while (status := (await client.get(f"{gateway.url}/healthz")).status_code) != 200:
                await trio.sleep(0.05)
        assert status == 200  # 503 while the stuck request held the only slot


async def test_shutdown_ends_within_the_grace_period_despite_a_client_that_stopped_reading(
    nursery: trio.Nursery,
) -> None:
    """With a stall deadline far away, the drain deadline alone cuts the blocked write: the
    server returns once gateway.shutdownGraceSeconds have passed."""
    provider = ScriptedProvider([Say("x" * 4096)] * 20_000 + [Hang()])
    stop = trio.Event()
    gateway = await start_gateway(
        nursery,
        {
            "gateway": {
                "shutdownGraceSeconds": 0.5,
                "http": {"streamBufferEvents": 4, "streamStallSeconds": 3600},
            }
        },
        providers={"local": provider},
        shutdown_trigger=stop.wait,
    )
    shutdowns, legacy = _cancelled_runs("shutdown"), _disconnect_cancelled_runs()
    stream = await _open_non_reading_client(gateway, "shutdown")
    async with stream:
        with trio.fail_after(BOUND * 2):
            await _wait_until_blocked(provider)
        stop.set()
        # Bounded without raising: on failure the client must still close, to free the server.
        with trio.move_on_after(BOUND):
            await gateway.stopped.wait()
        assert gateway.stopped.is_set()
    assert _cancelled_runs("shutdown") == shutdowns + 1
    assert _disconnect_cancelled_runs() == legacy
