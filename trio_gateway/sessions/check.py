"""What ``epiloop doctor`` finds out about the session store, as plain data.

Opens the configured SQLite file the way the gateway does (a running gateway may have it open
too: SQLite lets both work), runs the start-up probe (a real read and write) and SQLite's
integrity checks, and reports what is wrong. Never creates a missing file. For the PostgreSQL
store: connects, compares the schema's version with this gateway's, and (when it is current)
runs the store's probe; never migrates. Imports the session stores and the config schema only
(the PostgreSQL store lazily); printing is the CLI's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config.schema import SessionConfig
from ..errors import SessionStoreError
from .open import sqlite_path
from .sqlite import open_sqlite_store

__all__ = ["StoreReport", "check_session_store"]


@dataclass(frozen=True, slots=True)
class StoreReport:
    """``store``: ``"memory"``, ``"sqlite"`` or ``"postgres"``; ``path``: the SQLite file
    (``None`` otherwise); ``exists``: whether the file is there yet; ``problems``: what is wrong
    (``[]``: nothing). PostgreSQL only: ``database``, the DSN with its secrets redacted;
    ``schema``, how the schema's version compares with this gateway's."""

    store: str
    path: Path | None = None
    exists: bool = False
    problems: list[str] = field(default_factory=list)
    database: str | None = None
    schema: str | None = None
    #: PostgreSQL: whether the store's probe (a real read and write) ran and passed.
    probed: bool = False


async def check_session_store(config: SessionConfig, state_dir: Path) -> StoreReport:
    """Check the configured store; see the module docstring."""
    if config.store == "postgres":
        return await _check_postgres(config)
    if config.store != "sqlite":
        return StoreReport(config.store)
    path = sqlite_path(config, state_dir)
    if not path.exists():
        return StoreReport("sqlite", path, exists=False)
    try:
        async with open_sqlite_store(path) as store:
            problems = await store.integrity_problems()
    except SessionStoreError as exc:
        return StoreReport("sqlite", path, exists=True, problems=[exc.message])
    return StoreReport("sqlite", path, exists=True, problems=problems)


async def _check_postgres(config: SessionConfig) -> StoreReport:
    dsn = config.postgres.dsn
    if not dsn:
        return StoreReport(
            "postgres",
            problems=["no database: set session.postgres.dsn or EPILOOP_POSTGRES_DSN"],
        )
    from ..pg import open_database, schema_status
    from .postgres import PostgresSessionStore

    try:
        async with open_database(dsn, pool_size=2, application_name="epiloop-doctor") as db:
            status = await db.run(schema_status)
            schema = f"version {status.current} of {status.known}"
            if status.too_new:
                problem = f"the schema ({schema}) is newer than this gateway knows: upgrade it"
                return StoreReport("postgres", problems=[problem], database=db.display_dsn)
            if status.pending:
                schema += (
                    f", {len(status.pending)} migration(s) pending (applied when a gateway "
                    "starts, or by 'epiloop db migrate')"
                )
                return StoreReport("postgres", database=db.display_dsn, schema=schema)
            store = PostgresSessionStore(db)
            try:
                await store.probe()
            finally:
                await store.aclose()
            return StoreReport("postgres", database=db.display_dsn, schema=schema, probed=True)
    except SessionStoreError as exc:
        return StoreReport("postgres", problems=[exc.message])
