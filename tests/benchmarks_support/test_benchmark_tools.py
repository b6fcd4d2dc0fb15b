"""Tests of the benchmark tooling itself: ``python -m pytest benchmarks``.

The sans-IO parts (response parser, percentiles, the py-spy grouping) without an event loop;
the load generator against the mock upstream served in the test's nursery on 127.0.0.1.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import trio

from benchmarks.http_client import ProtocolError, ResponseParser
from benchmarks.loadgen import LoadClient, LoadSpec, Target, open_streams, run_load
from benchmarks.mock_upstream import MockUpstream, Scenario
from benchmarks.profiling import PARTIAL, TRIO_LOOP, breakdown, layer_of
from benchmarks.summary import percentile, percentiles

BOUND = 10.0

CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    b"a\r\ndata: a~\n\n\r\n"
    b"e\r\ndata: [DONE]\n\n\r\n"
    b"0\r\n\r\n"
)


def test_response_parser_reads_chunked_body_split_anywhere() -> None:
    for split in range(1, len(CHUNKED)):
        parser = ResponseParser()
        body = parser.feed(CHUNKED[:split]) + parser.feed(CHUNKED[split:])
        assert body == b"data: a~\n\ndata: [DONE]\n\n"
        assert parser.complete
        assert parser.keep_alive
        assert parser.status == 200


def test_response_parser_reads_content_length_body_byte_by_byte() -> None:
    data = b"HTTP/1.1 429 Too Many\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    parser = ResponseParser()
    body = b"".join(parser.feed(data[i : i + 1]) for i in range(len(data)))
    assert body == b"hello"
    assert parser.status == 429
    assert parser.complete
    assert not parser.keep_alive


def test_response_parser_rejects_early_eof() -> None:
    parser = ResponseParser()
    parser.feed(CHUNKED[:-10])
    with pytest.raises(ProtocolError):
        parser.feed_eof()


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))
    summary = percentiles([0.001, 0.002, 0.003])
    assert summary is not None
    assert summary.p50 == pytest.approx(2.0)
    assert summary.max == pytest.approx(3.0)


def test_profiling_charges_neutral_frames_to_their_caller() -> None:
    root = ";".join(
        [
            "<module> (trio_gateway/__main__.py:5)",
            "gateway (trio_gateway/cli/gateway.py:1)",
            "run (trio/_core/_run.py:1)",
        ]
    )
    h11 = "next_event (h11/_connection.py:1)"
    server = f"{root};H11Protocol.handle (hypercorn/protocol/h11.py:1);{h11} 3"
    client = f"{root};AsyncHTTP11Connection._receive_event (httpcore/_async/http11.py:1);{h11} 1"
    loop = f"{root};EpollIOManager.get_events (trio/_core/_io_epoll.py:1) 4"
    partial = "_SocketType._nonblocking_helper (trio/_socket.py:1) 2"
    result = breakdown("\n".join([server, client, loop, partial]))
    shares = {layer.layer: layer.samples for layer in result.layers}
    assert shares == {
        TRIO_LOOP: 4,
        PARTIAL: 2,
        "hypercorn (+ h11 server side)": 3,
        "httpx / httpcore (+ h11 client side)": 1,
    }
    assert layer_of("feed (trio_gateway/wire/sse.py:50)") is not None
    assert layer_of("encode_data (/x/trio_gateway/wire/sse.py:21)") == "gateway: wire encoding"


async def test_load_client_streams_and_disconnects_against_the_mock(
    nursery: trio.Nursery,
) -> None:
    upstream = MockUpstream({"default": Scenario(tokens=[" tok~"] * 5)})
    url = await nursery.start(upstream.serve)
    target = Target("direct", "127.0.0.1", int(url.rsplit(":", 1)[1]), "bench")
    client = LoadClient(target)
    try:
        with trio.fail_after(BOUND):
            whole = await run_load(client, LoadSpec(concurrency=3, requests=6, max_seconds=BOUND))
            cut = await run_load(
                client,
                LoadSpec(
                    concurrency=2,
                    requests=2,
                    max_seconds=BOUND,
                    disconnect_after_tokens=2,
                    keep_alive=False,
                ),
            )
            plain = await run_load(
                client, LoadSpec(concurrency=1, requests=2, max_seconds=BOUND, stream=False)
            )
    finally:
        client.close()
    assert [(r.error, r.tokens, len(r.gaps)) for r in whole.results] == [(None, 5, 4)] * 6
    assert all(r.ttft_seconds is not None for r in whole.results)
    assert [(r.tokens >= 2, r.disconnected_at is not None) for r in cut.results] == [
        (True, True)
    ] * 2
    assert [(r.error, r.tokens) for r in plain.results] == [(None, 5)] * 2
    # Keep-alive: the six streamed requests used at most three connections (+2 + 1 after).
    assert upstream.total_connections <= 3 + 2 + 1


async def test_open_streams_holds_streams_until_the_block_exits(nursery: trio.Nursery) -> None:
    upstream = MockUpstream({"default": Scenario(tokens=[" tok~"], first_token_delay=3600.0)})
    url = await nursery.start(upstream.serve)
    target = Target("direct", "127.0.0.1", int(url.rsplit(":", 1)[1]), "bench")
    with trio.fail_after(BOUND):
        async with open_streams(target, 4, opening_at_once=2) as streams:
            await streams.settled.wait()
            assert (streams.ready, streams.failed, upstream.open_connections) == (4, 0, 4)
        while upstream.open_connections:
            await trio.sleep(0.01)
    assert all(r.status == 200 and r.disconnected_at is not None for r in streams.results)


async def test_open_streams_settles_on_an_answer_without_a_body(nursery: trio.Nursery) -> None:
    """A head with an empty body on a connection the server keeps open: the stream fails with
    its status instead of waiting for body bytes that never come."""

    async def answer_empty(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, answer_empty, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    target = Target("empty", "127.0.0.1", port, "bench")
    with trio.fail_after(BOUND):
        async with open_streams(target, 2) as streams:
            await streams.settled.wait()
    assert (streams.ready, streams.failed) == (0, 2)
    assert [r.error for r in streams.results] == ["HTTP 404"] * 2
