"""The pool driven from trio: calls, cancellation, lost connections, migrations."""

from __future__ import annotations

import time

import psycopg
import pytest
import trio
import trio.lowlevel
from postgres_server import open_private_postgres, postgres_binaries

from trio_gateway.errors import SessionStoreError, SessionStoreUnavailableError
from trio_gateway.pg import database as database_module
from trio_gateway.pg import migrate, open_database, redact_dsn, schema_status
from trio_gateway.pg.database import CONNECT_SECONDS
from trio_gateway.pg.migrations import known_migrations


def test_redact_dsn_hides_passwords_in_both_forms() -> None:
    assert "s3cret" not in redact_dsn("postgresql://u:s3cret@db.example:5432/app")
    assert "s3cret" not in redact_dsn("host=db user=u password=s3cret dbname=app")
    assert "********" in redact_dsn("host=db user=u password=s3cret dbname=app")
    assert redact_dsn("host=db user=u dbname=app") == "host=db user=u dbname=app"
    assert redact_dsn("host='unterminated password=s3cret") == "********"


async def test_database_runs_a_call_in_a_thread(pg_dsn: str) -> None:
    async with open_database(pg_dsn, pool_size=2) as db:
        row = await db.run(lambda c: c.execute("SELECT 41 + 1").fetchone())
        assert row == (42,)


async def test_database_cancel_stops_the_statement_and_keeps_the_pool_clean(pg_dsn: str) -> None:
    async with open_database(pg_dsn, pool_size=1) as db:
        with trio.move_on_after(0.2) as scope:
            await db.run(lambda c: c.execute("SELECT pg_sleep(20)"))
        assert scope.cancelled_caught
        # The one connection is usable at once: it is not mid-query.
        with trio.fail_after(2):
            pid = await db.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone())
        assert pid is not None
        # And nothing of ours still runs on the server.
        rows = await db.run(
            lambda c: c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(20)%'"
            ).fetchone()
        )
        assert rows == (0,)


async def test_database_uncancellable_call_runs_to_its_end(pg_dsn: str) -> None:
    async with open_database(pg_dsn, pool_size=1) as db:
        await db.run(lambda c: c.execute("CREATE TABLE t (x int)"))
        with trio.move_on_after(0.05):
            await db.run(
                lambda c: c.execute("SELECT pg_sleep(0.3); INSERT INTO t VALUES (1)"),
                cancellable=False,
            )
        assert await db.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()) == (1,)


async def test_database_replaces_connections_the_server_terminated(pg_dsn: str) -> None:
    async with open_database(pg_dsn, pool_size=2) as db:
        first = await db.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone())
        assert first is not None
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first[0],))
        again = await db.run(lambda c: c.execute("SELECT pg_backend_pid()").fetchone())
        assert again is not None
        assert again != first


async def test_database_statement_errors_are_ours(pg_dsn: str) -> None:
    async with open_database(pg_dsn, pool_size=1) as db:
        with pytest.raises(SessionStoreError, match="statement failed") as info:
            await db.run(lambda c: c.execute("SELECT * FROM no_such_table"))
        assert not isinstance(info.value, SessionStoreUnavailableError)


async def test_open_database_unreachable_is_one_clear_error() -> None:
    dsn = "host=127.0.0.1 port=1 user=u password=s3cret dbname=x connect_timeout=1"
    with pytest.raises(SessionStoreUnavailableError) as info:
        async with open_database(dsn, pool_size=1):
            pass  # pragma: no cover
    assert "s3cret" not in info.value.message
    assert "127.0.0.1" in info.value.message


async def test_migrate_applies_once_under_concurrent_starts(pg_dsn: str) -> None:
    applied: list[int] = []
    async with open_database(pg_dsn, pool_size=4) as db:

        async def start() -> None:
            done = await db.run(migrate, cancellable=False)
            applied.append(len(done))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(start)
        status = await db.run(schema_status)
    assert sorted(applied) == [0, 0, 0, len(known_migrations())]
    assert status.current == status.known
    assert not status.pending


async def test_migrate_refuses_a_newer_schema(pg_dsn: str) -> None:
    async with open_database(pg_dsn, pool_size=1) as db:
        await db.run(migrate, cancellable=False)
        newer = len(known_migrations()) + 1
        await db.run(
            lambda c: c.execute(
                "INSERT INTO epiloop_schema (version, name) VALUES (%s, 'future')", (newer,)
            )
        )
        with pytest.raises(SessionStoreError, match="newer than this gateway knows"):
            await db.run(migrate, cancellable=False)
        assert (await db.run(schema_status)).too_new


async def test_database_fails_fast_while_the_server_is_away_and_recovers() -> None:
    bin_dir = postgres_binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) to run a private server")
    async with (
        open_private_postgres(bin_dir) as server,
        open_database(server.dsn, pool_size=2) as db,
    ):
        assert await db.run(lambda c: c.execute("SELECT 1").fetchone()) == (1,)
        await server.stop()
        with pytest.raises(SessionStoreUnavailableError):
            await db.run(lambda c: c.execute("SELECT 1").fetchone())
        # Known to be away now: the next call does not wait out the pool's checkout.
        started = trio.current_time()
        with pytest.raises(SessionStoreUnavailableError):
            await db.run(lambda c: c.execute("SELECT 1").fetchone())
        assert trio.current_time() - started < CONNECT_SECONDS / 2
        await server.start()
        with trio.fail_after(30):
            while True:
                try:
                    row = await db.run(lambda c: c.execute("SELECT 1").fetchone())
                except SessionStoreUnavailableError:
                    await trio.sleep(0.2)
                    continue
                break
        assert row == (1,)


async def test_database_uncancellable_call_returns_its_result_when_cancelled_meanwhile(
    pg_dsn: str,
) -> None:
    async with open_database(pg_dsn, pool_size=1) as db:
        await db.run(lambda c: c.execute("CREATE TABLE t (x int)"))
        got: list[object] = []
        with trio.move_on_after(0.05) as scope:
            got.append(
                await db.run(
                    lambda c: c.execute(
                        "INSERT INTO t SELECT 1 FROM pg_sleep(0.3) RETURNING x"
                    ).fetchone(),
                    cancellable=False,
                )
            )
            await trio.lowlevel.checkpoint()  # the pending cancellation lands here
        assert scope.cancelled_caught
        assert got == [(1,)]  # what was written is reported written, not lost


async def test_database_cancel_request_never_lands_on_the_next_call(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cancel request's own round trip is slow (a distant server, simulated): it must have
    # landed before the connection serves another call.
    real = database_module._cancel_quietly

    def slow_cancel(connection: psycopg.Connection) -> None:
        time.sleep(0.3)
        real(connection)

    monkeypatch.setattr(database_module, "_cancel_quietly", slow_cancel)
    async with open_database(pg_dsn, pool_size=1) as db:
        await db.run(lambda c: c.execute("CREATE TABLE t (x int)"))
        with trio.move_on_after(0.1):
            await db.run(lambda c: c.execute("SELECT pg_sleep(0.15)"))
        await db.run(
            lambda c: c.execute("SELECT pg_sleep(0.5); INSERT INTO t VALUES (1)"),
            cancellable=False,
        )
        assert await db.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()) == (1,)
