"""This instance as a member of the cluster: its lease, its listener, its runs' admission.

Owns, for one gateway process sharing a PostgreSQL database with others:

- the instance's heartbeat (:func:`~trio_gateway.pg.instances.serve_heartbeat`), on which ride,
  once per beat whatever the number of runs and in a task of their own that never delays a
  renewal, the batched progress update and the durable abort check
  (:func:`~.registry.abort_check`) and the sweep of what expired instances left (a deeper one,
  of long-expired instances and unused lanes, every :data:`DEEP_SWEEP_BEATS` beats);
- the listener (:mod:`.listener`) and what its notifications wake: the runs waiting for a
  session's lane, for a run slot, for another instance's run to finish, and the aborts of this
  instance's runs; after a reconnection every waiter looks again and the aborts are re-read;
- admission across instances (:meth:`ClusterNode.acquire`): a run registers and is moved on in
  one statement (idempotent, so retried when its connection was lost), then waits, woken by a
  notification or, if one was lost, by a poll every :func:`poll_seconds`, with the same 409
  (lane wait past ``session.queueTimeoutSeconds``) and 429 (cluster queue full) as the
  in-process admission;
- the end of runs (:meth:`ClusterNode.release`, synchronous, from any task): queued and written
  in batches by one task (:meth:`ClusterNode._serve_releases`), off the hot path; the queue
  holds at most one entry per admitted run, so it is bounded by the admission's own limits;
- a clean exit (:meth:`ClusterNode.close`): pending releases written, the instance's rows
  deleted and its lanes released at once.

It knows runs only by id: the runtime gives it how to read progress and how to abort a local
run (callbacks). Imports ``pg``, ``errors`` and its own modules; never the agent or the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import trio

from ..errors import (
    OverloadedError,
    RunAbortedError,
    SessionBusyError,
    SessionStoreError,
)
from ..pg.database import Database
from ..pg.instances import serve_heartbeat
from . import lanes, registry
from .lanes import Entry, Finished, Grant, Step
from .listener import ListenerState, serve_listener

__all__ = ["ClusterNode", "ClusterSettings", "poll_seconds"]

logger = logging.getLogger(__name__)

#: How long a cancelled waiter may take to leave its queue (shielded), and a clean exit.
LEAVE_BOUND_SECONDS = 2.0
CLOSE_BOUND_SECONDS = 5.0
#: The most finished runs written in one statement.
RELEASE_BATCH = 500
#: The delay before writing releases again after the database failed, first and longest.
RELEASE_RETRY_SECONDS = (0.1, 5.0)
#: The rows of an instance expired for this many leases are swept (it registers again if it
#: comes back), and so are the free lanes of sessions that do not exist, by a deeper sweep
#: that each instance runs every this many beats (its first beat included).
INSTANCE_GRACE_LEASES = 10
DEEP_SWEEP_BEATS = 30


def poll_seconds(lease_seconds: float) -> float:
    """How often a waiter looks again without a notification: a lost notification (or an
    expired holder, which sends none) delays a waiter by at most this much."""
    return max(0.05, min(1.0, lease_seconds / 4))


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    instance_id: str
    lease_seconds: float
    version: str
    #: ``agents.defaults.clusterMaxConcurrent``: running runs of every live instance; ``None``:
    #: no cluster-wide cap.
    cap: int | None
    #: Runs of this instance that may wait for a cluster slot (``agents.defaults.maxQueued``).
    max_queued: int
    #: How long a run waits for its session's lane before a 409 (``queueTimeoutSeconds``).
    lane_wait_seconds: float
    #: Finished results kept for agent.wait: for how long, and how many (cluster-wide).
    keep_seconds: float
    max_results: int


class ClusterNode:
    """This instance's part in the cluster; see the module docstring. Runs its services with
    :meth:`serve` (in the runtime's nursery) and ends with :meth:`close`."""

    def __init__(
        self,
        db: Database,
        settings: ClusterSettings,
        *,
        progress: Callable[[], Mapping[str, int]],
        abort_local: Callable[[str, str], bool],
    ) -> None:
        self.db = db
        self.settings = settings
        self._progress = progress
        self._abort_local = abort_local
        self._listener = ListenerState()
        #: Waiters by what wakes them: a session's lane, a run slot, a run's end.
        self._lane_events: dict[str, trio.Event] = {}
        self._slot_event = trio.Event()
        self._done_events: dict[str, trio.Event] = {}
        self._slot_waiters = 0
        #: Runs that ended, to be written by the release task.
        self._pending: list[Finished] = []
        self._pending_changed = trio.Event()
        self._last_beat = trio.current_time()
        self._sweeps = 0

    @property
    def instance_id(self) -> str:
        return self.settings.instance_id

    def resize(self, *, cap: int | None, max_queued: int, lane_wait_seconds: float) -> None:
        """New limits from a config reload, for new admissions."""
        s = self.settings
        self.settings = ClusterSettings(
            s.instance_id,
            s.lease_seconds,
            s.version,
            cap,
            max_queued,
            lane_wait_seconds,
            s.keep_seconds,
            s.max_results,
        )

    # -- services ----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register this instance, listen, and write releases, until cancelled."""
        s = self.settings
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    serve_heartbeat,
                    self.db,
                    s.instance_id,
                    s.lease_seconds,
                    s.version,
                    on_renewed=self._on_renewed,
                    on_beat=self._on_beat,
                )
            )
            self._last_beat = trio.current_time()
            await nursery.start(
                serve_listener,
                self.db.dsn,
                registry.CHANNELS,
                self._on_notify,
                self._on_reconnect,
                self._listener,
            )
            nursery.start_soon(self._serve_releases)
            logger.info("cluster.joined instance=%s", s.instance_id)
            task_status.started()

    async def close(self) -> None:
        """A clean exit (after :meth:`serve` was cancelled): write the pending releases, then
        leave: this instance's rows go and its lanes are free at once. Shielded, bounded."""
        with trio.move_on_after(CLOSE_BOUND_SECONDS, shield=True) as scope:
            try:
                if self._pending:
                    await self._write_releases()
                await self.db.run(
                    partial(registry.leave, instance_id=self.instance_id), cancellable=False
                )
            except SessionStoreError as exc:
                logger.warning("cluster.leave.failed instance=%s reason=%s", self.instance_id, exc)
                return
        if scope.cancelled_caught:
            logger.warning("cluster.leave.slow seconds=%s", CLOSE_BOUND_SECONDS)
            return
        logger.info("cluster.left instance=%s", self.instance_id)

    def health(self) -> str | None:
        """``None`` while the lease is renewed and the listener connected; else what fails."""
        if not self._listener.connected:
            return "the cluster listener is not connected to PostgreSQL"
        late = trio.current_time() - self._last_beat
        if late > self.settings.lease_seconds * 2 / 3:
            return f"the instance's heartbeat is {late:.1f} s late"
        return None

    @property
    def listener_connections(self) -> int:
        """How many times the listener connected (more than once: it reconnected)."""
        return self._listener.connections

    def _on_renewed(self) -> None:
        self._last_beat = trio.current_time()

    async def _on_beat(self) -> None:
        """The work that rides on the heartbeat (in a task of its own, never delaying the
        renewals): the progress update and durable abort check, then the sweep, a deeper one
        every :data:`DEEP_SWEEP_BEATS` beats."""
        await self._check_aborts()
        s = self.settings
        grace = None
        if self._sweeps % DEEP_SWEEP_BEATS == 0:
            grace = s.lease_seconds * INSTANCE_GRACE_LEASES
        self._sweeps += 1
        await self.db.run(
            partial(
                registry.sweep,
                keep_seconds=s.keep_seconds,
                max_results=s.max_results,
                grace_seconds=grace,
            )
        )

    async def _check_aborts(self) -> None:
        progress = dict(self._progress())
        asked = await self.db.run(
            partial(registry.abort_check, instance_id=self.instance_id, progress=progress)
        )
        for run_id, reason in asked.items():
            if self._abort_local(run_id, reason):
                logger.info("cluster.abort.durable run_id=%s", run_id)

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == registry.LANE_CHANNEL:
            event = self._lane_events.pop(payload, None)
            if event is not None:
                event.set()
        elif channel == registry.SLOT_CHANNEL:
            self._slot_event.set()
            self._slot_event = trio.Event()
        elif channel == registry.ABORT_CHANNEL:
            if self._abort_local(payload, "agent.abort"):
                logger.info("cluster.abort.notified run_id=%s", payload)
        elif channel == registry.DONE_CHANNEL:
            event = self._done_events.pop(payload, None)
            if event is not None:
                event.set()

    async def _on_reconnect(self) -> None:
        """Notifications sent while the listener was away are lost: every waiter looks again,
        and the abort requests are read from the table."""
        for event in (*self._lane_events.values(), *self._done_events.values(), self._slot_event):
            event.set()
        self._lane_events.clear()
        self._done_events.clear()
        self._slot_event = trio.Event()
        try:
            await self._check_aborts()
        except SessionStoreError as exc:
            logger.warning("cluster.abort_check.failed reason=%s", exc)

    # -- admission ---------------------------------------------------------------------------

    def _lane_event(self, session_key: str) -> trio.Event:
        event = self._lane_events.get(session_key)
        if event is None:
            event = self._lane_events[session_key] = trio.Event()
        return event

    async def acquire(self, entry: Entry) -> Grant:
        """Register ``entry`` and wait until it may run: its session's lane (if it needs one,
        FIFO across instances, at most ``lane_wait_seconds``: then 409) and a cluster run slot
        (if there is a cap; 429 at once when this instance's cluster queue is full). A
        cancelled or refused run leaves its queue (its row is deleted) before this returns."""
        s = self.settings
        poll = poll_seconds(s.lease_seconds)
        lane_deadline = trio.current_time() + s.lane_wait_seconds
        queued_for_slot = False
        # Armed before each attempt, so a notification sent during it is not missed.
        lane_event = self._lane_event(entry.session_key) if entry.needs_lane else None
        slot_event = self._slot_event
        try:
            grant = await self.db.run(
                partial(lanes.enter, entry=entry, cap=s.cap), cancellable=False, idempotent=True
            )
            while True:
                step = lanes.next_step(
                    grant.outcome,
                    first_attempt=not queued_for_slot,
                    slot_waiters=self._slot_waiters,
                    max_queued=s.max_queued,
                )
                if step is Step.RUN:
                    return grant
                if step is Step.WAIT_LANE:
                    remaining = lane_deadline - trio.current_time()
                    if remaining <= 0:
                        raise SessionBusyError(
                            "Another run of this session is still in progress; retry when it "
                            "is done.",
                            retry_after=1,
                        )
                    assert lane_event is not None
                    with trio.move_on_after(min(poll, remaining)):
                        await lane_event.wait()
                elif step is Step.WAIT_SLOT:
                    if not queued_for_slot:
                        queued_for_slot = True
                        self._slot_waiters += 1
                    with trio.move_on_after(poll):
                        await slot_event.wait()
                else:
                    raise _refusal(step)
                lane_event = self._lane_event(entry.session_key) if entry.needs_lane else None
                slot_event = self._slot_event
                grant = await self.db.run(
                    partial(lanes.try_grant, run_id=entry.run_id, cap=s.cap), cancellable=False
                )
        except BaseException:
            await self._leave(entry.run_id)
            raise
        finally:
            if queued_for_slot:
                self._slot_waiters -= 1

    async def _leave(self, run_id: str) -> None:
        """A run that was refused or cancelled leaves its queue now (shielded, bounded); if the
        database does not answer, the release task does it later."""
        with trio.move_on_after(LEAVE_BOUND_SECONDS, shield=True):
            try:
                await self.db.run(
                    partial(lanes.finish, instance_id=self.instance_id, runs=[Finished(run_id)]),
                    cancellable=False,
                )
            except SessionStoreError as exc:
                logger.warning("cluster.leave_queue.failed run_id=%s reason=%s", run_id, exc)
            else:
                return
        self.release(Finished(run_id))

    def release(self, finished: Finished) -> None:
        """A run ended: its row goes, its lane is released (if it still holds it under its
        epoch) and its result is kept; written soon, in a batch, by the release task."""
        self._pending.append(finished)
        self._pending_changed.set()

    async def _serve_releases(self) -> None:
        retry = RELEASE_RETRY_SECONDS[0]
        while True:
            await self._pending_changed.wait()
            self._pending_changed = trio.Event()
            while self._pending:
                try:
                    await self._write_releases()
                except SessionStoreError as exc:
                    logger.warning(
                        "cluster.release.failed runs=%d reason=%s", len(self._pending), exc
                    )
                    await trio.sleep(retry)
                    retry = min(retry * 2, RELEASE_RETRY_SECONDS[1])
                else:
                    retry = RELEASE_RETRY_SECONDS[0]

    async def _write_releases(self) -> None:
        batch = self._pending[:RELEASE_BATCH]
        await self.db.run(
            partial(lanes.finish, instance_id=self.instance_id, runs=batch), cancellable=False
        )
        del self._pending[: len(batch)]

    # -- the registry ------------------------------------------------------------------------

    async def live_runs(self) -> list[registry.LiveRun]:
        return await self.db.run(registry.live_runs)

    async def request_abort(self, run_id: str, reason: str = "agent.abort") -> list[str]:
        """Ask that ``run_id`` be aborted wherever it runs (stored, then notified)."""
        return await self.db.run(
            partial(registry.request_abort, run_id=run_id, reason=reason), cancellable=False
        )

    async def request_session_abort(self, session_key: str, reason: str) -> list[str]:
        """Ask that the session's running runs on other instances be aborted."""
        return await self.db.run(
            partial(
                registry.request_session_abort,
                session_key=session_key,
                reason=reason,
                except_instance=self.instance_id,
            ),
            cancellable=False,
        )

    async def find_idempotent(self, key: str) -> str | None:
        return await self.db.run(partial(registry.find_idempotent, key=key))

    async def wait_result(self, run_id: str) -> dict[str, object] | None:
        """The kept result of ``run_id`` (a run of any instance), once it finished; ``None``
        if it is neither live nor kept."""
        poll = poll_seconds(self.settings.lease_seconds)
        while True:
            event = self._done_events.get(run_id)
            if event is None:
                event = self._done_events[run_id] = trio.Event()
            result = await self.db.run(partial(registry.result_of, run_id=run_id))
            if result is not None:
                return result
            if not await self.db.run(partial(registry.run_is_live, run_id=run_id)):
                return await self.db.run(partial(registry.result_of, run_id=run_id))
            with trio.move_on_after(poll):
                await event.wait()


def _refusal(step: Step) -> Exception:
    if step is Step.REFUSE_QUEUE_FULL:
        return OverloadedError(
            "The cluster is at its limit of concurrent runs and this gateway's queue is full; "
            "retry shortly.",
            retry_after=1,
        )
    if step is Step.REFUSE_ABORTED:
        return RunAbortedError("The run was aborted while it waited for its turn.")
    if step is Step.REFUSE_DUPLICATE:
        return SessionBusyError(
            "A run with this id or idempotency key is already registered.", code="duplicate_run"
        )
    return SessionStoreError("The run's registration vanished (this instance was taken for dead).")
