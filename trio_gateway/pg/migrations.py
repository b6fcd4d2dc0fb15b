"""The PostgreSQL schema's versions and how a database is brought up to date.

Owns the migration files (``migrations/NNNN_name.sql`` in this package, applied in order of
their number, each once), the ``epiloop_schema`` table that records which were applied, and the
rule that makes concurrent starts safe: a migration runs in one transaction that first takes a
transaction-level advisory lock (:data:`LOCK_KEY`), so when several instances start at once,
exactly one applies what is missing and the others wait for it, then find nothing to do.
(PostgreSQL's DDL is transactional: a migration that fails leaves nothing behind.) A
transaction-level lock, not a session-level one, so that it also works through a pooler in
transaction mode.

A database whose schema is newer than this gateway knows (a newer gateway migrated it) is
refused with :class:`~trio_gateway.errors.SessionStoreError`: an older gateway must not write
rows it does not understand.

Runs inside :meth:`~trio_gateway.pg.database.Database.run` (plain functions of a connection).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from ..errors import SessionStoreError

__all__ = ["LOCK_KEY", "Migration", "SchemaStatus", "known_migrations", "migrate", "schema_status"]

#: The advisory lock every migration takes (an arbitrary constant: "epiloop" in ASCII).
LOCK_KEY = 0x6570696C6F6F70

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """The database's schema version against what this gateway knows."""

    current: int
    #: The newest version this gateway knows.
    known: int
    #: Versions this gateway knows that the database does not have yet, in order.
    pending: tuple[Migration, ...]

    @property
    def too_new(self) -> bool:
        return self.current > self.known


def known_migrations() -> tuple[Migration, ...]:
    """The migrations shipped in this package, in order; their numbers must run 1, 2, 3..."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"migration {expected:04d} is missing (found {migration.name})")
    return tuple(found)


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS epiloop_schema (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def _current(connection: psycopg.Connection) -> int:
    row = connection.execute("SELECT coalesce(max(version), 0) FROM epiloop_schema").fetchone()
    return int(row[0]) if row is not None else 0


def _has_table(connection: psycopg.Connection) -> bool:
    row = connection.execute("SELECT to_regclass('epiloop_schema') IS NOT NULL").fetchone()
    return bool(row and row[0])


def schema_status(connection: psycopg.Connection) -> SchemaStatus:
    """Where the database stands (reads only; a database never migrated is at version 0)."""
    migrations = known_migrations()
    current = _current(connection) if _has_table(connection) else 0
    return SchemaStatus(
        current=current,
        known=len(migrations),
        pending=tuple(m for m in migrations if m.version > current),
    )


def refuse_too_new(status: SchemaStatus) -> None:
    if status.too_new:
        raise SessionStoreError(
            f"The session database's schema is at version {status.current}, newer than this "
            f"gateway knows (version {status.known}): a newer gateway migrated it. Upgrade this "
            "gateway, or point it at another database."
        )


def migrate(connection: psycopg.Connection) -> tuple[Migration, ...]:
    """Apply every pending migration, under the lock; return those this call applied (none when
    another instance got there first). Refuses a schema newer than this gateway knows."""
    migrations = known_migrations()
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        connection.execute(_CREATE_TABLE)
        current = _current(connection)
        status = SchemaStatus(
            current, len(migrations), tuple(m for m in migrations if m.version > current)
        )
        refuse_too_new(status)
        for migration in status.pending:
            connection.execute(migration.sql.encode())
            connection.execute(
                "INSERT INTO epiloop_schema (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
    return status.pending
