"""A durable session store: one SQLite file, written a whole turn at a time.

Owns the one connection to the file (opened, migrated and checkpointed by
``sessions.sqlite_file``), the statements of each operation, and the translation of ``sqlite3``
and ``OSError`` failures into :class:`~trio_gateway.errors.SessionStoreError` (code
``session_store_error``). It keeps exactly the semantics of
:class:`~trio_gateway.sessions.memory.MemorySessionStore`; one contract test suite runs against
every store. Imports nothing above ``sessions`` (no agent, server or wire).

Concurrency. All SQLite work runs in a worker thread on one connection
(``check_same_thread=False``), one call at a time under a :class:`trio.Lock`, so statements of
two calls never interleave on the connection.

Cancellation.

- Writes (:meth:`~SqliteSessionStore.record_turn`, ``reset``, ``delete``) are one transaction
  each and, once their thread has started, run to the end (``abandon_on_cancel=False``): a turn
  is never half-handled, and the caller learns of its cancellation right after. Waiting for the
  lock is cancellable, and nothing has started then. A write is bounded by SQLite's busy timeout
  (:data:`BUSY_TIMEOUT_MS`) when another process holds the file's write lock.
- Reads (``get``, ``list_sessions``, ``check_integrity``) are cancellable: a cancellation raises
  a flag that SQLite's progress handler checks every :data:`PROGRESS_INSTRUCTIONS` virtual-machine
  instructions, so the running (or next) statement stops with "interrupted", the read
  transaction is rolled back, and the caller gets ``trio.Cancelled``. The read still waits for
  its thread to return, which it then does at once, so the connection is never used by two
  threads. (A flag rather than ``sqlite3_interrupt``, which is lost if it lands between two
  statements.)

Durability: ``journal_mode=WAL`` with ``synchronous=NORMAL``. Every write is a single
``BEGIN IMMEDIATE ... COMMIT`` transaction, so a turn is stored whole or not at all, whatever
happens. In WAL mode a commit is appended to the ``-wal`` file with ``write()`` before
``COMMIT`` returns, so a completed turn survives a crash of the process (``kill -9``), which is
the failure a gateway actually sees; the WAL is ``fsync``-ed at checkpoints, not at every
commit, so a power loss or kernel crash can lose the last few turns, never part of one, and
never corrupts the file. ``synchronous=FULL`` would add one ``fsync`` per turn, serialised
behind the store's lock; we judged power-loss durability of the very last turns not worth a cap
on turn throughput. (If the file system refuses WAL, the store falls back to the rollback
journal with ``synchronous=FULL``, the setting that is safe in that mode, and logs a warning.)

Health. The store remembers whether its last read and its last write failed for a reason of the
storage (a damaged file, a full disk, an I/O error; not a constraint a bad turn broke):
:meth:`~SqliteSessionStore.health` says what failed, and the next read or write that succeeds
clears it. :meth:`~SqliteSessionStore.probe` is a real read and a real write (a row inserted and
deleted again in one committed transaction, padded so that it needs new pages, as large as the
write that last failed, up to :data:`PROBE_MAX_BYTES`); opening the store runs it once, so a
damaged or unwritable file is refused at start.

Checkpoints. SQLite's automatic checkpoint (after a commit that leaves 1000 pages in the WAL) is
``PASSIVE``: it copies what it can into the main file but never restarts the log while another
connection reads. With several gateway processes (hypercorn workers) or any other reader on the
file, some connection is nearly always inside a read transaction under steady traffic, so the
``-wal`` file grew without bound. With ``checkpoint_seconds`` set, the first write after each
interval ends with ``PRAGMA wal_checkpoint(TRUNCATE)``, which waits briefly
(:data:`CHECKPOINT_BUSY_MS`) for the readers to move on, copies the whole log into the file and
truncates it to zero bytes; if the readers do not move on in time it is tried again at the next
write.

Images are stored once by their SHA-256 in the ``images`` table (a message references them);
``session_images`` records which images each session holds, and a write that lets go of an image
(a delete, a reset, a turn that truncates past it) removes it in the same transaction when no
other session holds it.

Text that UTF-8 cannot encode (a lone surrogate, as ``surrogateescape``-decoded tool output may
contain) is stored as a BLOB of its ``surrogatepass`` encoding and decoded back on read
(``sessions.rows``), so every string round-trips exactly, as in memory.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio

from ..errors import SessionStoreError
from .response_rows import RESPONSE_COLUMNS, response_from_row, response_values
from .rows import (
    ENTRY_FIELDS,
    DamagedRowError,
    decode_image_refs,
    encode_image_refs,
    encode_tool_calls,
    entry_from_row,
    info_from_row,
    session_of,
    text_or_bytes,
    turn_bytes,
    turn_images,
    with_image_bytes,
)
from .sqlite_file import (
    BUSY_TIMEOUT_MS,
    CHECKPOINT_BUSY_MS,
    SCHEMA_VERSION,
    Checkpoints,
    connect,
    in_read_transaction,
    in_write_transaction,
    integrity_problems,
)
from .store import UNFINISHED, LoggedEvent, Session, SessionInfo, StoredResponse, Turn

__all__ = [
    "BUSY_TIMEOUT_MS",
    "CHECKPOINT_BUSY_MS",
    "PROBE_MAX_BYTES",
    "SCHEMA_VERSION",
    "SqliteSessionStore",
    "open_sqlite_store",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How often (in SQLite virtual-machine instructions) a read checks whether it was cancelled.
PROGRESS_INSTRUCTIONS = 1_000

#: How long closing the store may take when its context exits (shielded from cancellation).
CLOSE_BOUND_SECONDS = 10.0

#: The smallest and the largest padding of :meth:`SqliteSessionStore.probe`'s write.
PROBE_MIN_BYTES = 4096
PROBE_MAX_BYTES = 1 << 20

#: The key of the row the probe inserts and deletes in the same transaction (never visible).
_PROBE_KEY = "\x00epiloop-store-probe"

#: Failures that are the input's fault, not the storage's: they leave the store's health alone.
_NOT_STORAGE_FAULTS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)

_SESSION_COLUMNS = (
    "s.key, s.agent_id, s.created_at, s.updated_at, s.model, s.last_status, s.last_run_id, "
    "s.prompt_tokens, s.completion_tokens, "
    "(SELECT count(*) FROM messages AS m WHERE m.session_key = s.key)"
)

_UPSERT_SESSION = """
    INSERT INTO sessions (key, agent_id, created_at, updated_at, model, last_status, last_run_id,
                          prompt_tokens, completion_tokens)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET
        updated_at = excluded.updated_at,
        model = excluded.model,
        last_status = excluded.last_status,
        last_run_id = excluded.last_run_id,
        prompt_tokens = sessions.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = sessions.completion_tokens + excluded.completion_tokens
