"""Admission across instances at the database: the waiting side's decisions (pure), and the
statements' rules (FIFO, expired holders, fencing epochs) against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import psycopg
import pytest

from trio_gateway.cluster import lanes
from trio_gateway.cluster.lanes import Entry, Finished, Outcome, Step, next_step
from trio_gateway.pg import migrate
from trio_gateway.pg.instances import register


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
