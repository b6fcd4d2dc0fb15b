"""Admission: one run at a time per session, and a gateway-wide cap on concurrent runs.

Every run is admitted before it starts, in two steps:

1. its **session lane**: runs of one session key go one after the other, first come first
   served. A request waits for its turn at most ``lane_wait_seconds`` (the admission's own
   policy, from ``session.queueTimeoutSeconds``); then it is refused with
   :class:`~trio_gateway.errors.SessionBusyError` (409).
2. a **run slot**: at most ``agents.defaults.maxConcurrent`` runs at once. Beyond that, up to
   ``maxQueued`` requests wait in a FIFO queue; when the queue is full too, a request is refused
   at once with :class:`~trio_gateway.errors.OverloadedError` (429).

The session lane is taken first, so a request waiting for its session holds no run slot.
Admission returns a :class:`Ticket`; releasing it (idempotent, synchronous, from any task) hands
the lane and the slot to the next waiter. A waiter that is cancelled (its client went away)
leaves its queue, and a grant that raced with the cancellation is passed on, never lost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..errors import OverloadedError, SessionBusyError

__all__ = ["Admission", "AdmissionStatistics", "Ticket"]


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.granted = False


class _Gate:
    """A FIFO semaphore whose units can be released from any task."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        #: Made on the first wait: every request has a lane of its own, and an empty deque
        #: costs 760 bytes per open stream.
        self._waiters: deque[_Waiter] | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters) if self._waiters else 0

    def try_take(self) -> bool:
        if self.held < self.capacity and not self._waiters:
            self.held += 1
            return True
        return False

    async def wait_turn(self) -> None:
        """Queue up and wait for a unit. On cancellation nothing stays taken."""
        waiter = _Waiter()
        if self._waiters is None:
            self._waiters = deque()
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                self.release()  # granted as we were cancelled: pass it on
            else:
                assert self._waiters is not None
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.granted = True
            waiter.event.set()
            return  # the unit moves to the waiter: ``held`` stays the same
        self.held -= 1


@dataclass
class Ticket:
    """The right to run: a session lane and a run slot, released together."""

    _admission: Admission
    _session_key: str
    _released: bool = field(default=False)
    #: Whether the ticket holds the in-process session lane (not when the lane is the
    #: cluster's: see :meth:`Admission.admit`).
    _lane: bool = True
    #: Called once, after the lane and the slot are handed on (what else the run held).
    on_release: Callable[[], None] | None = None

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._admission._release(self._session_key if self._lane else None)
        if self.on_release is not None:
            self.on_release()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    running: int
    queued: int
    busy_sessions: int
    waiting_for_session: int


class Admission:
    def __init__(
        self,
        *,
        max_concurrent: int,
        max_queued: int,
        lane_wait_seconds: float,
        on_change: Callable[[Admission], None] | None = None,
    ) -> None:
        self._slots = _Gate(max_concurrent)
        self._max_queued = max_queued
        #: How long a request waits for its session's lane before it is refused (409).
        self._lane_wait_seconds = lane_wait_seconds
        self._lanes: dict[str, _Gate] = {}
        #: Called (synchronously) when the queues change: exports their depth.
        self._on_change = on_change or (lambda admission: None)

    def resize(self, *, max_concurrent: int, max_queued: int, lane_wait_seconds: float) -> None:
        """New limits, for new admissions (a config reload); runs already admitted stay."""
        self._slots.capacity = max_concurrent
        self._max_queued = max_queued
        self._lane_wait_seconds = lane_wait_seconds
        while self._slots.waiting and self._slots.held < max_concurrent:
            self._slots.held += 1
            self._slots.release()  # hands the new unit to the first waiter

    async def admit(self, session_key: str, *, lane: bool = True) -> Ticket:
        """Wait for the session's lane, then for a run slot; see the module docstring.

        The wait for the lane is bounded by the admission's policy (a 409 when it passes);
        the wait for a slot only by the queue's length (a 429 when it is full) and by the
        caller, who may bound the whole call with ``trio.fail_after``. ``lane=False``: a run
        slot only (the session's lane is held elsewhere: the cluster's, shared by every
        instance, which a second, in-process queue would only put out of order)."""
        try:
            if not lane:
                await self._take_slot()
                return Ticket(self, session_key, _lane=False)
            return await self._admit(session_key)
        finally:
            self._on_change(self)

    async def _take_slot(self) -> None:
        if not self._slots.try_take():
            if self._slots.waiting >= self._max_queued:
                raise OverloadedError(
                    "The gateway is at its limit of concurrent runs and its queue is full; "
                    "retry shortly.",
                    retry_after=1,
                )
            self._on_change(self)
            await self._slots.wait_turn()

    async def _admit(self, session_key: str) -> Ticket:
        lane = self._lanes.get(session_key)
        if lane is None:
            lane = self._lanes[session_key] = _Gate(1)
        if not lane.try_take():
            self._on_change(self)
            try:
                with trio.move_on_after(self._lane_wait_seconds):
                    await lane.wait_turn()
                    lane = None  # now held
            except BaseException:
                self._drop_idle_lane(session_key)
                raise
            if lane is not None:
                self._drop_idle_lane(session_key)
                raise SessionBusyError(
                    "Another run of this session is still in progress; retry when it is done.",
                    retry_after=1,
                )
        try:
            await self._take_slot()
        except BaseException:
            self._release_lane(session_key)
            raise
        return Ticket(self, session_key)

    def _release(self, session_key: str | None) -> None:
        self._slots.release()
        if session_key is not None:
            self._release_lane(session_key)
        self._on_change(self)

    def _release_lane(self, session_key: str) -> None:
        self._lanes[session_key].release()
        self._drop_idle_lane(session_key)

    def _drop_idle_lane(self, session_key: str) -> None:
        lane = self._lanes.get(session_key)
        if lane is not None and lane.held == 0 and not lane.waiting:
            del self._lanes[session_key]

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(
            running=self._slots.held,
            queued=self._slots.waiting,
            busy_sessions=len(self._lanes),
            waiting_for_session=sum(lane.waiting for lane in self._lanes.values()),
        )