"""

_INSERT_MESSAGE = """
    INSERT INTO messages (session_key, position, role, content, status, tool_calls, tool_call_id,
                          name, internal, images)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


class SqliteSessionStore:
    """Sessions in one SQLite file. Open it with :func:`open_sqlite_store`.

    ``connection`` must come from the store's own setup (WAL, foreign keys, the current schema):
    :func:`open_sqlite_store` does that and closes the store when its context exits.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        *,
        checkpoint_seconds: float | None = None,
    ) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = connection
        self._lock = trio.Lock()
        #: What the last read / the last write that failed for a storage reason said.
        self._read_failure: str | None = None
        self._write_failure: str | None = None
        #: How large the write that failed was (the probe then writes as much).
        self._failed_write_bytes = 0
        self._checkpoints = Checkpoints(checkpoint_seconds)
        #: Set while a cancelled read winds down: makes SQLite stop the statement it runs.
        self._stop_reading = threading.Event()
        connection.set_progress_handler(self._stop_reading.is_set, PROGRESS_INSTRUCTIONS)

    async def get(self, key: str) -> Session | None:
        return await self._read("get", partial(_get, key=key))

    async def record_turn(self, key: str, turn: Turn) -> SessionInfo:
        """Store ``turn`` in one transaction: whole, or (on any error) not at all."""
        return await self._write(
            "record_turn", partial(_record_turn, key=key, turn=turn), size=turn_bytes(turn)
        )

    async def list_sessions(
        self, *, agent_id: str | None = None, limit: int = 100
    ) -> list[SessionInfo]:
        """The most recently updated sessions first (ties: the oldest session first)."""
        return await self._read("list_sessions", partial(_list, agent_id=agent_id, limit=limit))

    async def reset(self, key: str) -> bool:
        """Clear the transcript and totals, keep the session; ``False`` if there is none."""
        return await self._write("reset", partial(_reset, key=key))

    async def delete(self, key: str) -> bool:
        """Remove the session; ``False`` if there is none."""
        return await self._write("delete", partial(_delete, key=key))

    async def save_response(
        self, response: StoredResponse, events: Sequence[LoggedEvent] = ()
    ) -> None:
        """Store ``response`` and append ``events``: one transaction."""
        size = len(response.body) + sum(len(event.data) for event in events)
        await self._write(
            "save_response",
            partial(_save_response, response=response, events=tuple(events)),
            size=size,
        )

    async def get_response(self, response_id: str) -> StoredResponse | None:
        return await self._read("get_response", partial(_get_response, response_id=response_id))

    async def response_events(
        self, response_id: str, *, after: int, limit: int
    ) -> list[LoggedEvent]:
        return await self._read(
            "response_events",
            partial(_response_events, response_id=response_id, after=after, limit=limit),
        )

    async def delete_response(self, response_id: str) -> bool:
        return await self._write(
            "delete_response", partial(_delete_response, response_id=response_id)
        )

    async def sweep_responses(self, now: float) -> int:
        return await self._write("sweep_responses", partial(_sweep_responses, now=now))

    async def unfinished_responses(self) -> list[StoredResponse]:
        return await self._read("unfinished_responses", _unfinished_responses)

    def health(self) -> str | None:
        """``None`` while the last read and the last write succeeded; else what failed."""
        if self._connection is None:
            return "the session store is closed"
        return self._write_failure or self._read_failure

    async def probe(self) -> None:
        """A real read and a real write; raises :class:`SessionStoreError` if either fails.

        The write inserts a row padded to at least :data:`PROBE_MIN_BYTES` (as large as the last
        write that failed, up to :data:`PROBE_MAX_BYTES`) and deletes it in the same committed
        transaction: nothing changes that a reader could see, but the file must have room for it.
        """
        await self._read("probe", _probe_read)
        size = min(max(PROBE_MIN_BYTES, self._failed_write_bytes), PROBE_MAX_BYTES)
        await self._write("probe", partial(_probe_write, size=size), size=size)

    async def check_integrity(self) -> bool:
        """``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check`` both find nothing wrong.

        A file SQLite reports as corrupt (or as not a database) is ``False`` too; the problems
        found are logged. Cancellable, like every read.
        """
        problems = await self.integrity_problems()
        for problem in problems[:20]:
            logger.warning("session_store.integrity.failed path=%s problem=%s", self.path, problem)
        return not problems

    async def integrity_problems(self) -> list[str]:
        """What ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check`` find (``[]``: none).

        A file SQLite reports as corrupt (or as not a database) gives SQLite's message.
        """
        async with self._lock:
            connection = self._open_connection()
            try:
                problems = await self._interruptible(connection, integrity_problems)
            except sqlite3.Error as exc:
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                if code not in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                    raise _store_error("check_integrity", exc) from exc
                problems = [str(exc)]
        return problems

    async def aclose(self) -> None:
        """Close the connection once work in progress is done. Idempotent."""
        async with self._lock:
            connection, self._connection = self._connection, None
            if connection is None:
                return
            try:
                # Closing the last connection checkpoints the WAL into the main file.
                await trio.to_thread.run_sync(connection.close, abandon_on_cancel=False)
            except sqlite3.Error as exc:
                raise _store_error("close", exc) from exc
        logger.info("session_store.close.complete path=%s", self.path)

    def _open_connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise SessionStoreError("The session store is closed.")
        return self._connection

    async def _read(self, operation: str, work: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            connection = self._open_connection()
            try:
                value = await self._interruptible(connection, partial(in_read_transaction, work))
            except (sqlite3.Error, DamagedRowError) as exc:
                if not isinstance(exc, _NOT_STORAGE_FAULTS):
                    self._read_failure = f"{operation} failed: {exc}"
                raise _store_error(operation, exc) from exc
            self._read_failure = None
            return value

    async def _interruptible(
        self, connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]
    ) -> T:
        """``work(connection)`` in a worker thread; a cancellation stops its SQL.

        ``trio.to_thread.run_sync`` either ignores a cancellation or abandons the thread, which
        would leave the connection in use once the lock is released. This always waits for the
        thread, stops its SQL when cancelled, then delivers the cancellation. Call with the lock.
        """
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()
        stop = self._stop_reading

        def abort(raise_cancel: object) -> trio.lowlevel.Abort:
            stop.set()  # the progress handler now ends the statement; keep waiting for the thread
            return trio.lowlevel.Abort.FAILED

        await trio.lowlevel.checkpoint_if_cancelled()
        trio.lowlevel.start_thread_soon(
            partial(work, connection),
            lambda result: token.run_sync_soon(trio.lowlevel.reschedule, task, result),
            name="epiloop session store read",
        )
        try:
            value: T = await trio.lowlevel.wait_task_rescheduled(abort)
        except sqlite3.OperationalError:
            # Stopped by the progress handler: raise the cancellation that stopped it instead.
            await trio.lowlevel.checkpoint_if_cancelled()
            raise
        finally:
            stop.clear()
        # A read that finished as it was cancelled is dropped: reads have no effects.
        await trio.lowlevel.checkpoint_if_cancelled()
        return value

    async def _write(
        self, operation: str, work: Callable[[sqlite3.Connection], T], *, size: int = 0
    ) -> T:
        async with self._lock:
            connection = self._open_connection()
            try:
                value = await trio.to_thread.run_sync(
                    self._write_in_thread, work, connection, abandon_on_cancel=False
                )
            except sqlite3.Error as exc:
                if not isinstance(exc, _NOT_STORAGE_FAULTS):
                    self._write_failure = f"{operation} failed: {exc}"
                    self._failed_write_bytes = size
                raise _store_error(operation, exc) from exc
            self._write_failure = None
            self._failed_write_bytes = 0
            return value

    def _write_in_thread(
        self, work: Callable[[sqlite3.Connection], T], connection: sqlite3.Connection
    ) -> T:
        value = in_write_transaction(work, connection)
        self._checkpoints.after_write(connection, self.path)
        return value


@asynccontextmanager
async def open_sqlite_store(
    path: Path, *, checkpoint_seconds: float | None = None, max_bytes: int | None = None
) -> AsyncIterator[SqliteSessionStore]:
    """Open (creating or migrating) the store at ``path``; close it when the context exits.

    Missing parent directories are created with mode ``0o700`` and a new file with ``0o600``
    (existing ones keep their modes). Raises :class:`SessionStoreError` if the file cannot be
    opened, was written by a newer version of the gateway, or fails the
    :meth:`~SqliteSessionStore.probe` (a damaged or unwritable file). ``checkpoint_seconds``:
    checkpoint and truncate the WAL at most this often (see the module docstring); ``None``:
    only SQLite's own checkpoints. ``max_bytes``: the database may not grow past this (SQLite's
    ``max_page_count``); a write that needs more fails as on a full disk. ``None``: no limit.
    """
    logger.debug("session_store.open.started path=%s", path)
    try:
        connection = await trio.to_thread.run_sync(
            partial(connect, path, max_bytes=max_bytes), abandon_on_cancel=False
        )
    except (sqlite3.Error, OSError) as exc:
        logger.error("session_store.open.failed path=%s error=%s", path, exc)
        raise SessionStoreError(f"Cannot open the session store {str(path)!r}: {exc}") from exc
    store = SqliteSessionStore(connection, path, checkpoint_seconds=checkpoint_seconds)
    try:
        try:
            await store.probe()
        except SessionStoreError as exc:
            reason = store.health() or exc.message
            logger.error("session_store.open.failed path=%s error=%s", path, reason)
            raise SessionStoreError(
                f"The session store {str(path)!r} cannot be used: {reason}. "
                "Run 'epiloop doctor' for details; move the file away to start with no sessions."
            ) from exc
        logger.info("session_store.open.complete path=%s schema_version=%d", path, SCHEMA_VERSION)
        yield store
    finally:
        with trio.move_on_after(CLOSE_BOUND_SECONDS, shield=True) as scope:
            await store.aclose()
        if scope.cancelled_caught:
            logger.error("session_store.close.failed path=%s reason=timeout", path)


# --- errors ---------------------------------------------------------------------------------


def _store_error(operation: str, exc: Exception) -> SessionStoreError:
    logger.error("session_store.%s.failed error=%s", operation, exc)
    return SessionStoreError(f"The session store failed ({operation}).")


def _get(connection: sqlite3.Connection, *, key: str) -> Session | None:
    rows = connection.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions AS s WHERE s.key = ?", (text_or_bytes(key),)
    ).fetchall()
    if not rows:
        return None
    info = info_from_row(rows[0])
    messages = connection.execute(
        f"SELECT {', '.join(ENTRY_FIELDS)} FROM messages WHERE session_key = ? ORDER BY position",
        (text_or_bytes(key),),
    ).fetchall()
    entries = [entry_from_row(row) for row in messages]
    hashes = sorted({i.sha256 for entry in entries for i in entry.images if i.url is None})
    if hashes:
        stored = {
            str(sha256): (str(media_type), bytes(data))
            for sha256, media_type, data in connection.execute(
                f"SELECT sha256, media_type, data FROM images WHERE sha256 IN "
                f"({', '.join('?' * len(hashes))})",
                hashes,
            )
        }
        entries = with_image_bytes(entries, stored)
    return session_of(info, entries)


def _record_turn(connection: sqlite3.Connection, *, key: str, turn: Turn) -> SessionInfo:
    bound_key = text_or_bytes(key)
    bound_run_id = text_or_bytes(turn.run_id)
    stored = connection.execute(
        "SELECT 1 FROM turns WHERE session_key = ? AND run_id = ?", (bound_key, bound_run_id)
    ).fetchone()
    if stored is None:
        _store_turn(connection, bound_key, bound_run_id, turn)
    (row,) = connection.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions AS s WHERE s.key = ?", (bound_key,)
    ).fetchall()
    return info_from_row(row)


def _store_turn(
    connection: sqlite3.Connection, bound_key: str | bytes, bound_run_id: str | bytes, turn: Turn
) -> None:
    connection.execute(
        _UPSERT_SESSION,
        (
            bound_key,
            text_or_bytes(turn.agent_id),
            turn.at,
            turn.at,
            text_or_bytes(turn.model),
            turn.status,
            bound_run_id,
            turn.prompt_tokens,
            turn.completion_tokens,
        ),
    )
    (count,) = connection.execute(
        "SELECT count(*) FROM messages WHERE session_key = ?", (bound_key,)
    ).fetchone()
    if turn.keep is not None:
        # The same bounds as ``del transcript[keep:]``: past the end keeps all, negative counts
        # from the end.
        count = slice(turn.keep, None).indices(count)[0]
        connection.execute(
            "DELETE FROM messages WHERE session_key = ? AND position >= ?", (bound_key, count)
        )
    connection.executemany(
        _INSERT_MESSAGE,
        (
            (
                bound_key,
                position,
                entry.role,
                text_or_bytes(entry.content),
                entry.status,
                encode_tool_calls(entry.tool_calls),
                _bind_optional(entry.tool_call_id),
                _bind_optional(entry.name),
                1 if entry.internal else 0,
                encode_image_refs(entry.images),
            )
            for position, entry in enumerate(turn.entries, start=count)
        ),
    )
    connection.execute(
        "INSERT INTO turns (session_key, run_id) VALUES (?, ?)", (bound_key, bound_run_id)
    )
    new_images = turn_images(turn)
    connection.executemany(
        "INSERT INTO images (sha256, media_type, size, data) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (sha256) DO NOTHING",
        (
            (sha256, image.media_type, image.size, image.data)
            for sha256, image in sorted(new_images.items())
        ),
    )
    if new_images or turn.keep is not None:
        _sync_images(connection, bound_key)


def _sync_images(connection: sqlite3.Connection, bound_key: str | bytes) -> None:
    """Record which images the session's transcript holds now; remove those nobody holds."""
    now: set[str] = set()
    for (refs,) in connection.execute(
        "SELECT images FROM messages WHERE session_key = ? AND images IS NOT NULL", (bound_key,)
    ):
        now.update(image.sha256 for image in decode_image_refs(refs) if image.url is None)
    before = {
        str(sha256)
        for (sha256,) in connection.execute(
            "SELECT sha256 FROM session_images WHERE session_key = ?", (bound_key,)
        )
    }
    connection.executemany(
        "INSERT INTO session_images (session_key, sha256) VALUES (?, ?)",
        ((bound_key, sha256) for sha256 in sorted(now - before)),
    )
    gone = sorted(before - now)
    connection.executemany(
        "DELETE FROM session_images WHERE session_key = ? AND sha256 = ?",
        ((bound_key, sha256) for sha256 in gone),
    )
    _collect_images(connection, gone)


