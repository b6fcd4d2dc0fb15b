"""The shared session store: sessions in PostgreSQL, one database for every gateway instance.

Owns the statements of each store operation over the ``epiloop_sessions``,
``epiloop_messages`` and ``epiloop_session_turns`` tables (migration ``0004_sessions``) and the
images tables ``epiloop_images`` and ``epiloop_session_images`` (migration ``0006_images``), the
stored responses' ``epiloop_responses`` and ``epiloop_response_events`` (``0007_responses``:
a response and a batch of its events are one statement), the
store's health, and opening the store from ``session.postgres`` (:func:`open_postgres_store`:
the pool, the migrations, the start-up probe). It keeps exactly the semantics of
:class:`~trio_gateway.sessions.memory.MemorySessionStore`; one contract test suite runs against
every store. Imports ``pg`` (the pool, the migrations), ``sessions.rows`` and the config
schema; nothing above ``sessions``. Only ``sessions.open`` imports it, and only when the
PostgreSQL store is configured, so psycopg is needed only then.

Round trips. :meth:`~PostgresSessionStore.get` is one statement (the session joined to its
messages, one snapshot). :meth:`~PostgresSessionStore.record_turn` is one statement too: it
calls the server-side function ``epiloop_record_turn``, whose single transaction checks the
fence, upserts the session, truncates (``keep``), appends the entries and updates the totals.

Images. A turn's images are written by ``epiloop_record_turn`` too, once per SHA-256;
``delete`` (``epiloop_delete_session``), ``reset`` and a turn that truncates remove, in their
own transaction, the images no session holds any more. ``get`` reads the images' bytes with a
second statement; should a concurrent write have removed one in between (the session was
truncated or deleted meanwhile), it reads the session again.

Fencing. A turn whose :attr:`~trio_gateway.sessions.store.Turn.fence` is set is written only
if, in that same transaction, the session's ``epiloop_lanes`` row (locked ``FOR UPDATE``) has
the fence's holder and epoch; otherwise nothing is written and
:class:`~trio_gateway.errors.LeaseLostError` is raised. A turn written under its fence also
**releases the lane** in the same transaction (``holder`` and ``holder_instance`` set to NULL,
the epoch kept) and sends ``NOTIFY epiloop_lane, '<session key>'`` (delivered at commit), so
the lane code need not spend a round trip per run to release it, and the instances waiting for
the lane learn at once that it is free. A turn without a fence touches no lane.

Reset and delete move the session's lane on in their own transaction, before they touch the
session (the order ``epiloop_record_turn`` locks in, so the two never deadlock): a reset
increments the lane's epoch and frees it, a delete deletes the lane's row; both notify
``epiloop_lane``. A run of the session still in flight (its abort not landed yet) then holds a
stale fence, and its turn is refused: it can neither write into the cleared transcript nor
bring a deleted session back.

Retries. A session stores a run's turn once (its run id is kept in ``epiloop_session_turns``):
recording it again returns the session as it is and checks no fence (the first write released
the lane). So ``record_turn`` is idempotent and is retried once on a fresh connection when its
connection was lost mid-call (the first try may have committed). ``reset`` is idempotent too;
``delete`` is not retried (its answer would be wrong the second time).

Cancellation. Reads are cancellable: the server cancels the running statement and the
connection goes back to the pool clean (see ``pg.database``). Writes run to their end once
started (bounded by the server's ``statement_timeout``), like the SQLite store's.

Text. Strings that UTF-8 cannot encode (lone surrogates) and strings with NUL, which
PostgreSQL's ``text`` cannot hold, round-trip exactly: the columns a client, model or tool
fills are ``bytea`` holding the ``surrogatepass`` UTF-8 bytes (``sessions.rows``). Session keys
and agent ids are ``text``: the gateway makes them printable ASCII; a key PostgreSQL cannot
hold is never stored (``get`` finds nothing, ``record_turn`` refuses it).

Health. :meth:`~PostgresSessionStore.health` says what failed while the last read or the last
write failed for a reason of the database (unreachable, out of space, a damaged row; not a bad
turn, not a lost lease); the next success clears it. There is no size limit of ours
(``session.maxBytes`` is SQLite's): the database's size is its operator's to watch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import TypeVar

import psycopg

from ..config.schema import PostgresConfig
from ..errors import LeaseLostError, SessionStoreError, SessionStoreUnavailableError
from ..pg import Database, migrate, open_database
from .response_rows import RESPONSE_COLUMNS, response_from_row, response_values
from .rows import (
    ENTRY_FIELDS,
    SESSION_FIELDS,
    DamagedRowError,
    encode_image_refs,
    encode_text,
    encode_tool_calls,
    entry_from_row,
    info_from_row,
    session_of,
    turn_images,
    with_image_bytes,
)
from .store import UNFINISHED, LoggedEvent, Session, SessionInfo, StoredResponse, Turn

__all__ = ["LANE_CHANNEL", "PostgresSessionStore", "open_postgres_store"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The channel a turn written under its fence notifies, with the session key as payload.
LANE_CHANNEL = "epiloop_lane"

#: The SQLSTATE ``epiloop_record_turn`` raises when a turn's fence is not the lane's.
_LEASE_LOST = "EPL01"

#: The key of the row the probe inserts and deletes in the same transaction (never visible;
#: the gateway's own keys are printable ASCII, so no client can name it).
_PROBE_KEY = "\x01epiloop-store-probe"

#: Failures that are the input's fault, not the database's: they leave the store's health alone.
_NOT_STORAGE_FAULTS = (psycopg.IntegrityError, psycopg.DataError, psycopg.ProgrammingError)

_SESSION_COLUMNS = ", ".join(f"s.{name}" for name in SESSION_FIELDS)

_GET = f"""
    SELECT {_SESSION_COLUMNS}, {", ".join(f"m.{name}" for name in ENTRY_FIELDS)}
      FROM epiloop_sessions AS s
      LEFT JOIN epiloop_messages AS m ON m.session_key = s.key
     WHERE s.key = %s
     ORDER BY m.position
