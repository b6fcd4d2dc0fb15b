"""Admission across instances at the database: the waiting side's decisions (pure), and the
statements' rules (FIFO, expired holders, fencing epochs) against a real PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import TypeVar

import psycopg
import pytest

from trio_gateway.cluster import lanes, registry
from trio_gateway.cluster.lanes import Entry, Finished, Outcome, Step, next_step
from trio_gateway.pg import migrate
from trio_gateway.pg.instances import register

T = TypeVar("T")


@pytest.mark.parametrize(
    ("outcome", "first", "waiters", "step"),
    [
        (Outcome.RUNNING, True, 0, Step.RUN),
        (Outcome.LANE, True, 99, Step.WAIT_LANE),
        (Outcome.SLOT, True, 0, Step.WAIT_SLOT),
        (Outcome.SLOT, True, 2, Step.REFUSE_QUEUE_FULL),
        (Outcome.SLOT, False, 2, Step.WAIT_SLOT),  # already queued: never refused later
        (Outcome.ABORTED, True, 0, Step.REFUSE_ABORTED),
        (Outcome.DUPLICATE, True, 0, Step.REFUSE_DUPLICATE),
        (Outcome.GONE, False, 0, Step.REFUSE_LOST),
    ],
)
def test_next_step_table(outcome: Outcome, first: bool, waiters: int, step: Step) -> None:
    assert next_step(outcome, first_attempt=first, slot_waiters=waiters, max_queued=2) is step


def entry(run_id: str, instance: str, session: str = "s", *, lane: bool = True) -> Entry:
    return Entry(run_id, instance, "main", session, "http", None, needs_lane=lane)


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        migrate(connection)
        register(connection, "a", 60, "test")
        register(connection, "b", 60, "test")
        yield connection


def lane_row(conn: psycopg.Connection, session: str = "s") -> tuple[object, ...] | None:
    return conn.execute(
        "SELECT holder, epoch FROM epiloop_lanes WHERE session_key = %s", (session,)
    ).fetchone()


def test_lanes_are_granted_in_ticket_order_across_instances(conn: psycopg.Connection) -> None:
    first = lanes.enter(conn, entry("r1", "a"), None)
    assert first == lanes.Grant(Outcome.RUNNING, 1)
    assert lanes.enter(conn, entry("r2", "b"), None).outcome is Outcome.LANE
    assert lanes.enter(conn, entry("r3", "a"), None).outcome is Outcome.LANE
    lanes.finish(conn, "a", [Finished("r1")])
    # r3 asks first, but r2 came first: r3 waits on.
    assert lanes.try_grant(conn, "r3", None).outcome is Outcome.LANE
    assert lanes.try_grant(conn, "r2", None) == lanes.Grant(Outcome.RUNNING, 2)
    assert lane_row(conn) == ("r2", 2)


def test_lane_of_an_expired_instance_is_free_and_a_stale_release_does_nothing(
    conn: psycopg.Connection,
) -> None:
    register(conn, "dead", 60, "test")
    assert lanes.enter(conn, entry("old", "dead"), None).outcome is Outcome.RUNNING
    assert lanes.enter(conn, entry("new", "b"), None).outcome is Outcome.LANE
    conn.execute("UPDATE epiloop_instances SET expires_at = now() WHERE instance_id = 'dead'")
    assert lanes.try_grant(conn, "new", None) == lanes.Grant(Outcome.RUNNING, 2)
    # The dead holder comes back and releases: its epoch is stale, the lane stays with "new".
    lanes.finish(conn, "dead", [Finished("old")])
    assert lane_row(conn) == ("new", 2)


def test_waiters_of_an_expired_instance_do_not_block_the_queue(conn: psycopg.Connection) -> None:
    register(conn, "dead", 60, "test")
    assert lanes.enter(conn, entry("r1", "a"), None).outcome is Outcome.RUNNING
    assert lanes.enter(conn, entry("ghost", "dead"), None).outcome is Outcome.LANE
    assert lanes.enter(conn, entry("r3", "b"), None).outcome is Outcome.LANE
    conn.execute("UPDATE epiloop_instances SET expires_at = now() WHERE instance_id = 'dead'")
    lanes.finish(conn, "a", [Finished("r1")])
    assert lanes.try_grant(conn, "r3", None).outcome is Outcome.RUNNING


def test_cluster_cap_counts_running_runs_of_live_instances_fifo(conn: psycopg.Connection) -> None:
    cap = partial(lanes.enter, cap=1)
    assert cap(conn, entry("r1", "a", "s1", lane=False)).outcome is Outcome.RUNNING
    assert cap(conn, entry("r2", "b", "s2")).outcome is Outcome.SLOT  # holds its lane
    assert cap(conn, entry("r3", "a", "s3", lane=False)).outcome is Outcome.SLOT
    assert lane_row(conn, "s2") == ("r2", 1)
    lanes.finish(conn, "a", [Finished("r1")])
    assert lanes.try_grant(conn, "r3", 1).outcome is Outcome.SLOT  # r2 is ahead of it
    assert lanes.try_grant(conn, "r2", 1) == lanes.Grant(Outcome.RUNNING, 1)


def test_duplicate_idempotency_key_is_refused(conn: psycopg.Connection) -> None:
    keyed = Entry("r1", "a", "main", "s", "ws", "key-1", needs_lane=True)
    assert lanes.enter(conn, keyed, None).outcome is Outcome.RUNNING
    again = Entry("r2", "b", "main", "s2", "ws", "key-1", needs_lane=True)
    assert lanes.enter(conn, again, None).outcome is Outcome.DUPLICATE


def test_finish_keeps_results_and_releases_the_lane(conn: psycopg.Connection) -> None:
    lanes.enter(conn, entry("r1", "a"), None)
    lanes.finish(conn, "a", [Finished("r1", "k", {"status": "completed"})])
    assert lane_row(conn) == (None, 1)
    query = "SELECT instance_id, idempotency_key, result FROM epiloop_results"
    row = conn.execute(query).fetchone()
    assert row == ("a", "k", {"status": "completed"})
    assert conn.execute("SELECT count(*) FROM epiloop_runs").fetchone() == (0,)


def test_enter_again_of_the_same_run_is_its_grant_not_a_duplicate(
    conn: psycopg.Connection,
) -> None:
    # A call retried after its connection was lost, when the first try had committed.
    holder = Entry("r1", "a", "main", "s", "ws", "key-1", needs_lane=True)
    assert lanes.enter(conn, holder, None) == lanes.Grant(Outcome.RUNNING, 1)
    assert lanes.enter(conn, holder, None) == lanes.Grant(Outcome.RUNNING, 1)
    assert lanes.enter(conn, entry("r2", "b"), None).outcome is Outcome.LANE
    ticket = conn.execute("SELECT ticket FROM epiloop_runs WHERE run_id = 'r2'").fetchone()
    assert lanes.enter(conn, entry("r2", "b"), None).outcome is Outcome.LANE
    assert conn.execute("SELECT ticket FROM epiloop_runs WHERE run_id = 'r2'").fetchone() == ticket
    # Another instance with the same run id, or another run with the same key: duplicates.
    assert lanes.enter(conn, entry("r1", "b"), None).outcome is Outcome.DUPLICATE
    other = Entry("r3", "a", "main", "s", "ws", "key-1", needs_lane=True)
    assert lanes.enter(conn, other, None).outcome is Outcome.DUPLICATE
    assert lane_row(conn) == ("r1", 1)


def test_finish_written_twice_changes_nothing_the_second_time(conn: psycopg.Connection) -> None:
    lanes.enter(conn, entry("r1", "a"), None)
    lanes.enter(conn, entry("r2", "b"), None)
    batch = [Finished("r1", None, {"status": "completed"})]
    lanes.finish(conn, "a", batch)
    assert lanes.try_grant(conn, "r2", None) == lanes.Grant(Outcome.RUNNING, 2)
    lanes.finish(conn, "a", batch)  # retried after a lost connection
    assert lane_row(conn) == ("r2", 2)
    assert conn.execute("SELECT run_id, state FROM epiloop_runs").fetchall() == [("r2", "running")]
    assert conn.execute("SELECT run_id FROM epiloop_results").fetchall() == [("r1",)]


def _blocked_on_a_lock(conn: psycopg.Connection, pid: int) -> bool:
    row = conn.execute(
        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    return row is not None and row[0] == "Lock"


def _in_thread(work: Callable[[], T]) -> Callable[[], T]:
    """Start ``work`` in a thread; the function returned waits for its result."""
    box: list[T] = []
    thread = threading.Thread(target=lambda: box.append(work()), daemon=True)
    thread.start()

    def join() -> T:
        thread.join(10)
        assert box, "the statement did not finish"
        return box[0]

    return join


def _wait_blocked(observer: psycopg.Connection, pid: int) -> None:
    deadline = time.monotonic() + 10
    while not _blocked_on_a_lock(observer, pid):
        assert time.monotonic() < deadline, "the statement never waited for the lock"
        time.sleep(0.01)


def test_grant_inserts_again_a_lane_row_deleted_under_it(
    pg_dsn: str, conn: psycopg.Connection
) -> None:
    lanes.enter(conn, entry("r1", "a"), None)
    lanes.finish(conn, "a", [Finished("r1")])  # a free lane's row, which the sweep may delete
    with psycopg.connect(pg_dsn, autocommit=True) as sweeper, psycopg.connect(pg_dsn) as grantor:
        grantor.autocommit = True
        pid = grantor.info.backend_pid
        with sweeper.transaction():
            sweeper.execute("SELECT 1 FROM epiloop_lanes WHERE session_key = 's' FOR UPDATE")
            granted = _in_thread(lambda: lanes.enter(grantor, entry("r2", "b"), None))
            _wait_blocked(conn, pid)  # the grant found the row, and waits for its lock
            sweeper.execute("DELETE FROM epiloop_lanes WHERE session_key = 's'")
        assert granted() == lanes.Grant(Outcome.RUNNING, 1)
    assert lane_row(conn) == ("r2", 1)


def _locked(dsn: str, run_id: str) -> bool:
    """Whether another transaction holds a lock on ``run_id``'s row."""
    with psycopg.connect(dsn, autocommit=True) as probe:
        try:
            probe.execute(
                "SELECT 1 FROM epiloop_runs WHERE run_id = %s FOR UPDATE NOWAIT", (run_id,)
            )
        except psycopg.errors.LockNotAvailable:
            return True
        return False


