"""The SQLite session store: the file, atomic turns, concurrency, cancellation, crashes.

The behaviour every store shares is tested in ``test_contract.py`` against every store; these are
the properties only the SQLite store has.
"""

from __future__ import annotations

import itertools
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing

from trio_gateway.config.schema import SessionConfig
from trio_gateway.errors import GatewayError, SessionStoreError
from trio_gateway.messages import Role, ToolCall
from trio_gateway.sessions import (
    SessionStore,
    SqliteSessionStore,
    open_session_store,
    open_sqlite_store,
)
from trio_gateway.sessions.sqlite import SCHEMA_VERSION
from trio_gateway.sessions.store import SessionInfo, TranscriptEntry, Turn

BOUND = 10.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteSessionStore]:
    async with open_sqlite_store(tmp_path / "sessions.sqlite") as opened:
        yield opened


def user(text: str) -> TranscriptEntry:
    return TranscriptEntry("user", text)


_run_ids = itertools.count(1)


def turn(
    *entries: TranscriptEntry,
    run_id: str | None = None,
    at: float = 1.0,
    keep: int | None = None,
    prompt_tokens: int = 10,
) -> Turn:
    run_id = f"auto-{next(_run_ids)}" if run_id is None else run_id
    return Turn(run_id, "main", "local/echo", entries, "completed", prompt_tokens, 5, at, keep)


