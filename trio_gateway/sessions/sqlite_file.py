"""The SQLite file under the session store: opening it, its schema, its WAL and its health.

Owns the connection's setup (``journal_mode=WAL``, ``synchronous``, foreign keys, the busy
timeout, the size limit), the schema and its migrations (numbered by ``PRAGMA user_version``;
see :data:`SCHEMA_VERSION`), the transactions every statement of the store runs in, the
``TRUNCATE`` checkpoints (:class:`Checkpoints`) and the integrity checks. The store itself
(``sessions.sqlite``) says why each setting is what it is. Plain blocking functions of a
``sqlite3`` connection, run in the store's worker thread; imports ``errors`` and
``sessions.rows`` only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from ..errors import SessionStoreError
from .rows import text_or_bytes, text_value

__all__ = [
    "BUSY_TIMEOUT_MS",
    "CHECKPOINT_BUSY_MS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Checkpoints",
    "connect",
    "in_read_transaction",
    "in_write_transaction",
    "integrity_problems",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a write waits for another process that holds the file's write lock.
BUSY_TIMEOUT_MS = 5_000

#: How long a ``TRUNCATE`` checkpoint waits for readers and writers of other connections.
CHECKPOINT_BUSY_MS = 250

#: ``INSERT ... ON CONFLICT DO UPDATE`` (the upsert) came with SQLite 3.24.
_MIN_SQLITE = (3, 24, 0)

#: One entry per schema version: the statements that migrate version ``i`` to ``i + 1``. A new
#: version appends an entry; an existing entry never changes.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE sessions (
            key TEXT NOT NULL PRIMARY KEY,
            agent_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            model TEXT NOT NULL,
            last_status TEXT NOT NULL CHECK (last_status IN ('completed', 'failed', 'aborted')),
            last_run_id TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX sessions_by_updated_at ON sessions (updated_at DESC)",
        """
        CREATE TABLE messages (
            session_key TEXT NOT NULL REFERENCES sessions (key) ON DELETE CASCADE,
            position INTEGER NOT NULL CHECK (position >= 0),
            role TEXT NOT NULL
                CHECK (role IN ('system', 'developer', 'user', 'assistant', 'tool')),
            content TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('completed', 'failed', 'aborted')),
            tool_calls TEXT,
            tool_call_id TEXT,
            name TEXT,
            internal INTEGER NOT NULL DEFAULT 0 CHECK (internal IN (0, 1))
        )
        """,
        "CREATE UNIQUE INDEX messages_by_position ON messages (session_key, position)",
    ),
    (
        # The runs whose turns a session holds: a turn is stored once, however often it is
        # recorded (the sessions' last runs are in it from the start).
        """
        CREATE TABLE turns (
            session_key TEXT NOT NULL REFERENCES sessions (key) ON DELETE CASCADE,
            run_id TEXT NOT NULL,
            PRIMARY KEY (session_key, run_id)
        ) WITHOUT ROWID
        """,
        "INSERT INTO turns (session_key, run_id) SELECT key, last_run_id FROM sessions",
    ),
    (
        # Images, stored once by their SHA-256; a message references its images by hash (JSON
        # in messages.images); session_images says which images each session holds, so an
        # image no session holds any more can be removed.
        "ALTER TABLE messages ADD COLUMN images TEXT",
        """
        CREATE TABLE images (
            sha256 TEXT NOT NULL PRIMARY KEY,
            media_type TEXT NOT NULL,
            size INTEGER NOT NULL CHECK (size >= 0),
            data BLOB NOT NULL
        )
        """,
        """
        CREATE TABLE session_images (
            session_key TEXT NOT NULL REFERENCES sessions (key) ON DELETE CASCADE,
            sha256 TEXT NOT NULL REFERENCES images (sha256),
            PRIMARY KEY (session_key, sha256)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX session_images_by_image ON session_images (sha256)",
    ),
    (
        # Stored responses (the Responses API, resumable chat completion streams) and their
        # event logs, kept for a while after their runs end (expires_at).
        """
        CREATE TABLE responses (
            id TEXT NOT NULL PRIMARY KEY,
            kind TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            run_id TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN
                ('queued', 'in_progress', 'completed', 'incomplete', 'failed', 'cancelled')),
            instance_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            body BLOB NOT NULL,
            input BLOB NOT NULL,
            session_key TEXT,
            session_position INTEGER,
            ended_at REAL,
            expires_at REAL,
            event_count INTEGER NOT NULL DEFAULT 0,
            events_truncated INTEGER NOT NULL DEFAULT 0 CHECK (events_truncated IN (0, 1))
        )
        """,
        "CREATE INDEX responses_by_expiry ON responses (expires_at) WHERE expires_at IS NOT NULL",
        "CREATE INDEX responses_unfinished ON responses (status) "
        "WHERE status IN ('queued', 'in_progress')",
        """
        CREATE TABLE response_events (
            response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
            sequence INTEGER NOT NULL CHECK (sequence >= 0),
            data BLOB NOT NULL,
            PRIMARY KEY (response_id, sequence)
        ) WITHOUT ROWID
        """,
    ),
)