"""

_RECORD_TURN = f"""
    SELECT {_SESSION_COLUMNS} FROM epiloop_record_turn(
        %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
        %s::text[], %s::bytea[], %s::text[], %s::text[], %s::bytea[], %s::bytea[], %s::boolean[],
        %s::text[], %s::text[], %s::text[], %s::bytea[]
    ) AS s
"""


class PostgresSessionStore:
    """Sessions in a PostgreSQL database. Open it with :func:`open_postgres_store`.

    ``database`` is the open pool, with the schema migrated; the lane and run-registry code of
    the same instance shares it (:attr:`database`). The store does not close it.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self._closed = False
        #: What the last read / the last write that failed for a reason of the database said.
        self._read_failure: str | None = None
        self._write_failure: str | None = None

    async def get(self, key: str) -> Session | None:
        if not _storable(key):
            return None
        return await self._read("get", partial(_get, key=key))

    async def record_turn(self, key: str, turn: Turn) -> SessionInfo:
        """Store ``turn`` in one transaction: whole, or (on any error) not at all.

        Raises :class:`LeaseLostError` (nothing written) when ``turn.fence`` is set and is not
        the session lane's holder and epoch; on success under a fence, the lane is released
        and ``NOTIFY epiloop_lane`` sent in the same transaction (see the module docstring)."""
        if not _storable(key):
            raise SessionStoreError(
                "The session key cannot be stored (it holds NUL or a lone surrogate)."
            )
        return await self._write(
            "record_turn", partial(_record_turn, key=key, turn=turn), idempotent=True
        )

    async def list_sessions(
        self, *, agent_id: str | None = None, limit: int = 100
    ) -> list[SessionInfo]:
        """The most recently updated sessions first (ties: the oldest session first)."""
        if limit == 0:
            return []
        return await self._read("list_sessions", partial(_list, agent_id=agent_id, limit=limit))

    async def reset(self, key: str) -> bool:
        """Clear the transcript and totals, keep the session; ``False`` if there is none."""
        if not _storable(key):
            return False
        return await self._write("reset", partial(_reset, key=key), idempotent=True)

    async def delete(self, key: str) -> bool:
        """Remove the session; ``False`` if there is none."""
        if not _storable(key):
            return False
        return await self._write("delete", partial(_delete, key=key), idempotent=False)

    async def save_response(
        self, response: StoredResponse, events: Sequence[LoggedEvent] = ()
    ) -> None:
        """Store ``response`` and append ``events``: one statement (idempotent, so retried
        once when its connection was lost)."""
        await self._write(
            "save_response",
            partial(_save_response, response=response, events=tuple(events)),
            idempotent=True,
        )

    async def get_response(self, response_id: str) -> StoredResponse | None:
        if not _storable(response_id):
            return None
        return await self._read("get_response", partial(_get_response, response_id=response_id))

    async def response_events(
        self, response_id: str, *, after: int, limit: int
    ) -> list[LoggedEvent]:
        if not _storable(response_id):
            return []
        return await self._read(
            "response_events",
            partial(_response_events, response_id=response_id, after=after, limit=limit),
        )

    async def delete_response(self, response_id: str) -> bool:
        if not _storable(response_id):
            return False
        return await self._write(
            "delete_response", partial(_delete_response, response_id=response_id), idempotent=False
        )

    async def sweep_responses(self, now: float) -> int:
        return await self._write(
            "sweep_responses", partial(_sweep_responses, now=now), idempotent=True
        )

    async def unfinished_responses(self) -> list[StoredResponse]:
        return await self._read("unfinished_responses", _unfinished_responses)

    async def probe(self) -> None:
        """A real read and a real write (a row inserted and deleted again in one committed
        transaction); raises :class:`SessionStoreError` if either fails."""
        await self._read("probe", _probe_read)
        await self._write("probe", _probe_write, idempotent=True)

    def health(self) -> str | None:
        """``None`` while the last read and the last write succeeded; else what failed."""
        if self._closed:
            return "the session store is closed"
        return self._write_failure or self._read_failure

    async def aclose(self) -> None:
        """Refuse further work. Idempotent; the pool is closed by whoever opened it."""
        self._closed = True

    async def _read(self, operation: str, work: Callable[[psycopg.Connection], T]) -> T:
        self._check_open()
        try:
            value = await self.database.run(work, cancellable=True, idempotent=True)
        except SessionStoreError as exc:
            if _storage_fault(exc):
                self._read_failure = f"{operation} failed: {exc.message}"
            logger.warning("session_store.%s.failed reason=%s", operation, exc.message)
            raise
        self._read_failure = None
        return value

    async def _write(
        self, operation: str, work: Callable[[psycopg.Connection], T], *, idempotent: bool
    ) -> T:
        self._check_open()
        try:
            value = await self.database.run(work, cancellable=False, idempotent=idempotent)
        except SessionStoreError as exc:
            if _storage_fault(exc):
                self._write_failure = f"{operation} failed: {exc.message}"
            logger.warning("session_store.%s.failed reason=%s", operation, exc.message)
            raise
        self._write_failure = None
        return value

    def _check_open(self) -> None:
        if self._closed:
            raise SessionStoreError("The session store is closed.")


