"""The PostgreSQL side of the ``epiloop`` command, run as a user runs it (a subprocess): ``db
status|migrate``, ``doctor``, ``config show`` and ``gateway`` with ``session.store: "postgres"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from trio_gateway.pg.migrations import known_migrations

BOUND = 30  # seconds: every subprocess is bounded

UNREACHABLE = "postgresql://epiloop:s3cret-pw@127.0.0.1:1/sessions?connect_timeout=1"


def epiloop(
    state: Path, *args: str, dsn: str | None = None, dsn_in_file: bool = True
) -> subprocess.CompletedProcess[str]:
    """``epiloop <args>`` with a config whose store is PostgreSQL at ``dsn`` (in the file, or
    in ``$EPILOOP_POSTGRES_DSN``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPILOOP_")}
    env["EPILOOP_STATE_DIR"] = str(state)
    session: dict[str, object] = {"store": "postgres"}
    if dsn is not None and dsn_in_file:
        session["postgres"] = {"dsn": dsn}
    elif dsn is not None:
        env["EPILOOP_POSTGRES_DSN"] = dsn
    (state / "epiloop.json").write_text(json.dumps({"session": session}))
    return subprocess.run(
        [sys.executable, "-m", "trio_gateway", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("Error: ")]


def test_cli_db_status_and_migrate(tmp_path: Path, pg_dsn: str) -> None:
    known = known_migrations()
    before = epiloop(tmp_path, "db", "status", dsn=pg_dsn)
    assert before.returncode == 0, before.stderr
    assert f"schema version: 0 (this gateway knows {len(known)})" in before.stdout
    assert f"pending: {len(known)} migration(s)" in before.stdout
    assert f"  {known[-1].version:04d}_{known[-1].name}" in before.stdout

    migrated = epiloop(tmp_path, "db", "migrate", dsn=pg_dsn)
    assert migrated.returncode == 0, migrated.stderr
    assert [line for line in migrated.stdout.splitlines() if line.startswith("applied ")] == [
        f"applied {m.version:04d}_{m.name}" for m in known
    ]
    again = epiloop(tmp_path, "db", "migrate", dsn=pg_dsn, dsn_in_file=False)
    assert again.returncode == 0, again.stderr
    assert "nothing to migrate" in again.stdout

    after = epiloop(tmp_path, "db", "status", dsn=pg_dsn)
    assert after.returncode == 0
    assert f"schema version: {len(known)} (this gateway knows {len(known)})" in after.stdout
    assert "up to date" in after.stdout

    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO epiloop_schema (version, name) VALUES (%s, 'future')", (len(known) + 1,)
        )
    newer = epiloop(tmp_path, "db", "status", dsn=pg_dsn)
    assert newer.returncode == 1
    assert error_lines(newer) == [error_lines(newer)[0]]
    assert "newer than this gateway knows" in error_lines(newer)[0]


def test_cli_db_errors_are_one_line(tmp_path: Path) -> None:
    missing = epiloop(tmp_path, "db", "status")
    assert missing.returncode == 1
    assert len(error_lines(missing)) == 1
    assert "EPILOOP_POSTGRES_DSN" in error_lines(missing)[0]

    unreachable = epiloop(tmp_path, "db", "migrate", dsn=UNREACHABLE)
    assert unreachable.returncode == 1
    (line,) = error_lines(unreachable)
    assert "Cannot connect to PostgreSQL at" in line
    assert "s3cret-pw" not in unreachable.stdout + unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_cli_gateway_with_postgres_unreachable_exits_1_with_one_error_line(
    tmp_path: Path,
) -> None:
    done = epiloop(tmp_path, "gateway", "--port", "0", dsn=UNREACHABLE)
    assert done.returncode == 1
    (line,) = error_lines(done)
    assert line.startswith("Error: Cannot connect to PostgreSQL at")
    assert "s3cret-pw" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_cli_config_show_redacts_the_dsn(tmp_path: Path) -> None:
    secret_dsn = "host=db.example port=5432 user=epiloop password=s3cret-pw dbname=sessions"
    for in_file in (True, False):
        shown = epiloop(tmp_path, "config", "show", dsn=secret_dsn, dsn_in_file=in_file)
        assert shown.returncode == 0, shown.stderr
        assert "s3cret-pw" not in shown.stdout + shown.stderr
        dsn = json.loads(shown.stdout)["session"]["postgres"]["dsn"]
        assert conninfo_to_dict(dsn)["host"] == "db.example"
        assert conninfo_to_dict(dsn)["password"] == "********"
        source = "config" if in_file else "EPILOOP_POSTGRES_DSN"
        assert f"session.postgres.dsn from {source}" in shown.stderr
    url = "postgresql://epiloop:s3cret-pw@db.example/sessions"
    shown = epiloop(tmp_path, "config", "show", dsn=url)
    assert "s3cret-pw" not in shown.stdout
    assert "db.example" in shown.stdout


def test_cli_doctor_checks_the_postgres_store(tmp_path: Path, pg_dsn: str) -> None:
    pending = epiloop(tmp_path, "doctor", dsn=pg_dsn)
    assert pending.returncode == 0, pending.stderr
    assert "migration(s) pending" in pending.stdout

    assert epiloop(tmp_path, "db", "migrate", dsn=pg_dsn).returncode == 0
    # A password in the DSN (trust auth ignores it) must not be printed.
    with_password = make_conninfo(pg_dsn, password="s3cret-pw")
    healthy = epiloop(tmp_path, "doctor", dsn=with_password)
    assert healthy.returncode == 0, healthy.stderr
    known = len(known_migrations())
    assert f"(schema version {known} of {known}; reads and writes pass)" in healthy.stdout
    assert "s3cret-pw" not in healthy.stdout

    unreachable = epiloop(tmp_path, "doctor", dsn=UNREACHABLE)
    assert unreachable.returncode == 1
    (line,) = error_lines(unreachable)
    assert "Cannot connect to PostgreSQL" in line
    assert "s3cret-pw" not in unreachable.stderr
