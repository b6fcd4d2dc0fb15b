"""Session lanes and run slots across instances: the statements, and the decisions around them.

Owns the calls of the ``epiloop_enter`` / ``epiloop_try_grant`` / ``epiloop_finish`` functions
(migration 0005): a run is registered and moved on in one statement (one round trip), moved on
again when woken, and finished (its row gone, its lane released under the epoch it was granted,
its result kept) in batches. The rules themselves (FIFO by ticket, a lane free when its holder's
instance expired, the cluster cap) are in the SQL, where they run atomically under the lane's
row lock; this module holds the pure decisions the waiting side makes (:func:`next_step`).

Plain functions of a connection (run through :meth:`~trio_gateway.pg.database.Database.run`).
Imports psycopg and ``errors`` only.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

__all__ = [
    "Entry",
    "Finished",
    "Grant",
    "Outcome",
    "Step",
    "enter",
    "finish",
    "next_step",
    "try_grant",
]


class Outcome(enum.Enum):
    """Where a run stands after a grant attempt (the SQL functions' ``outcome``)."""

    RUNNING = "running"  # admitted: holds its lane (if it needs one) and a run slot
    LANE = "lane"  # waits for its session's lane
    SLOT = "slot"  # holds its lane, waits for a run slot under the cluster cap
    ABORTED = "aborted"  # aborted (from any instance) while it waited
    GONE = "gone"  # its row is gone (its instance was taken for dead)
    DUPLICATE = "duplicate"  # its run id or idempotency key is taken


@dataclass(frozen=True, slots=True)
class Grant:
    outcome: Outcome
    #: The lane's epoch when the run holds its lane (the fence of its turn), else ``None``.
    epoch: int | None


@dataclass(frozen=True, slots=True)
class Entry:
    """A run asking to be admitted."""

    run_id: str
    instance_id: str
    agent_id: str
    session_key: str
    source: str
    idempotency_key: str | None
    #: Stateful runs take their session's lane; stateless ones only count toward the cap.
    needs_lane: bool


@dataclass(frozen=True, slots=True)
class Finished:
    """A run that ended or left its queue; ``result`` (JSON-ready) is kept when not ``None``."""

    run_id: str
    idempotency_key: str | None = None
    result: dict[str, object] | None = None


class Step(enum.Enum):
    """What a waiting run does after a grant attempt (see :func:`next_step`)."""

    RUN = "run"
    WAIT_LANE = "wait_lane"
    WAIT_SLOT = "wait_slot"
    REFUSE_ABORTED = "refuse_aborted"
    REFUSE_DUPLICATE = "refuse_duplicate"
    REFUSE_LOST = "refuse_lost"
    REFUSE_QUEUE_FULL = "refuse_queue_full"


def next_step(outcome: Outcome, *, first_attempt: bool, slot_waiters: int, max_queued: int) -> Step:
    """The waiting side's decision after an attempt, a pure function of plain data.

    A run that must wait for a slot is refused at once (429) when, on its first attempt, this
    instance already has ``max_queued`` runs waiting for a cluster slot (the cluster queue is
    bounded per instance, like the in-process one). Waiting for the lane is bounded in time by
    the caller (409)."""
    if outcome is Outcome.RUNNING:
        return Step.RUN
    if outcome is Outcome.LANE:
        return Step.WAIT_LANE
    if outcome is Outcome.SLOT:
        if first_attempt and slot_waiters >= max_queued:
            return Step.REFUSE_QUEUE_FULL
        return Step.WAIT_SLOT
    if outcome is Outcome.ABORTED:
        return Step.REFUSE_ABORTED
    if outcome is Outcome.DUPLICATE:
        return Step.REFUSE_DUPLICATE
    return Step.REFUSE_LOST


def _grant(row: tuple[object, ...] | None) -> Grant:
    if row is None:
        return Grant(Outcome.GONE, None)
    outcome, epoch = row
    return Grant(Outcome(outcome), None if epoch is None else int(str(epoch)))


def enter(connection: psycopg.Connection, entry: Entry, cap: int | None) -> Grant:
    """Register ``entry`` (waiting, with the next ticket) and move it on: one round trip.

    Idempotent (retried on a fresh connection when the first one was lost): the same run of
    the same instance entered again keeps its row and ticket and gets its grant."""
    row = connection.execute(
        "SELECT outcome, epoch FROM epiloop_enter(%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            entry.run_id,
            entry.instance_id,
            entry.agent_id,
            entry.session_key,
            entry.source,
            entry.idempotency_key,
            entry.needs_lane,
            cap,
        ),
    ).fetchone()
    return _grant(row)


def try_grant(connection: psycopg.Connection, run_id: str, cap: int | None) -> Grant:
    """Move a waiting run on as far as it may go now."""
    row = connection.execute(
        "SELECT outcome, epoch FROM epiloop_try_grant(%s, %s)", (run_id, cap)
    ).fetchone()
    return _grant(row)


def finish(connection: psycopg.Connection, instance_id: str, runs: Sequence[Finished]) -> None:
    """End ``runs`` in one statement: rows deleted, lanes released (only under the epoch each
    was granted, so a stale release does nothing), results kept, waiters notified. Written
    twice (a retry), the second time deletes and releases nothing."""
    connection.execute(
        "SELECT epiloop_finish(%s, %s, %s, %s)",
        (
            instance_id,
            [run.run_id for run in runs],
            [run.idempotency_key for run in runs],
            [None if run.result is None else Jsonb(run.result) for run in runs],
        ),
    )