@asynccontextmanager
async def open_postgres_store(
    config: PostgresConfig, *, application_name: str = "epiloop-gateway"
) -> AsyncIterator[PostgresSessionStore]:
    """Open the pool to ``config.dsn``, apply the pending migrations (safe when several
    instances start at once), probe the store; close the pool when the context exits.

    Raises :class:`SessionStoreUnavailableError` when the server cannot be reached and
    :class:`SessionStoreError` when the DSN is missing, the schema is newer than this gateway
    knows, or the probe fails; messages show the DSN with its secrets redacted."""
    if not config.dsn:
        raise SessionStoreError(
            "session.store is 'postgres' but no database is configured: set session.postgres.dsn "
            "or the environment variable EPILOOP_POSTGRES_DSN."
        )
    async with open_database(
        config.dsn, pool_size=config.pool_size, application_name=application_name
    ) as database:
        display = database.display_dsn
        logger.debug("session_store.open.started store=postgres dsn=%s", display)
        applied = await database.run(migrate, cancellable=False, idempotent=True)
        for migration in applied:
            logger.info(
                "session_store.migrate.complete dsn=%s version=%d name=%s",
                display,
                migration.version,
                migration.name,
            )
        store = PostgresSessionStore(database)
        try:
            try:
                await store.probe()
            except SessionStoreError as exc:
                raise type(exc)(
                    f"The session database at {display} cannot be used: {exc.message}"
                ) from exc
            logger.info("session_store.open.complete store=postgres dsn=%s", display)
            yield store
        finally:
            await store.aclose()


# --- errors ---------------------------------------------------------------------------------


def _storage_fault(exc: SessionStoreError) -> bool:
    """Whether ``exc`` says the database failed (not the input, not a lost lease)."""
    if isinstance(exc, LeaseLostError):
        return False
    if isinstance(exc, SessionStoreUnavailableError):
        return True
    return not isinstance(exc.__cause__, _NOT_STORAGE_FAULTS)


