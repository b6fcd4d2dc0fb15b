"""What ``epiloop doctor`` finds out about the session store, as plain data.

Opens the configured SQLite file the way the gateway does (a running gateway may have it open
too: SQLite lets both work), runs the start-up probe (a real read and write) and SQLite's
integrity checks, and reports what is wrong. Never creates a missing file. Imports the session
stores and the config schema only; printing is the CLI's job.
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
    """``store``: ``"memory"`` or ``"sqlite"``; ``path``: the SQLite file (``None`` in memory);
    ``exists``: whether the file is there yet; ``problems``: what is wrong (``[]``: nothing)."""

    store: str
    path: Path | None = None
    exists: bool = False
    problems: list[str] = field(default_factory=list)


async def check_session_store(config: SessionConfig, state_dir: Path) -> StoreReport:
    """Check the configured store; see the module docstring."""
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