def raw(path: Path) -> sqlite3.Connection:
    """A second, plain connection to the store's file, as another process would open it."""
    return sqlite3.connect(path, isolation_level=None)


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    connection = raw(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def test_sqlite_store_implements_the_protocol() -> None:
    def check(store: SqliteSessionStore) -> SessionStore:
        return store  # mypy checks the structural match

    assert check is not None


async def test_sqlite_store_creates_private_directories_and_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "sessions.sqlite"
    async with open_sqlite_store(path):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


async def test_sqlite_store_leaves_existing_modes_alone(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite"
    path.touch(mode=0o640)
    path.chmod(0o640)
    async with open_sqlite_store(path):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


async def test_sqlite_store_file_has_the_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite"
    async with open_sqlite_store(path):
        pass
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    tables = {name for (name,) in rows(path, "SELECT name FROM sqlite_master")}
    assert {"sessions", "messages", "messages_by_position", "sessions_by_updated_at"} <= tables


async def test_sqlite_store_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite"
    calls = (ToolCall("call_1", "exec", '{"cmd": "date"}'),)
    entries = (
        user("what time is it?"),
        TranscriptEntry("assistant", "", tool_calls=calls, internal=True),
        TranscriptEntry("tool", "12:00", tool_call_id="call_1", internal=True),
        TranscriptEntry("assistant", "Noon, and then", "aborted"),
    )
    async with open_sqlite_store(path) as first:
        await first.record_turn("k", turn(*entries, at=1.0))
        await first.record_turn("j", turn(user("other"), at=2.0))
        before = await first.get("k")
    async with open_sqlite_store(path) as second:
        after = await second.get("k")
        assert after == before
        assert after is not None
        assert after.transcript == list(entries)
        assert [info.key for info in await second.list_sessions()] == ["j", "k"]
        await second.record_turn("k", turn(user("next"), at=3.0))
        assert [entry.content for entry in (await second.get("k") or after).transcript][-1] == (
            "next"
        )


async def test_sqlite_store_turn_failing_midway_leaves_nothing(
    store: SqliteSessionStore,
) -> None:
    bogus = TranscriptEntry(cast(Role, "narrator"), "violates the role CHECK constraint")
    with pytest.raises(GatewayError) as failed:
        await store.record_turn("new", turn(user("a"), user("b"), bogus, user("c")))
    assert failed.value.code == "session_store_error"
    assert isinstance(failed.value.__cause__, sqlite3.IntegrityError)
    assert await store.get("new") is None
    assert await store.list_sessions() == []
    assert rows(store.path, "SELECT count(*) FROM messages") == [(0,)]

    await store.record_turn("k", turn(user("one"), user("two"), at=1.0))
    before = await store.get("k")
    with pytest.raises(GatewayError):
        await store.record_turn(
            "k", turn(user("x"), bogus, run_id="run-2", at=2.0, keep=0, prompt_tokens=100)
        )
    # Neither the truncation, the entries before the bad one, nor the totals were applied.
    assert await store.get("k") == before
    # The connection is not left inside a transaction: the next turn lands.
    info = await store.record_turn("k", turn(user("three"), run_id="run-3", at=3.0))
    assert (info.message_count, info.last_run_id, info.prompt_tokens) == (3, "run-3", 20)
    assert await store.check_integrity()


async def test_sqlite_store_delete_and_reset_leave_no_orphan_messages(
    store: SqliteSessionStore,
) -> None:
    await store.record_turn("a", turn(user("1"), user("2")))
    await store.record_turn("b", turn(user("3")))
    await store.delete("a")
    await store.reset("b")
    await store.record_turn("c", turn(user("4")))
    assert rows(store.path, "SELECT session_key, position, content FROM messages") == [
        ("c", 0, "4")
    ]
    assert rows(store.path, "PRAGMA foreign_key_check") == []


async def test_sqlite_store_closed_store_refuses_work(store: SqliteSessionStore) -> None:
    await store.aclose()
    with pytest.raises(GatewayError, match="closed"):
        await store.get("k")
    with pytest.raises(GatewayError, match="closed"):
        await store.record_turn("k", turn(user("a")))
    with pytest.raises(GatewayError, match="closed"):
        await store.check_integrity()
    await store.aclose()


async def test_sqlite_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite"
    connection = raw(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(GatewayError, match="newer than this gateway"):
        async with open_sqlite_store(path):
            pass


@pytest.mark.parametrize("kind", ["a directory", "not a database"])
async def test_sqlite_store_open_failure_is_a_gateway_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "sessions.sqlite"
    if kind == "a directory":
        path.mkdir()
    else:
        path.write_bytes(b"this is not an SQLite file at all, " * 200)
    with pytest.raises(GatewayError, match="Cannot open the session store") as failed:
        async with open_sqlite_store(path):
            pass
    assert failed.value.code == "session_store_error"


async def test_sqlite_store_open_refuses_a_file_whose_tables_are_damaged(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite"
    async with open_sqlite_store(path) as store:
        for index in range(20):
            await store.record_turn(f"k{index}", turn(user("x" * 100), at=float(index)))
    ((root,),) = rows(path, "SELECT rootpage FROM sqlite_master WHERE name = 'sessions'")
    ((page_size,),) = rows(path, "PRAGMA page_size")
    assert isinstance(root, int)
    assert isinstance(page_size, int)
    with path.open("r+b") as file:  # garbage over the sessions table's root page
        file.seek((root - 1) * page_size)
        file.write(b"\xa5" * page_size)
    with pytest.raises(SessionStoreError, match="cannot be used") as failed:
        async with open_sqlite_store(path):
            pass
    assert "malformed" in failed.value.message
    assert "epiloop doctor" in failed.value.message


async def test_sqlite_store_full_fails_the_write_and_health_until_a_write_succeeds(
    tmp_path: Path,
) -> None:
    # SQLite's max_page_count: the file is "full" as on a full disk (SQLITE_FULL).
    async with open_sqlite_store(tmp_path / "sessions.sqlite", max_bytes=64 * 4096) as store:
        await store.record_turn("small", turn(user("x" * 20_000)))
        assert store.health() is None
        with pytest.raises(SessionStoreError) as failed:
            await store.record_turn("big", turn(user("y" * 400_000)))
        assert failed.value.code == "session_store_error"
        assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
        assert "full" in (store.health() or "")
        assert await store.get("big") is None
        # Reads still work, but the store stays unhealthy: the probe writes as much as the
        # write that failed, and there is no room for that.
        assert await store.get("small") is not None
        with pytest.raises(SessionStoreError):
            await store.probe()
        assert "full" in (store.health() or "")
        # A write that fits succeeds: the store is healthy again.
        await store.record_turn("small", turn(user("fits"), run_id="run-2"))
        assert store.health() is None
        await store.probe()
        assert store.health() is None


async def test_sqlite_store_checkpoints_the_wal_while_another_connection_reads(
    tmp_path: Path,
) -> None:
    """Another connection (a second gateway worker) that keeps reading keeps SQLite's own
    PASSIVE checkpoints from ever restarting the log; the store's TRUNCATE checkpoint does."""
    path = tmp_path / "sessions.sqlite"
    stop = threading.Event()

    def keep_reading() -> None:
        reader = raw(path)
        try:
            while not stop.is_set():
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM messages").fetchone()
                time.sleep(0.001)
                reader.execute("ROLLBACK")
        finally:
            reader.close()

    async with open_sqlite_store(path, checkpoint_seconds=0.0) as store:
        thread = threading.Thread(target=keep_reading)
        thread.start()
        try:
            with trio.fail_after(BOUND * 3):
                for index in range(300):
                    await store.record_turn(f"k{index % 10}", turn(user(f"{index} " + "x" * 4000)))
            wal_bytes = (await trio.Path(f"{path}-wal").stat()).st_size
        finally:
            stop.set()
            await trio.to_thread.run_sync(thread.join)
        assert await store.check_integrity()
        assert len(await store.list_sessions()) == 10
    # 300 turns of 4 kB each: without a checkpoint that can restart the log, it holds them all.
    assert wal_bytes < 256 * 1024, wal_bytes


async def test_open_session_store_applies_the_session_settings(tmp_path: Path) -> None:
    config = SessionConfig(
        path=str(tmp_path / "sessions.sqlite"), wal_checkpoint_seconds=0, max_bytes=1 << 20
    )
    async with open_session_store(config, tmp_path) as store:
        await store.record_turn("k", turn(user("a")))
        # walCheckpointSeconds 0: every write ends with a TRUNCATE checkpoint.
        assert (await trio.Path(f"{config.path}-wal").stat()).st_size == 0
        with pytest.raises(SessionStoreError):  # maxBytes: 1 MiB
            await store.record_turn("k", turn(user("x" * (2 << 20))))
        assert "full" in (store.health() or "")


async def test_sqlite_store_check_integrity(store: SqliteSessionStore) -> None:
    assert await store.check_integrity() is True
    await store.record_turn("k", turn(*(user(f"entry {i}") for i in range(50))))
    assert await store.check_integrity() is True


async def test_sqlite_store_check_integrity_finds_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite"
    async with open_sqlite_store(path) as store:
        await store.record_turn("k", turn(*(user(f"{i:05d} " + "x" * 1000) for i in range(400))))
    (page_size,) = rows(path, "PRAGMA page_size")[0]
    assert isinstance(page_size, int)
    assert path.stat().st_size > 40 * page_size
    with path.open("r+b") as file:  # garbage over a few pages in the middle of the data
        file.seek(20 * page_size)
        file.write(b"\xa5" * (4 * page_size))
    async with open_sqlite_store(path) as store:
        assert await store.check_integrity() is False


async def test_sqlite_store_cancelled_write_still_lands_whole(store: SqliteSessionStore) -> None:
    blocker = raw(store.path)  # another writer holds the file's write lock
    blocker.execute("BEGIN IMMEDIATE")
    returned: list[SessionInfo] = []

    async def record() -> None:
        returned.append(await store.record_turn("k", turn(user("a"), user("b"))))

    try:
        with trio.fail_after(BOUND), trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(record)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel(reason="test: the caller gave up mid-write")
                blocker.execute("ROLLBACK")  # only now can the write proceed
    finally:
        blocker.close()
    # record_turn ran to the end despite the cancellation: it returned, the turn is stored whole.
    assert scope.cancel_called
    assert [info.message_count for info in returned] == [2]
    session = await store.get("k")
    assert session is not None
    assert session.transcript == [user("a"), user("b")]


async def test_sqlite_store_read_waiting_for_the_lock_is_cancellable(
    store: SqliteSessionStore,
) -> None:
    blocker = raw(store.path)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.record_turn, "k", turn(user("a")))
                await trio.testing.wait_all_tasks_blocked()
                with trio.move_on_after(0.2) as waiting:  # the write holds the store's lock
                    await store.get("k")
                assert waiting.cancelled_caught
                blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    assert await store.get("k") is not None


@pytest.mark.slow
async def test_sqlite_store_cancelled_read_is_interrupted(store: SqliteSessionStore) -> None:
    with trio.fail_after(BOUND):
        await store.record_turn("big", turn(*(user(f"message {i}") for i in range(40_000))))
        started = time.monotonic()
        assert await store.get("big") is not None
        full_read = time.monotonic() - started

        got: list[object] = []

        async def read() -> None:
            got.append(await store.get("big"))

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()  # the read's thread is running
                started = time.monotonic()
                scope.cancel(reason="test: the caller gave up mid-read")
        cancelled_read = time.monotonic() - started
    assert scope.cancelled_caught
    assert got == []
    assert cancelled_read < full_read / 2, (cancelled_read, full_read)
    # Nothing is left over: no open transaction, no pending stop.
    session = await store.get("big")
    assert session is not None
    assert session.message_count == 40_000
    info = await store.record_turn("big", turn(user("one more")))
    assert info.message_count == 40_001
    assert await store.check_integrity()


#: Records turns in a loop; prints ``started <n>`` before each ``record_turn``, ``stored <n>``
#: once it returned.
CRASHING_WRITER = """
import sys
from pathlib import Path

import trio

from trio_gateway.sessions.sqlite import open_sqlite_store
from trio_gateway.sessions.store import TranscriptEntry, Turn

PER_TURN = int(sys.argv[2])


async def main() -> None:
    async with open_sqlite_store(Path(sys.argv[1])) as store:
        session = await store.get("crash")
        first = 0 if session is None else session.message_count // PER_TURN
        for n in range(first, first + 100_000):
            entries = [
                TranscriptEntry("user", f"turn {n} entry {i} " + "x" * 1000)
                for i in range(PER_TURN)
            ]
            turn = Turn(f"run-{n}", "main", "m", entries, "completed", 1, 2, float(n))
            print("started", n, flush=True)
            await store.record_turn("crash", turn)
            print("stored", n, flush=True)


trio.run(main)
"""


async def run_until_killed(path: Path, per_turn: int, turns: int) -> int:
    """Start the writer; SIGKILL it as it starts its ``turns``-th turn (while it writes it).

    Returns the number of the last turn reported stored.
    """
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", CRASHING_WRITER, str(path), str(per_turn)],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    output = b""
    lines: list[list[str]] = []
    try:
        while sum(line[0] == "started" for line in lines) < turns:
            chunk = await process.stdout.receive_some()
            assert chunk, f"the writer exited early: {output!r}"
            output += chunk
            complete = output[: output.rfind(b"\n") + 1]
            lines = [line.split() for line in complete.decode().splitlines()]
    finally:
        process.kill()  # most likely while the turn is being written
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    return max(int(n) for word, n in lines if word == "stored")


@pytest.mark.slow
async def test_sqlite_store_completed_turns_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite"
    per_turn = 100
    with trio.fail_after(BOUND):
        for _ in range(2):
            stored = await run_until_killed(path, per_turn, turns=10)
            assert await trio.Path(f"{path}-wal").exists()  # killed: no clean close
            async with open_sqlite_store(path) as store:
                assert await store.check_integrity()
                session = await store.get("crash")
            assert session is not None
            turns, partial = divmod(session.message_count, per_turn)
            assert partial == 0
            assert turns > stored  # every turn reported stored, maybe the one in flight
            assert (session.prompt_tokens, session.completion_tokens) == (turns, 2 * turns)
            assert session.last_run_id == f"run-{turns - 1}"
            expected = [
                f"turn {n} entry {i} " + "x" * 1000 for n in range(turns) for i in range(per_turn)
            ]
            assert [entry.content for entry in session.transcript] == expected
