"""The registry's housekeeping at the database: what the sweep forgets and what it keeps."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from trio_gateway.cluster import lanes, registry
from trio_gateway.cluster.lanes import Entry, Finished, Outcome
from trio_gateway.pg import migrate
from trio_gateway.pg.instances import register


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        migrate(connection)
        register(connection, "live", 60, "test")
        yield connection


def entry(run_id: str, instance: str, session: str) -> Entry:
    return Entry(run_id, instance, "main", session, "http", None, needs_lane=True)


def expire(conn: psycopg.Connection, instance: str, seconds_ago: float) -> None:
    conn.execute(
        "UPDATE epiloop_instances SET expires_at = now() - make_interval(secs => %s) "
        "WHERE instance_id = %s",
        (seconds_ago, instance),
    )


def column(conn: psycopg.Connection, query: str) -> list[object]:
    return sorted(row[0] for row in conn.execute(query).fetchall())


def add_session(conn: psycopg.Connection, key: str) -> None:
    conn.execute(
        "INSERT INTO epiloop_sessions (key, agent_id, agent_id_lower, created_at, updated_at, "
        "model, last_status, last_run_id) VALUES (%s, 'main', 'main', 0, 0, '\\x'::bytea, "
        "'completed', '\\x'::bytea)",
        (key,),
    )


def test_sweep_forgets_runs_of_expired_instances_and_old_results(conn: psycopg.Connection) -> None:
    register(conn, "dead", 60, "test")
    lanes.enter(conn, entry("theirs", "dead", "s1"), None)
    lanes.enter(conn, entry("mine", "live", "s2"), None)
    lanes.finish(conn, "live", [Finished(f"done-{n}", None, {"n": n}) for n in range(3)])
    expire(conn, "dead", 1)
    registry.sweep(conn, keep_seconds=3600, max_results=2)
    assert column(conn, "SELECT run_id FROM epiloop_runs") == ["mine"]
    assert len(column(conn, "SELECT run_id FROM epiloop_results")) == 2
    registry.sweep(conn, keep_seconds=0, max_results=2)
    assert column(conn, "SELECT run_id FROM epiloop_results") == []


def test_sweep_without_grace_keeps_instances_and_lanes(conn: psycopg.Connection) -> None:
    register(conn, "gone", 60, "test")
    lanes.enter(conn, entry("r", "live", "s"), None)
    lanes.finish(conn, "live", [Finished("r")])
    expire(conn, "gone", 3600)
    registry.sweep(conn, keep_seconds=60, max_results=10)
    assert column(conn, "SELECT instance_id FROM epiloop_instances") == ["gone", "live"]
    assert column(conn, "SELECT session_key FROM epiloop_lanes") == ["s"]


def test_deep_sweep_forgets_long_expired_instances_and_unused_lanes(
    conn: psycopg.Connection,
) -> None:
    for instance in ("recent", "long-gone", "dead-holder"):
        register(conn, instance, 60, "test")
    # Lanes: free without a session (goes), free with a session (stays), held by a live run
    # (stays), held by a run whose instance expired, without a session (goes) and with one
    # (stays, the epoch of an existing session goes on growing).
    for run_id, instance, session in [
        ("a", "live", "free"),
        ("b", "live", "free-with-session"),
        ("c", "live", "held"),
        ("d", "dead-holder", "dead-held"),
        ("e", "dead-holder", "dead-held-with-session"),
    ]:
        assert lanes.enter(conn, entry(run_id, instance, session), None).outcome is Outcome.RUNNING
    lanes.finish(conn, "live", [Finished("a"), Finished("b")])
    add_session(conn, "free-with-session")
    add_session(conn, "dead-held-with-session")
    expire(conn, "recent", 5)
    expire(conn, "long-gone", 120)
    expire(conn, "dead-holder", 1)
    registry.sweep(conn, keep_seconds=60, max_results=10, grace_seconds=60)
    assert column(conn, "SELECT instance_id FROM epiloop_instances") == [
        "dead-holder",
        "live",
        "recent",
    ]
    assert column(conn, "SELECT session_key FROM epiloop_lanes") == [
        "dead-held-with-session",
        "free-with-session",
        "held",
    ]
    # A lane whose row went is taken again as new.
    assert lanes.enter(conn, entry("f", "live", "free"), None) == lanes.Grant(Outcome.RUNNING, 1)