def _collect_images(connection: sqlite3.Connection, candidates: list[str]) -> None:
    """Remove the ``candidates`` no session holds any more."""
    connection.executemany(
        "DELETE FROM images WHERE sha256 = ? "
        "AND NOT EXISTS (SELECT 1 FROM session_images WHERE session_images.sha256 = images.sha256)",
        ((sha256,) for sha256 in candidates),
    )


def _list(connection: sqlite3.Connection, *, agent_id: str | None, limit: int) -> list[SessionInfo]:
    where = ""
    parameters: tuple[str | bytes, ...] = ()
    if agent_id is not None:
        where, parameters = (
            "WHERE epiloop_lower(s.agent_id) = ?",
            (text_or_bytes(agent_id.lower()),),
        )
    # rowid: a new session's is above every existing one's, so ties list in creation order,
    # as the memory store's stable sort does.
    rows = connection.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions AS s {where} "
        "ORDER BY s.updated_at DESC, s.rowid LIMIT ?",
        (*parameters, limit if limit >= 0 else -1),
    ).fetchall()
    if limit < 0:  # ``sessions[:limit]`` semantics, as in memory
        rows = rows[:limit]
    return [info_from_row(row) for row in rows]


def _reset(connection: sqlite3.Connection, *, key: str) -> bool:
    updated = connection.execute(
        "UPDATE sessions SET prompt_tokens = 0, completion_tokens = 0 WHERE key = ?",
        (text_or_bytes(key),),
    ).rowcount
    if not updated:
        return False
    connection.execute("DELETE FROM messages WHERE session_key = ?", (text_or_bytes(key),))
    _sync_images(connection, text_or_bytes(key))
    return True