def _storable(text: str) -> bool:
    """Whether PostgreSQL's ``text`` can hold ``text`` (no NUL, no lone surrogate)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- the worker-thread side: plain blocking functions of a pooled connection -----------------


def _get(connection: psycopg.Connection, *, key: str) -> Session | None:
    for attempt in (1, 2):
        try:
            rows = connection.execute(_GET, (key,)).fetchall()
            if not rows:
                return None
            split = len(SESSION_FIELDS)
            info = info_from_row(rows[0][:split])
            transcript = [entry_from_row(row[split:]) for row in rows if row[split] is not None]
            hashes = sorted({i.sha256 for e in transcript for i in e.images if i.url is None})
            if hashes:
                stored = {
                    str(sha256): (str(media_type), bytes(data))
                    for sha256, media_type, data in connection.execute(
                        "SELECT sha256, media_type, data FROM epiloop_images "
                        "WHERE sha256 = ANY (%s)",
                        (hashes,),
                    )
                }
                if attempt == 1 and len(stored) < len(hashes):
                    continue  # removed by a write in between: read the session again
                transcript = with_image_bytes(transcript, stored)
        except DamagedRowError as exc:
            raise SessionStoreError(f"A stored session is damaged: {exc}") from exc
        return session_of(info, transcript)
    raise AssertionError("unreachable: the second attempt returns or raises")


def _record_turn(connection: psycopg.Connection, *, key: str, turn: Turn) -> SessionInfo:
    entries = turn.entries
    fence = turn.fence
    parameters = (
        key,
        turn.agent_id,
        turn.agent_id.lower(),
        encode_text(turn.model),
        turn.status,
        encode_text(turn.run_id),
        turn.prompt_tokens,
        turn.completion_tokens,
        turn.at,
        turn.keep,
        None if fence is None else fence.holder,
        None if fence is None else fence.epoch,
        [entry.role for entry in entries],
        [encode_text(entry.content) for entry in entries],
        [entry.status for entry in entries],
        [encode_tool_calls(entry.tool_calls) for entry in entries],
        [_optional_bytes(entry.tool_call_id) for entry in entries],
        [_optional_bytes(entry.name) for entry in entries],
        [entry.internal for entry in entries],
        [encode_image_refs(entry.images) for entry in entries],
        *_image_columns(turn),
    )
    try:
        row = connection.execute(_RECORD_TURN, parameters).fetchone()
    except psycopg.Error as exc:
        if exc.sqlstate == _LEASE_LOST:
            reason = exc.diag.message_primary or "lease lost"
            raise LeaseLostError(
                f"The turn was not stored: this run no longer holds the session ({reason})."
            ) from exc
        raise
    if row is None:
        raise SessionStoreError("The session database stored the turn but returned no session.")
    return info_from_row(row)


def _image_columns(turn: Turn) -> tuple[list[str], list[str], list[bytes]]:
    """The turn's images (each once, in hash order): hashes, types, bytes."""
    images = sorted(turn_images(turn).items())
    return (
        [sha256 for sha256, _ in images],
        [image.media_type for _, image in images],
        [image.data or b"" for _, image in images],
    )


def _list(connection: psycopg.Connection, *, agent_id: str | None, limit: int) -> list[SessionInfo]:
    where = "" if agent_id is None else "WHERE s.agent_id_lower = %(agent)s"
    rows = connection.execute(
        f"SELECT {_SESSION_COLUMNS} FROM epiloop_sessions AS s {where} "
        "ORDER BY s.updated_at DESC, s.created_seq LIMIT %(limit)s",
        {"agent": None if agent_id is None else agent_id.lower(), "limit": max(limit, 0) or None},
    ).fetchall()
    if limit < 0:  # ``sessions[:limit]`` semantics, as in memory
        rows = rows[:limit]
    try:
        return [info_from_row(row) for row in rows]
    except DamagedRowError as exc:
        raise SessionStoreError(f"A stored session is damaged: {exc}") from exc


def _reset(connection: psycopg.Connection, *, key: str) -> bool:
    with connection.transaction():
        # The lane first (the order epiloop_record_turn locks in): it moves on, so a run in
        # flight (aborted by the caller, or not yet) writes nothing into the cleared session.
        connection.execute(
            "UPDATE epiloop_lanes SET epoch = epoch + 1, holder = NULL, holder_instance = NULL "
            "WHERE session_key = %s",
            (key,),
        )
        connection.execute("SELECT pg_notify(%s, %s)", (LANE_CHANNEL, key))
        updated = connection.execute(
            "UPDATE epiloop_sessions SET prompt_tokens = 0, completion_tokens = 0, "
            "message_count = 0 WHERE key = %s",
            (key,),
        ).rowcount
        if updated:
            connection.execute("DELETE FROM epiloop_messages WHERE session_key = %s", (key,))
            connection.execute("SELECT epiloop_sync_session_images(%s)", (key,))
    return updated > 0


