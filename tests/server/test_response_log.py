"""The event log of a stored run: batched writes (never one per event), the bound, readers
that follow it live, and the last write when its owner is cancelled."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio

from trio_gateway.errors import EventLogFullError
from trio_gateway.server.response_log import LiveLog, LogSettings
from trio_gateway.sessions import MemorySessionStore
from trio_gateway.sessions.store import LoggedEvent, StoredResponse


class CountingStore(MemorySessionStore):
    """The memory store, counting its ``save_response`` writes and their batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def save_response(
        self, response: StoredResponse, events: Sequence[LoggedEvent] = ()
    ) -> None:
        self.batches.append(len(events))
        await super().save_response(response, events)


def settings(**changes: float) -> LogSettings:
    values: dict[str, float] = {
        "retention_seconds": 600,
        "max_events": 100_000,
        "max_bytes": 1 << 24,
        "flush_seconds": 0.25,
        "flush_events": 100,
        "poll_seconds": 0.25,
        "keep_alive_seconds": 15,
        **changes,
    }
    return LogSettings(
        retention_seconds=values["retention_seconds"],
        max_events=int(values["max_events"]),
        max_bytes=int(values["max_bytes"]),
        flush_seconds=values["flush_seconds"],
        flush_events=int(values["flush_events"]),
        poll_seconds=values["poll_seconds"],
        keep_alive_seconds=values["keep_alive_seconds"],
    )


def record() -> StoredResponse:
    return StoredResponse(
        id="resp_1",
        kind="response",
        agent_id="main",
        run_id="chatcmpl-1",
        status="in_progress",
        instance_id="here",
        created_at=0.0,
        body=b"{}",
    )


async def test_live_log_writes_one_batch_per_flush_events_not_one_per_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = CountingStore()
    log = LiveLog(record(), store, settings(flush_events=100, flush_seconds=60))
    async with log.running():
        for number in range(1000):
            log.add(number, b"e%d" % number)
            if number % 10 == 9:
                await trio.sleep(0.001)  # the run yields now and then, as a real one does
        log.end(status="completed", body=b'{"done":1}')
    assert sum(store.batches) == 1000
    assert len(store.batches) <= 1000 // 100 + 1
    assert log.writes == len(store.batches)
    stored = await store.response_events("resp_1", after=-1, limit=2000)
    assert [event.sequence for event in stored] == list(range(1000))
    final = await store.get_response("resp_1")
    assert final is not None
    assert (final.status, final.body, final.event_count) == ("completed", b'{"done":1}', 1000)
    assert final.expires_at is not None


async def test_live_log_flushes_a_partial_batch_after_flush_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = CountingStore()
    log = LiveLog(record(), store, settings(flush_events=100, flush_seconds=0.25))
    async with log.running():
        for number in range(3):
            log.add(number, b"x")
        await trio.sleep(0.2)
        assert store.batches == []
        await trio.sleep(0.1)
        assert store.batches == [3]
        log.end(status="completed")
    assert store.batches == [3, 0]


async def test_live_log_refuses_events_past_its_bound() -> None:
    log = LiveLog(record(), CountingStore(), settings(max_events=3))
    for number in range(3):
        log.check_room()
        log.add(number, b"x")
    with pytest.raises(EventLogFullError):
        log.check_room()
    assert log.record.events_truncated


async def test_live_log_readers_follow_live_events_from_any_point() -> None:
    log = LiveLog(record(), CountingStore(), settings())
    got: list[bytes] = []

    async def read() -> None:
        async for chunk in log.follow(0):
            got.append(chunk)

    async with trio.open_nursery() as nursery:
        log.add(0, b"a")
        log.add(1, b"b")
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        log.add(2, b"c")
        await trio.testing.wait_all_tasks_blocked()
        log.end(status="completed")
    assert b"".join(got) == b"bc"


async def test_live_log_is_stored_as_failed_when_its_owner_is_cancelled() -> None:
    store = CountingStore()
    log = LiveLog(record(), store, settings())
    with trio.move_on_after(0.01):
        async with log.running():
            log.add(0, b"x")
            await trio.sleep_forever()
    final = await store.get_response("resp_1")
    assert final is not None
    assert final.status == "failed"
    assert await store.response_events("resp_1", after=-1, limit=10) == [LoggedEvent(0, b"x")]
    assert log.stored.is_set()


async def test_live_log_readers_get_a_keep_alive_while_the_run_is_silent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = LiveLog(record(), CountingStore(), settings(keep_alive_seconds=15))
    got: list[tuple[float, bytes]] = []

    async def read() -> None:
        async for chunk in log.follow(-1):
            got.append((trio.current_time(), chunk))

    async with trio.open_nursery() as nursery, log.running():
        nursery.start_soon(read)
        log.add(0, b"a")
        await trio.sleep(20)
        log.end(status="completed")
    assert [chunk for _, chunk in got] == [b"a", b""]
    assert 15 <= got[1][0] <= 20