def _delete(connection: sqlite3.Connection, *, key: str) -> bool:
    bound_key = text_or_bytes(key)
    held = [
        str(sha256)
        for (sha256,) in connection.execute(
            "SELECT sha256 FROM session_images WHERE session_key = ?", (bound_key,)
        )
    ]
    # The session's messages and image references go with it (ON DELETE CASCADE).
    deleted = connection.execute("DELETE FROM sessions WHERE key = ?", (bound_key,)).rowcount > 0
    _collect_images(connection, held)
    return deleted


_RESPONSE_SELECT = f"SELECT {', '.join(RESPONSE_COLUMNS)} FROM responses"
_UPSERT_RESPONSE = (
    f"INSERT OR REPLACE INTO responses ({', '.join(RESPONSE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(RESPONSE_COLUMNS))})"
)


def _save_response(
    connection: sqlite3.Connection, *, response: StoredResponse, events: tuple[LoggedEvent, ...]
) -> None:
    # INSERT OR REPLACE would delete the row first (and its events with it, by the cascade):
    # update in place when it exists.
    values = response_values(response)
    updated = connection.execute(
        f"UPDATE responses SET ({', '.join(RESPONSE_COLUMNS[1:])}) = "
        f"({', '.join('?' * (len(RESPONSE_COLUMNS) - 1))}) WHERE id = ?",
        (*values[1:], response.id),
    ).rowcount
    if not updated:
        connection.execute(_UPSERT_RESPONSE, values)
    connection.executemany(
        "INSERT OR IGNORE INTO response_events (response_id, sequence, data) VALUES (?, ?, ?)",
        [(response.id, event.sequence, event.data) for event in events],
    )


