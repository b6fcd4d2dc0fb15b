"""The PostgreSQL session store: fencing, several instances, cancellation, lost connections.

The behaviour every store shares is tested in ``test_contract.py`` against every store; these are
the properties only the shared store has. Each test has a fresh schema (``pg_dsn``).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
import trio

from trio_gateway.config.schema import PostgresConfig, SessionConfig
from trio_gateway.errors import LeaseLostError, SessionStoreError, SessionStoreUnavailableError
from trio_gateway.pg import schema_status
from trio_gateway.pg.migrations import known_migrations
from trio_gateway.sessions import SessionStore, open_session_store
from trio_gateway.sessions.postgres import (
    LANE_CHANNEL,
    PostgresSessionStore,
    open_postgres_store,
)
from trio_gateway.sessions.store import Fence, TranscriptEntry, Turn

BOUND = 20.0

_run_ids = itertools.count(1)


def user(text: str) -> TranscriptEntry:
    return TranscriptEntry("user", text)


def turn(
    *entries: TranscriptEntry,
    run_id: str | None = None,
    fence: Fence | None = None,
    keep: int | None = None,
    at: float = 1.0,
) -> Turn:
    return Turn(
        run_id=f"auto-{next(_run_ids)}" if run_id is None else run_id,
        agent_id="main",
        model="local/echo",
        entries=entries,
        status="completed",
        prompt_tokens=10,
        completion_tokens=5,
        at=at,
        keep=keep,
        fence=fence,
    )


def config(dsn: str, pool_size: int = 4) -> PostgresConfig:
    return PostgresConfig(dsn=dsn, pool_size=pool_size)


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresSessionStore]:
    async with open_postgres_store(config(pg_dsn)) as opened:
        yield opened


def sql(dsn: str, statement: str, *args: object) -> list[tuple[object, ...]]:
    """One statement on a connection of its own (another instance, or an operator)."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        cursor = connection.execute(statement, args or None)
        return cursor.fetchall() if cursor.description else []


def hold_lane(dsn: str, key: str, holder: str, epoch: int) -> None:
    sql(
        dsn,
        "INSERT INTO epiloop_lanes (session_key, holder, holder_instance, epoch, acquired_at) "
        "VALUES (%s, %s, 'instance-a', %s, now()) ON CONFLICT (session_key) DO UPDATE "
        "SET holder = excluded.holder, holder_instance = excluded.holder_instance, "
        "epoch = excluded.epoch",
        key,
        holder,
        epoch,
    )


async def contents(store: SessionStore, key: str) -> list[str]:
    session = await store.get(key)
    assert session is not None
    return [entry.content for entry in session.transcript]


def test_postgres_store_implements_the_protocol() -> None:
    def check(store: PostgresSessionStore) -> SessionStore:
        return store  # mypy checks the structural match

    assert check is not None


async def test_open_session_store_opens_postgres_migrated(pg_dsn: str, tmp_path: Path) -> None:
    session_config = SessionConfig(store="postgres", postgres=config(pg_dsn))
    async with open_session_store(session_config, tmp_path) as opened:
        assert isinstance(opened, PostgresSessionStore)
        status = await opened.database.run(schema_status)
        assert (status.current, status.pending) == (len(known_migrations()), ())
        await opened.record_turn("k", turn(user("a")))
    assert not (tmp_path / "sessions.sqlite").exists()
    # Opened again (another instance, a restart): the sessions are there, nothing to migrate.
    async with open_session_store(session_config, tmp_path) as again:
        assert await contents(again, "k") == ["a"]


async def test_open_postgres_store_without_a_dsn_names_both_places(tmp_path: Path) -> None:
    with pytest.raises(SessionStoreError, match=r"session\.postgres\.dsn") as failed:
        async with open_session_store(SessionConfig(store="postgres"), tmp_path):
            pass  # pragma: no cover
    assert "EPILOOP_POSTGRES_DSN" in failed.value.message


