"""A private PostgreSQL server for a test that stops and starts it (never the machine's own).

:func:`open_private_postgres` runs ``initdb`` (from ``/usr/lib/postgresql/<version>/bin``) into
a temporary directory and ``pg_ctl start`` on a free port of 127.0.0.1 with ``fsync=off``; the
yielded :class:`PrivatePostgres` stops and starts it (``pg_ctl -m fast``: open connections are
cut, as when a real server restarts). As root, ``initdb`` and ``pg_ctl`` run as the ``postgres``
user (``runuser``), which owns the directory; otherwise as the current user. The server is
stopped and the directory removed when the block ends, bounded, whatever the test did.

:func:`postgres_binaries` finds the binaries; a test without them skips with that reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

__all__ = ["PrivatePostgres", "open_private_postgres", "postgres_binaries"]

#: Bound on initdb (a few seconds with fsync off).
INITDB_BOUND_SECONDS = 60.0
#: Bound on one pg_ctl start or stop (``-t`` is given the same).
PG_CTL_BOUND_SECONDS = 30


def postgres_binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl, if any."""
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    found = [
        path / "bin"
        for path in root.iterdir()
        if (path / "bin" / "initdb").exists() and (path / "bin" / "pg_ctl").exists()
    ]
    if not found:
        return None
    return max(found, key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _as_postgres(command: list[str]) -> list[str]:
    """Run as the ``postgres`` user when we are root (the server refuses to run as root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@dataclass
class PrivatePostgres:
    bin_dir: Path
    data_dir: Path
    port: int
    user: str

    @property
    def dsn(self) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres "
            "connect_timeout=3 sslmode=disable"
        )

    async def _pg_ctl(self, *args: str, check: bool = True) -> None:
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w"]
        command += ["-t", str(PG_CTL_BOUND_SECONDS), *args]
        with trio.fail_after(PG_CTL_BOUND_SECONDS + 5):
            await trio.run_process(
                _as_postgres(command), capture_stdout=True, capture_stderr=True, check=check
            )

    async def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c fsync=off "
            f"-c unix_socket_directories={self.data_dir} -c max_connections=100"
        )
        log = self.data_dir / "server.log"
        await self._pg_ctl("-l", str(log), "-o", options, "start")

    async def stop(self) -> None:
        """``pg_ctl stop -m fast``: every open connection is cut."""
        await self._pg_ctl("-m", "fast", "stop")

    def log_tail(self, chars: int = 3000) -> str:
        path = self.data_dir / "server.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@asynccontextmanager
async def open_private_postgres(bin_dir: Path) -> AsyncIterator[PrivatePostgres]:
    """A fresh server, started; stopped and removed on exit."""
    # Not under pytest's tmp_path: as root that is a 0700 directory the postgres user cannot
    # enter.
    base = Path(tempfile.mkdtemp(prefix="epiloop-pg-"))
    data_dir = base / "data"
    root = os.geteuid() == 0
    user = "postgres" if root else os.environ.get("USER", "postgres")
    try:
        data_dir.mkdir()
        if root:
            shutil.chown(base, "postgres")
            shutil.chown(data_dir, "postgres")
        server = PrivatePostgres(bin_dir, data_dir, _free_port(), user)
        initdb = [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", user]
        initdb += ["--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C"]
        with trio.fail_after(INITDB_BOUND_SECONDS):
            await trio.run_process(_as_postgres(initdb), capture_stdout=True, capture_stderr=True)
        await server.start()
        try:
            yield server
        finally:
            # Not checked: the test may have left it stopped.
            with trio.move_on_after(PG_CTL_BOUND_SECONDS + 10, shield=True):
                await server._pg_ctl("-m", "immediate", "stop", check=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)