#: The schema version this code reads and writes.
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path, *, max_bytes: int | None = None) -> sqlite3.Connection:
    if sqlite3.sqlite_version_info < _MIN_SQLITE:
        raise SessionStoreError(
            f"The session store needs SQLite {'.'.join(map(str, _MIN_SQLITE))} or later; this "
            f"Python links SQLite {sqlite3.sqlite_version}. Use session.store 'memory' instead.",
        )
    _make_private_dirs(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        connection.execute("PRAGMA foreign_keys = ON")
        if max_bytes is not None:
            (page_size,) = connection.execute("PRAGMA page_size").fetchone()
            connection.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page_size):d}")
        (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() == "wal":
            connection.execute("PRAGMA synchronous = NORMAL")
        else:
            logger.warning(
                "session_store.open.no_wal path=%s journal_mode=%s synchronous=FULL", path, mode
            )
            connection.execute("PRAGMA synchronous = FULL")
        connection.create_function("epiloop_lower", 1, _lower, deterministic=True)
        in_write_transaction(partial(_migrate, path=path), connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _make_private_dirs(directory: Path) -> None:
    """``mkdir -p`` where every directory created gets mode ``0o700``."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):
            new.mkdir(mode=0o700)


def _migrate(connection: sqlite3.Connection, *, path: Path) -> None:
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise SessionStoreError(
            f"The session store {str(path)!r} has schema version {version}, newer than this "
            f"gateway's ({SCHEMA_VERSION}); upgrade the gateway or use another session.path.",
        )
    for statements in MIGRATIONS[version:]:
        for statement in statements:
            connection.execute(statement)
    if version != SCHEMA_VERSION:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        logger.info(
            "session_store.migrate.complete path=%s from=%d to=%d", path, version, SCHEMA_VERSION
        )


def in_write_transaction(
    work: Callable[[sqlite3.Connection], T], connection: sqlite3.Connection
) -> T:
    """``work`` in ``BEGIN IMMEDIATE ... COMMIT``, rolled back on any error."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = work(connection)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result


def in_read_transaction(
    work: Callable[[sqlite3.Connection], T], connection: sqlite3.Connection
) -> T:
    """``work`` in one read transaction: its statements see one snapshot of the file."""
    connection.execute("BEGIN")
    try:
        return work(connection)
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")


def _checkpoint(connection: sqlite3.Connection) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(TRUNCATE)`` with a short busy timeout: (busy, log, copied)."""
    connection.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_MS:d}")
    try:
        busy, log, copied = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
    return int(busy), int(log), int(copied)


def integrity_problems(connection: sqlite3.Connection) -> list[str]:
    problems = [str(row[0]) for row in connection.execute("PRAGMA integrity_check").fetchall()]
    if problems == ["ok"]:
        problems = []
    problems.extend(
        f"foreign key: {row[0]} row {row[1]} references a missing {row[2]}"
        for row in connection.execute("PRAGMA foreign_key_check").fetchall()
    )
    return problems


def _lower(value: object) -> str | bytes | None:
    """SQL ``epiloop_lower``: Python's ``str.lower`` (SQLite's ``lower`` is ASCII-only)."""
    return None if value is None else text_or_bytes(text_value(value).lower())


class Checkpoints:
    """When to checkpoint the WAL: after the first write of every interval (``None``: never).

    Runs in the store's worker thread, under the store's lock, right after a commit.
    """

    def __init__(self, interval: float | None) -> None:
        self.interval = interval
        self.due = time.monotonic() if interval is not None else math.inf

    def after_write(self, connection: sqlite3.Connection, path: Path) -> None:
        if self.interval is None or time.monotonic() < self.due:
            return
        self.due = time.monotonic() + self.interval
        try:
            busy, log, copied = _checkpoint(connection)
        except sqlite3.Error as exc:
            # The turn is committed; a checkpoint that fails is tried again next interval.
            logger.warning("session_store.checkpoint.failed path=%s error=%s", path, exc)
            return
        if busy:
            logger.info(
                "session_store.checkpoint.busy path=%s wal_frames=%d copied=%d", path, log, copied
            )
        else:
            logger.debug("session_store.checkpoint.complete path=%s frames=%d", path, copied)
