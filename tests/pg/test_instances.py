"""The instances' rows and the heartbeat: registration after a restart with the same id, and
renewals that nothing else delays."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import partial

import psycopg
import pytest
import trio

from trio_gateway.cluster import lanes
from trio_gateway.cluster.lanes import Entry, Outcome
from trio_gateway.pg import Database, migrate, open_database
from trio_gateway.pg.instances import register, serve_heartbeat


def entry(run_id: str, session: str, instance: str = "i0") -> Entry:
    return Entry(run_id, instance, "main", session, "http", None, needs_lane=True)


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        migrate(connection)
        yield connection


@pytest.fixture
async def db(pg_dsn: str, conn: psycopg.Connection) -> AsyncIterator[Database]:
    async with open_database(pg_dsn, pool_size=4) as database:
        yield database


def test_register_of_a_new_process_drops_what_its_id_left(conn: psycopg.Connection) -> None:
    # A previous process "i0" (killed) left a run holding the lane of "s" and one waiting.
    register(conn, "i0", 60, "old")
    register(conn, "other", 60, "old")
    assert lanes.enter(conn, entry("ghost", "s"), None).outcome is Outcome.RUNNING
    assert lanes.enter(conn, entry("queued", "s"), None).outcome is Outcome.LANE
    assert lanes.enter(conn, entry("theirs", "t", "other"), None).outcome is Outcome.RUNNING
    conn.execute("LISTEN epiloop_lane")
    assert register(conn, "i0", 60, "new") == 2
    assert [n.payload for n in conn.notifies(timeout=5, stop_after=1)] == ["s"]
    runs = conn.execute("SELECT run_id FROM epiloop_runs ORDER BY run_id").fetchall()
    assert runs == [("theirs",)]
    lane = "SELECT holder, epoch FROM epiloop_lanes WHERE session_key = %s"
    assert conn.execute(lane, ("s",)).fetchone() == (None, 1)
    assert conn.execute(lane, ("t",)).fetchone() == ("theirs", 1)
    # The session is free at once (not after the lease: the row was renewed, never expired).
    assert lanes.enter(conn, entry("next", "s"), None) == lanes.Grant(Outcome.RUNNING, 2)


def test_register_again_of_a_running_process_keeps_its_runs(conn: psycopg.Connection) -> None:
    register(conn, "i0", 60, "v")
    lanes.enter(conn, entry("mine", "s"), None)
    conn.execute("DELETE FROM epiloop_instances")  # swept while this process was paused
    assert register(conn, "i0", 60, "v", fresh=False) == 0
    assert conn.execute("SELECT run_id FROM epiloop_runs").fetchall() == [("mine",)]


def _expires_in(conn: psycopg.Connection, instance: str) -> float:
    row = conn.execute(
        "SELECT extract(epoch FROM expires_at - now())::float8 FROM epiloop_instances "
        "WHERE instance_id = %s",
        (instance,),
    ).fetchone()
    assert row is not None
    return float(row[0])


async def test_heartbeat_renews_while_a_slow_on_beat_runs(
    db: Database, conn: psycopg.Connection
) -> None:
    lease = 0.6
    running = 0
    most = 0
    calls = 0
    renewals: list[float] = []

    async def slow_on_beat() -> None:  # a check that takes longer than the whole lease
        nonlocal running, most, calls
        calls += 1
        running += 1
        most = max(most, running)
        try:
            await trio.sleep(lease * 2)
        finally:
            running -= 1

    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                serve_heartbeat,
                db,
                "i0",
                lease,
                "v",
                on_renewed=lambda: renewals.append(trio.current_time()),
                on_beat=slow_on_beat,
            )
        )
        started = trio.current_time()
        lowest = lease
        while trio.current_time() - started < lease * 4:
            lowest = min(lowest, await trio.to_thread.run_sync(_expires_in, conn, "i0"))
            await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    # Never closer to expiry than about one interval (a third of the lease), never expired.
    assert lowest > lease / 3 - 0.15
    assert len(renewals) >= 10
    # on_beat ran one at a time; the beats while it ran skipped theirs.
    assert most == 1
    assert 2 <= calls <= 3


async def test_heartbeat_keeps_to_fixed_deadlines(db: Database, conn: psycopg.Connection) -> None:
    lease = 0.6
    interval = lease / 3
    # A slow database: every renewal takes a quarter of an interval.
    conn.execute(
        f"""
        CREATE FUNCTION slow_renewal() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep({interval / 4}); RETURN NEW; END $$;
        CREATE TRIGGER slow_renewal BEFORE UPDATE ON epiloop_instances
            FOR EACH ROW EXECUTE FUNCTION slow_renewal();
        """
    )
    renewals: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                serve_heartbeat,
                db,
                "i0",
                lease,
                "v",
                on_renewed=lambda: renewals.append(trio.current_time()),
            )
        )
        with trio.fail_after(10):
            while len(renewals) < 11:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    # Ten intervals from the first renewal to the eleventh: the renewals' own time does not add
    # up (it would be two and a half intervals more).
    assert renewals[10] - renewals[0] == pytest.approx(10 * interval, abs=interval / 2)
