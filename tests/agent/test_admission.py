"""Admission: per-session lanes (FIFO, bounded wait) and the gateway-wide run cap."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_gateway.agent.admission import Admission, Ticket
from trio_gateway.errors import OverloadedError, SessionBusyError


async def test_admission_serializes_one_session_in_arrival_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    admission = Admission(max_concurrent=10, max_queued=10, lane_wait_seconds=100)
    order: list[str] = []

    async def run(name: str, delay: float) -> None:
        await trio.sleep(delay)
        with await admission.admit("s"):
            order.append(f"{name}+")
            await trio.sleep(1)
            order.append(f"{name}-")

    async with trio.open_nursery() as nursery:
        for index, name in enumerate("abc"):
            nursery.start_soon(run, name, index * 0.1)
    assert order == ["a+", "a-", "b+", "b-", "c+", "c-"]
    assert admission.statistics().busy_sessions == 0


async def test_admission_lets_different_sessions_run_together(
    autojump_clock: trio.abc.Clock,
) -> None:
    admission = Admission(max_concurrent=10, max_queued=10, lane_wait_seconds=100)
    start = trio.current_time()

    async def run(key: str) -> None:
        with await admission.admit(key):
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        for key in ("a", "b", "c"):
            nursery.start_soon(run, key)
    assert trio.current_time() - start == pytest.approx(1)


async def test_admission_busy_session_is_refused_after_the_wait(
    autojump_clock: trio.abc.Clock,
) -> None:
    admission = Admission(max_concurrent=10, max_queued=10, lane_wait_seconds=2.5)
    held = await admission.admit("s")
    start = trio.current_time()
    with pytest.raises(SessionBusyError) as caught:
        await admission.admit("s")
    assert trio.current_time() - start == pytest.approx(2.5)
    assert caught.value.http_status == 409
    assert caught.value.retry_after is not None
    held.release()
    # The refused waiter left the queue: the lane is free again.
    with await admission.admit("s"):
        pass
    assert admission.statistics().busy_sessions == 0


async def test_admission_cap_queues_then_refuses_at_once(autojump_clock: trio.abc.Clock) -> None:
    admission = Admission(max_concurrent=2, max_queued=1, lane_wait_seconds=0)
    first = await admission.admit("a")
    second = await admission.admit("b")
    queued: list[Ticket] = []

    async def wait_for_slot() -> None:
        queued.append(await admission.admit("c"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_slot)
        await trio.testing.wait_all_tasks_blocked()
        assert admission.statistics().queued == 1
        start = trio.current_time()
        with pytest.raises(OverloadedError) as caught:
            await admission.admit("d")
        assert trio.current_time() == start  # refused at once, without waiting
        assert caught.value.http_status == 429
        first.release()
    assert len(queued) == 1
    assert admission.statistics().running == 2
    second.release()
    queued[0].release()
    assert admission.statistics() == admission.statistics().__class__(0, 0, 0, 0)


async def test_admission_cancelled_waiter_leaves_the_queue(autojump_clock: trio.abc.Clock) -> None:
    admission = Admission(max_concurrent=1, max_queued=5, lane_wait_seconds=0)
    ticket = await admission.admit("a")
    with trio.move_on_after(1):
        await admission.admit("b")
    assert admission.statistics().queued == 0
    ticket.release()
    with await admission.admit("c"):
        assert admission.statistics().running == 1


async def test_admission_grant_racing_a_cancellation_is_passed_on() -> None:
    admission = Admission(max_concurrent=1, max_queued=5, lane_wait_seconds=0)
    ticket = await admission.admit("a")
    got: list[Ticket] = []

    async def waiter(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            got.append(await admission.admit("b"))

    async def second_waiter() -> None:
        got.append(await admission.admit("c"))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            scope = await nursery.start(waiter)
            nursery.start_soon(second_waiter)
            await trio.testing.wait_all_tasks_blocked()
            # "b" is cancelled, and before it gets to run and leave the queue, the slot is
            # released and granted to it: it must pass the slot on to "c".
            scope.cancel()
            ticket.release()
    assert [t._session_key for t in got] == ["c"]
    got[0].release()
    assert admission.statistics().running == 0


def test_admission_ticket_release_is_idempotent() -> None:
    async def main() -> None:
        admission = Admission(max_concurrent=1, max_queued=0, lane_wait_seconds=0)
        ticket = await admission.admit("a")
        ticket.release()
        ticket.release()
        assert admission.statistics().running == 0
        with await admission.admit("a"):
            assert admission.statistics().running == 1

    trio.run(main)


async def test_admission_resize_applies_the_new_lane_wait(autojump_clock: trio.abc.Clock) -> None:
    admission = Admission(max_concurrent=1, max_queued=1, lane_wait_seconds=10)
    held = await admission.admit("s")
    admission.resize(max_concurrent=1, max_queued=1, lane_wait_seconds=0.5)
    start = trio.current_time()
    with pytest.raises(SessionBusyError):
        await admission.admit("s")
    assert trio.current_time() - start == pytest.approx(0.5)
    held.release()