def _get_response(connection: sqlite3.Connection, *, response_id: str) -> StoredResponse | None:
    row = connection.execute(f"{_RESPONSE_SELECT} WHERE id = ?", (response_id,)).fetchone()
    return None if row is None else response_from_row(row)


def _response_events(
    connection: sqlite3.Connection, *, response_id: str, after: int, limit: int
) -> list[LoggedEvent]:
    rows = connection.execute(
        "SELECT sequence, data FROM response_events WHERE response_id = ? AND sequence > ? "
        "ORDER BY sequence LIMIT ?",
        (response_id, after, limit),
    ).fetchall()
    return [LoggedEvent(sequence, bytes(data)) for sequence, data in rows]


def _delete_response(connection: sqlite3.Connection, *, response_id: str) -> bool:
    # Its events go with it (ON DELETE CASCADE).
    return connection.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0


def _sweep_responses(connection: sqlite3.Connection, *, now: float) -> int:
    return connection.execute(
        "DELETE FROM responses WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
    ).rowcount


def _unfinished_responses(connection: sqlite3.Connection) -> list[StoredResponse]:
    marks = ", ".join("?" * len(UNFINISHED))
    rows = connection.execute(
        f"{_RESPONSE_SELECT} WHERE status IN ({marks}) ORDER BY created_at", tuple(UNFINISHED)
    ).fetchall()
    return [response_from_row(row) for row in rows]


def _bind_optional(text: str | None) -> str | bytes | None:
    return None if text is None else text_or_bytes(text)


def _probe_read(connection: sqlite3.Connection) -> None:
    """Read the most recent session and its last message, through both tables' indexes."""
    row = connection.execute("SELECT key FROM sessions ORDER BY updated_at DESC LIMIT 1").fetchone()
    if row is not None:
        connection.execute(
            "SELECT role, content FROM messages WHERE session_key = ? "
            "ORDER BY position DESC LIMIT 1",
            (row[0],),
        ).fetchall()


def _probe_write(connection: sqlite3.Connection, *, size: int) -> None:
    """Insert a padded session row and delete it again (the caller's transaction commits)."""
    connection.execute("DELETE FROM sessions WHERE key = ?", (_PROBE_KEY,))
    connection.execute(
        "INSERT INTO sessions (key, agent_id, created_at, updated_at, model, last_status, "
        "last_run_id) VALUES (?, '', 0, 0, ?, 'completed', '')",
        (_PROBE_KEY, "p" * size),
    )
    connection.execute("DELETE FROM sessions WHERE key = ?", (_PROBE_KEY,))
