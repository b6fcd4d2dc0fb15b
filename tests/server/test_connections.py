"""Writes to a client with deadlines, over a real socket pair (the clock jumps while they wait)."""

from __future__ import annotations

import socket

import pytest
import trio

from trio_gateway.server.connections import BoundedStream, WriteLimits

CHUNK = b"x" * 16384


async def _pair(limits: WriteLimits) -> tuple[BoundedStream, trio.SocketStream]:
    """A bounded server end and a client end with a small receive buffer."""
    server, client = trio.socket.socketpair()
    for sock in (server, client):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return BoundedStream(trio.SocketStream(server), limits), trio.SocketStream(client)


async def _fill(stream: BoundedStream) -> None:
    """Write until the peer, which never reads, stops the writes."""
    while True:
        await stream.send_all(CHUNK)


async def test_bounded_stream_ends_a_write_the_peer_never_reads_at_the_stall_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    stream, peer = await _pair(WriteLimits(stall_seconds=5))
    async with peer:
        started = trio.current_time()
        with trio.fail_after(60), pytest.raises(trio.BrokenResourceError):
            await _fill(stream)
        assert trio.current_time() - started >= 5
        with pytest.raises(trio.ClosedResourceError):  # the connection is closed
            await stream.receive_some()


async def test_bounded_stream_drain_deadline_ends_a_write_under_way(
    autojump_clock: trio.abc.Clock,
) -> None:
    limits = WriteLimits(stall_seconds=3600)
    stream, peer = await _pair(limits)
    outcome: list[str] = []

    async def write() -> None:
        try:
            await _fill(stream)
        except trio.BrokenResourceError:
            outcome.append("ended")

    async with peer, trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.sleep(10)  # the write is blocked by now
        assert outcome == []
        limits.drain_by(trio.current_time() + 2)
        with trio.fail_after(3):
            while not outcome:
                await trio.sleep(0.1)
    assert outcome == ["ended"]


async def test_bounded_stream_does_not_cut_a_slow_steady_reader(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The stall deadline starts again whenever the client takes some bytes: a large write to
    a reader that keeps reading lasts many stall periods and still completes."""
    stream, peer = await _pair(WriteLimits(stall_seconds=1))
    data = b"y" * (256 * 1024)
    received = bytearray()

    async def read_slowly() -> None:
        while len(received) < len(data):
            received.extend(await peer.receive_some(16384))
            await trio.sleep(0.25)

    async with peer, stream, trio.open_nursery() as nursery:
        nursery.start_soon(read_slowly)
        started = trio.current_time()
        await stream.send_all(data)
    assert bytes(received) == data
    assert trio.current_time() - started > 3  # several stall periods in all
