"""``epiloop doctor``: check the session store, on disk or in PostgreSQL (the checks live in
``trio_gateway.sessions.check``)."""

from __future__ import annotations

from pathlib import Path

import click
import trio

from ..config import state_dir
from ..sessions.check import check_session_store
from .config import load_or_fail


@click.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False))
def doctor(config_file: Path | None) -> None:
    """Check the session store: it opens, answers a read and a write, passes SQLite's integrity
    check (PostgreSQL: is reachable, its schema version is this gateway's). Exit 1 if something
    is wrong."""
    loaded = load_or_fail(config_file)
    report = trio.run(check_session_store, loaded.config.session, state_dir())
    if report.store == "postgres":
        if report.problems:
            raise click.ClickException(f"session store postgres: {report.problems[0]}")
        passed = "; reads and writes pass" if report.probed else ""
        click.echo(
            f"OK: session store postgres at {report.database} (schema {report.schema}{passed})"
        )
        return
    if report.path is None:
        click.echo(f"OK: session store {report.store!r} (nothing on disk to check)")
        return
    if not report.exists:
        click.echo(f"OK: no session store at {report.path} yet (the gateway creates it)")
        return
    if not report.problems:
        click.echo(f"OK: session store {report.path} (reads, writes, integrity check passed)")
        return
    click.echo(f"session store {report.path}: {len(report.problems)} problem(s):", err=True)
    for problem in report.problems[:50]:
        click.echo(f"  {problem}", err=True)
    raise click.ClickException(
        "the session store is damaged; stop the gateway, then restore the file from a backup "
        "or move it away (the gateway then starts with no sessions)"
    )
