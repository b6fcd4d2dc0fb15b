"""The keep-alive clock that serves every open stream of an app (the end-to-end keep-alive
tests are in tests/e2e/test_streaming.py)."""

from __future__ import annotations

import logging
from typing import cast

import pytest
import trio

from trio_gateway.server.streaming import ChatStreamBody, KeepAliveClock

BOUND = 5.0


class FakeStream:
    """What the clock uses of a stream: its interval and its visit."""

    def __init__(self, keep_alive_seconds: float, *, broken: bool = False) -> None:
        self.keep_alive_seconds = keep_alive_seconds
        self.visits = 0
        self.broken = broken

    def tick_if_silent(self, now: float) -> None:
        self.visits += 1
        if self.broken:
            raise RuntimeError("a bug in one stream")


def as_stream(fake: FakeStream) -> ChatStreamBody:
    return cast(ChatStreamBody, fake)


async def test_the_clock_visits_streams_ends_on_stop_and_survives_a_broken_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = KeepAliveClock()
    good, broken = FakeStream(0.04), FakeStream(0.04, broken=True)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(clock.run)
            ran = clock.running
            clock.register(as_stream(good))
            clock.register(as_stream(broken))
            while good.visits < 5:
                await trio.sleep(0.01)
            clock.stop()
    assert ran
    assert not clock.running
    assert broken.visits == 1  # dropped after its failure; the good one went on
    assert "stream.keep_alive.failed" in caplog.text


async def test_an_idle_clock_sleeps_until_a_stream_comes() -> None:
    clock = KeepAliveClock()
    stream = FakeStream(0.04)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(clock.run)
            await trio.sleep(0.1)  # nothing registered: nothing visited, nothing spinning
            clock.register(as_stream(stream))
            while stream.visits < 2:
                await trio.sleep(0.01)
            clock.unregister(as_stream(stream))
            visits = stream.visits
            await trio.sleep(0.1)
            assert stream.visits == visits
            clock.stop()


def test_a_stream_without_a_running_clock_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = KeepAliveClock()
    with caplog.at_level(logging.WARNING):
        clock.register(as_stream(FakeStream(1.0)))
        clock.register(as_stream(FakeStream(1.0)))
    assert caplog.text.count("stream.keep_alive.unavailable") == 1