_MULTI_ROW: dict[str, Callable[[psycopg.Connection], object]] = {
    "abort_check": lambda c: registry.abort_check(c, "a", {"r2": 5, "r1": 7}),
    "session_abort": lambda c: registry.request_session_abort(c, "s", "t", except_instance="b"),
    "finish": lambda c: lanes.finish(c, "a", [Finished("r2"), Finished("r1")]),
    "leave": lambda c: registry.leave(c, "a"),
}


@pytest.mark.parametrize("statement", list(_MULTI_ROW))
def test_multi_row_statements_lock_runs_in_run_id_order(
    pg_dsn: str, conn: psycopg.Connection, statement: str
) -> None:
    # Rows stored in the reverse of their run ids' order; the first run id held by another
    # transaction. A statement that locks in run id order waits for it before locking the
    # second, so two such statements can never each hold what the other waits for.
    for run_id in ("r2", "r1"):
        lanes.enter(conn, entry(run_id, "a", session="s", lane=False), None)
    work = _MULTI_ROW[statement]
    with psycopg.connect(pg_dsn, autocommit=True) as holder, psycopg.connect(pg_dsn) as worker:
        worker.autocommit = True
        with holder.transaction():
            holder.execute("SELECT 1 FROM epiloop_runs WHERE run_id = 'r1' FOR UPDATE")
            done = _in_thread(lambda: work(worker))
            _wait_blocked(conn, worker.info.backend_pid)
            second_locked = _locked(pg_dsn, "r2")
        done()
    assert not second_locked