async def test_open_postgres_store_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    dsn = "postgresql://epiloop:s3cret@127.0.0.1:1/sessions?connect_timeout=1"
    session_config = SessionConfig(store="postgres", postgres=config(dsn))
    with trio.fail_after(BOUND), pytest.raises(SessionStoreUnavailableError) as failed:
        async with open_session_store(session_config, tmp_path):
            pass  # pragma: no cover
    assert "s3cret" not in failed.value.message
    assert "Cannot connect to PostgreSQL at" in failed.value.message
    assert failed.value.code == "session_store_unavailable"


async def test_open_postgres_store_refuses_a_newer_schema(pg_dsn: str) -> None:
    async with open_postgres_store(config(pg_dsn)):
        pass
    newer = len(known_migrations()) + 1
    sql(pg_dsn, "INSERT INTO epiloop_schema (version, name) VALUES (%s, 'future')", newer)
    with pytest.raises(SessionStoreError, match="newer than this gateway knows"):
        async with open_postgres_store(config(pg_dsn)):
            pass  # pragma: no cover


async def test_postgres_store_fence_refused_leaves_the_transcript_alone(
    store: PostgresSessionStore, pg_dsn: str
) -> None:
    hold_lane(pg_dsn, "k", "run-a", 3)
    await store.record_turn("k", turn(user("before"), fence=Fence("run-a", 3)))
    hold_lane(pg_dsn, "k", "run-b", 4)  # the lane moved on to another run
    before = await store.get("k")
    for stale in (Fence("run-a", 3), Fence("run-b", 3), Fence("run-a", 4)):
        with pytest.raises(LeaseLostError) as refused:
            await store.record_turn("k", turn(user("late"), fence=stale, keep=0))
        assert refused.value.code == "lease_lost"
    with pytest.raises(LeaseLostError):  # a session with no lane row at all
        await store.record_turn("nobody", turn(user("x"), fence=Fence("run-a", 1)))
    assert await store.get("k") == before
    assert await store.get("nobody") is None
    # The lane still belongs to its holder; a refused turn is not a storage failure.
    assert sql(pg_dsn, "SELECT holder, epoch FROM epiloop_lanes WHERE session_key = 'k'") == [
        ("run-b", 4)
    ]
    assert store.health() is None


