"""Opening the session store the configuration asks for.

Owns the choice between the stores and the default SQLite path. Imports the session stores and
the config schema only; the PostgreSQL store (and with it psycopg, the ``postgres`` extra) only
when it is configured, so the embedded stores work without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from ..config.schema import SessionConfig
from ..errors import SessionStoreError
from .memory import MemorySessionStore
from .sqlite import CLOSE_BOUND_SECONDS, open_sqlite_store
from .store import SessionStore

__all__ = ["DEFAULT_FILE_NAME", "open_session_store", "sqlite_path"]

#: The SQLite file's name in the state directory, unless ``session.path`` says otherwise.
DEFAULT_FILE_NAME = "sessions.sqlite"


def sqlite_path(config: SessionConfig, state_dir: Path) -> Path:
    """Where the SQLite store lives: ``session.path`` (``~`` expanded) or the state directory."""
    if config.path:
        return Path(config.path).expanduser()
    return state_dir / DEFAULT_FILE_NAME


@asynccontextmanager
async def open_session_store(config: SessionConfig, state_dir: Path) -> AsyncIterator[SessionStore]:
    """The configured store (``session.store``), open for the context's lifetime.

    ``"memory"``: a :class:`MemorySessionStore`; ``"sqlite"``: the file at
    :func:`sqlite_path`, created if missing, its WAL checkpointed every
    ``session.walCheckpointSeconds``; ``"postgres"``: a
    :class:`~trio_gateway.sessions.postgres.PostgresSessionStore` on ``session.postgres.dsn``
    (the loader fills it from ``$EPILOOP_POSTGRES_DSN`` when the file sets none), its schema
    migrated; its :attr:`~trio_gateway.sessions.postgres.PostgresSessionStore.database` is the
    open pool, for the instance's lanes and run registry. Raises
    :class:`~trio_gateway.errors.SessionStoreError` if the store cannot be opened or fails its
    start-up probe (a real read and write).
    """
    if config.store == "postgres":
        try:
            from .postgres import open_postgres_store
        except ImportError as exc:
            raise SessionStoreError(
                f"session.store 'postgres' needs psycopg ({exc.name or exc}): install the "
                "'postgres' extra (pip install 'trio-gateway[postgres]')."
            ) from exc
        async with open_postgres_store(config.postgres) as postgres:
            yield postgres
        return
    if config.store == "sqlite":
        path = sqlite_path(config, state_dir)
        checkpoint = config.wal_checkpoint_seconds
        async with open_sqlite_store(
            path, checkpoint_seconds=checkpoint, max_bytes=config.max_bytes
        ) as store:
            yield store
        return
    memory = MemorySessionStore()
    try:
        yield memory
    finally:
        with trio.move_on_after(CLOSE_BOUND_SECONDS, shield=True):
            await memory.aclose()