def _delete(connection: psycopg.Connection, *, key: str) -> bool:
    with connection.transaction():
        # The lane's row goes first (the order epiloop_record_turn locks in): a run in flight
        # finds no lane for its fence and writes nothing, so it cannot bring the session back.
        connection.execute("DELETE FROM epiloop_lanes WHERE session_key = %s", (key,))
        connection.execute("SELECT pg_notify(%s, %s)", (LANE_CHANNEL, key))
        # The session's messages, runs and image references go with it (ON DELETE CASCADE);
        # the images no other session holds too, in the same transaction.
        row = connection.execute("SELECT epiloop_delete_session(%s)", (key,)).fetchone()
    return bool(row is not None and row[0])


_RESPONSE_SELECT = f"SELECT {', '.join(RESPONSE_COLUMNS)} FROM epiloop_responses"

# The response upserted and its events appended in one statement (one transaction): the
# events' foreign key sees the row the CTE wrote.
_SAVE_RESPONSE = f"""
    WITH saved AS (
        INSERT INTO epiloop_responses ({", ".join(RESPONSE_COLUMNS)})
        VALUES ({", ".join(["%s"] * len(RESPONSE_COLUMNS))})
        ON CONFLICT (id) DO UPDATE SET
            {", ".join(f"{name} = excluded.{name}" for name in RESPONSE_COLUMNS[1:])}
        RETURNING id
    )
    INSERT INTO epiloop_response_events (response_id, sequence, data)
    SELECT saved.id, e.sequence, e.data
      FROM saved, unnest(%s::integer[], %s::bytea[]) AS e(sequence, data)
    ON CONFLICT (response_id, sequence) DO NOTHING
"""


def _save_response(
    connection: psycopg.Connection, *, response: StoredResponse, events: tuple[LoggedEvent, ...]
) -> None:
    connection.execute(
        _SAVE_RESPONSE,
        (
            *response_values(response),
            [event.sequence for event in events],
            [event.data for event in events],
        ),
    )


def _get_response(connection: psycopg.Connection, *, response_id: str) -> StoredResponse | None:
    row = connection.execute(f"{_RESPONSE_SELECT} WHERE id = %s", (response_id,)).fetchone()
    return None if row is None else response_from_row(row)


def _response_events(
    connection: psycopg.Connection, *, response_id: str, after: int, limit: int
) -> list[LoggedEvent]:
    rows = connection.execute(
        "SELECT sequence, data FROM epiloop_response_events WHERE response_id = %s "
        "AND sequence > %s ORDER BY sequence LIMIT %s",
        (response_id, after, limit),
    ).fetchall()
    return [LoggedEvent(sequence, bytes(data)) for sequence, data in rows]


def _delete_response(connection: psycopg.Connection, *, response_id: str) -> bool:
    cursor = connection.execute("DELETE FROM epiloop_responses WHERE id = %s", (response_id,))
    return cursor.rowcount > 0


def _sweep_responses(connection: psycopg.Connection, *, now: float) -> int:
    cursor = connection.execute(
        "DELETE FROM epiloop_responses WHERE expires_at IS NOT NULL AND expires_at <= %s", (now,)
    )
    return cursor.rowcount


def _unfinished_responses(connection: psycopg.Connection) -> list[StoredResponse]:
    rows = connection.execute(
        f"{_RESPONSE_SELECT} WHERE status = ANY(%s) ORDER BY created_at", (sorted(UNFINISHED),)
    ).fetchall()
    return [response_from_row(row) for row in rows]


def _probe_read(connection: psycopg.Connection) -> None:
    """Read the most recent session and its last message, through both tables' indexes."""
    connection.execute(
        "SELECT m.role, m.content FROM epiloop_messages AS m WHERE m.session_key = "
        "(SELECT key FROM epiloop_sessions ORDER BY updated_at DESC, created_seq LIMIT 1) "
        "ORDER BY m.position DESC LIMIT 1"
    ).fetchall()


def _probe_write(connection: psycopg.Connection) -> None:
    """Insert a session row and delete it again, in one committed transaction."""
    with connection.transaction():
        connection.execute(
            "INSERT INTO epiloop_sessions (key, agent_id, agent_id_lower, created_at, updated_at, "
            "model, last_status, last_run_id) "
            "VALUES (%s, '', '', 0, 0, '\\x'::bytea, 'completed', '\\x'::bytea) "
            "ON CONFLICT (key) DO NOTHING",
            (_PROBE_KEY,),
        )
        connection.execute("DELETE FROM epiloop_sessions WHERE key = %s", (_PROBE_KEY,))


def _optional_bytes(text: str | None) -> bytes | None:
    return None if text is None else encode_text(text)