async def test_postgres_store_fenced_turn_releases_the_lane_and_notifies(
    store: PostgresSessionStore, pg_dsn: str
) -> None:
    hold_lane(pg_dsn, "k", "run-a", 7)
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {LANE_CHANNEL}")
        info = await store.record_turn(
            "k", turn(user("q"), TranscriptEntry("assistant", "a"), fence=Fence("run-a", 7))
        )
        notes = await trio.to_thread.run_sync(
            lambda: [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        )
    assert notes == ["k"]
    assert info.message_count == 2
    assert sql(
        pg_dsn,
        "SELECT holder, holder_instance, epoch FROM epiloop_lanes WHERE session_key = 'k'",
    ) == [(None, None, 7)]
    # The same turn again (a retry after a lost reply): stored once, no fence check, no error.
    again = await store.record_turn(
        "k", turn(user("q"), run_id=info.last_run_id, fence=Fence("run-a", 7))
    )
    assert again == info


async def test_postgres_store_delete_refuses_the_turn_of_a_run_in_flight(
    store: PostgresSessionStore, pg_dsn: str
) -> None:
    await store.record_turn("k", turn(user("before")))
    hold_lane(pg_dsn, "k", "run-a", 3)  # a run in flight (on any instance) holds the session
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {LANE_CHANNEL}")
        assert await store.delete("k") is True
        notes = await trio.to_thread.run_sync(
            lambda: [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        )
    assert notes == ["k"]  # its waiters look again: the lane is free
    # The run ends (aborted, say) and writes its turn under its fence: refused, the session
    # stays deleted instead of coming back with the late turn in it.
    with pytest.raises(LeaseLostError):
        await store.record_turn("k", turn(user("late"), fence=Fence("run-a", 3)))
    assert await store.get("k") is None
    assert sql(pg_dsn, "SELECT count(*) FROM epiloop_lanes") == [(0,)]


async def test_postgres_store_reset_refuses_the_turn_of_a_run_in_flight(
    store: PostgresSessionStore, pg_dsn: str
) -> None:
    await store.record_turn("k", turn(user("before")))
    hold_lane(pg_dsn, "k", "run-a", 3)
    assert await store.reset("k") is True
    with pytest.raises(LeaseLostError):
        await store.record_turn("k", turn(user("late"), fence=Fence("run-a", 3)))
    assert await contents(store, "k") == []
    # The lane moved on: free, at the next epoch, for the next run.
    assert sql(pg_dsn, "SELECT holder, holder_instance, epoch FROM epiloop_lanes") == [
        (None, None, 4)
    ]


async def test_postgres_store_unfenced_turn_touches_no_lane(
    store: PostgresSessionStore, pg_dsn: str
) -> None:
    hold_lane(pg_dsn, "k", "run-a", 2)
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {LANE_CHANNEL}")
        await store.record_turn("k", turn(user("q")))
        notes = await trio.to_thread.run_sync(
            lambda: list(listener.notifies(timeout=0.3, stop_after=1))
        )
    assert notes == []
    assert sql(pg_dsn, "SELECT holder FROM epiloop_lanes WHERE session_key = 'k'") == [("run-a",)]


async def test_postgres_store_two_instances_write_one_session_whole(pg_dsn: str) -> None:
    turns = 15
    async with (
        open_postgres_store(config(pg_dsn)) as first,
        open_postgres_store(config(pg_dsn)) as second,
    ):

        async def write(store: PostgresSessionStore, name: str) -> None:
            for index in range(turns):
                entries = (user(f"{name}{index}"), TranscriptEntry("assistant", f"{name}{index}"))
                await store.record_turn("shared", turn(*entries))

        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                for index, store in enumerate((first, second, first, second)):
                    nursery.start_soon(write, store, f"w{index}-")
        shared = await second.get("shared")
    assert shared is not None
    assert (shared.message_count, shared.prompt_tokens) == (8 * turns, 40 * turns)
    texts = [entry.content for entry in shared.transcript]
    assert texts[::2] == texts[1::2]  # every turn's two entries landed together
    assert len(set(texts)) == 4 * turns


async def test_postgres_store_cancelled_read_stops_its_query(
    store: PostgresSessionStore, pg_dsn: str
) -> None:
    await store.record_turn("k", turn(user("a")))
    # Another party locks the table: a read waits inside its query until cancelled.
    with psycopg.connect(pg_dsn) as blocker:
        blocker.execute("LOCK TABLE epiloop_messages IN ACCESS EXCLUSIVE MODE")
        with trio.fail_after(BOUND):
            with trio.move_on_after(0.3) as waiting:
                await store.get("k")
            assert waiting.cancelled_caught
            # The server no longer runs it: the query was cancelled, not left behind.
            waiting_queries = sql(
                pg_dsn,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                "'epiloop-gateway' AND state = 'active' AND datname = current_database() "
                "AND query LIKE '%epiloop_messages%'",
            )
        assert waiting_queries == [(0,)]
        blocker.rollback()
    with trio.fail_after(2):
        assert await contents(store, "k") == ["a"]
    assert store.health() is None


async def test_postgres_store_survives_terminated_connections(
    store: PostgresSessionStore, pg_dsn: str
) -> None:
    await store.record_turn("k", turn(user("a")))
    for _ in range(2):
        # Every connection of the pool, killed server-side between two calls.
        killed = sql(
            pg_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'epiloop-gateway' AND datname = current_database()",
        )
        assert killed
        with trio.fail_after(BOUND):
            assert await contents(store, "k") == ["a"] * (1 + _)
            await store.record_turn("k", turn(user("a")))
    assert store.health() is None


async def test_postgres_store_keys_it_cannot_hold(store: PostgresSessionStore) -> None:
    for key in ("nul\x00key", "lone \udcff"):
        assert await store.get(key) is None
        assert await store.reset(key) is False
        assert await store.delete(key) is False
        with pytest.raises(SessionStoreError, match="cannot be stored"):
            await store.record_turn(key, turn(user("a")))
    assert await store.list_sessions() == []


async def test_postgres_store_closed_store_refuses_work(store: PostgresSessionStore) -> None:
    await store.aclose()
    with pytest.raises(SessionStoreError, match="closed"):
        await store.get("k")
    with pytest.raises(SessionStoreError, match="closed"):
        await store.record_turn("k", turn(user("a")))
    assert store.health() == "the session store is closed"
