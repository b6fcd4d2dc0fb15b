"""``epiloop db status|migrate``: the schema of the PostgreSQL database the instances share.

The database is ``session.postgres.dsn`` (or ``$EPILOOP_POSTGRES_DSN``), whatever
``session.store`` says, so an operator can migrate before switching the gateways over. A
gateway applies pending migrations itself at start; ``migrate`` does it ahead of time (the
same advisory lock makes both safe while gateways run). Failures end with one ``Error:`` line
and exit status 1. psycopg (the ``postgres`` extra) is imported only when a command runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click
import trio

from ..errors import SessionStoreError
from .config import load_or_fail

if TYPE_CHECKING:
    from ..pg import Database, Migration, SchemaStatus

T = TypeVar("T")

__all__ = ["db"]

#: Connections ``epiloop db`` opens (one does all the work).
_POOL_SIZE = 1


@click.group()
def db() -> None:
    """The PostgreSQL database of the shared session store: its schema version, migrations."""


@db.command("status")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False))
def db_status(config_file: Path | None) -> None:
    """Print the schema version (the database's and this gateway's) and the pending
    migrations. Exit 1 if the database cannot be reached or is newer than this gateway."""
    dsn = _dsn(config_file)
    display, status = _run(_status, dsn)
    click.echo(f"database: {display}")
    click.echo(f"schema version: {status.current} (this gateway knows {status.known})")
    if status.too_new:
        raise click.ClickException(
            f"the database's schema (version {status.current}) is newer than this gateway "
            f"knows ({status.known}): upgrade this gateway"
        )
    if not status.pending:
        click.echo("up to date")
        return
    click.echo(f"pending: {len(status.pending)} migration(s)")
    for migration in status.pending:
        click.echo(f"  {migration.version:04d}_{migration.name}")


@db.command("migrate")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False))
def db_migrate(config_file: Path | None) -> None:
    """Apply the pending migrations (safe while gateways run or start). Exit 1 on failure."""
    dsn = _dsn(config_file)
    display, applied = _run(_migrate, dsn)
    click.echo(f"database: {display}")
    if not applied:
        click.echo("nothing to migrate: the schema is up to date")
        return
    for migration in applied:
        click.echo(f"applied {migration.version:04d}_{migration.name}")
    click.echo(f"schema version: {applied[-1].version}")


def _dsn(config_file: Path | None) -> str:
    dsn = load_or_fail(config_file).config.session.postgres.dsn
    if not dsn:
        raise click.ClickException(
            "no PostgreSQL database is configured: set session.postgres.dsn or the environment "
            "variable EPILOOP_POSTGRES_DSN"
        )
    return dsn


def _run(work: Callable[[Database], Awaitable[T]], dsn: str) -> tuple[str, T]:
    from ..pg import open_database

    async def main() -> tuple[str, T]:
        async with open_database(dsn, pool_size=_POOL_SIZE, application_name="epiloop-db") as db:
            return db.display_dsn, await work(db)

    try:
        return trio.run(main)
    except SessionStoreError as exc:
        raise click.ClickException(exc.message) from exc


async def _status(db: Database) -> SchemaStatus:
    from ..pg import schema_status

    return await db.run(schema_status)


async def _migrate(db: Database) -> tuple[Migration, ...]:
    from ..pg import migrate

    return await db.run(migrate, cancellable=False)
