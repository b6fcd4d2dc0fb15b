"""The gateway instances sharing one database, and the heartbeat that keeps an instance alive.

Owns the ``epiloop_instances`` rows. An instance registers at start and renews its row every
``lease_seconds / 3`` (:func:`serve_heartbeat`): one statement per instance per beat, however
many runs and lanes it holds, because everything an instance holds is alive exactly while its
row's ``expires_at`` is ahead of the database's clock. An instance that dies (``kill -9``, its
host lost) or is cut off stops renewing; after ``lease_seconds`` its lanes and runs count as
abandoned. Only the database's clock is used, so the hosts' clocks need not agree.

Plain functions of a connection (run through :meth:`~trio_gateway.pg.database.Database.run`),
plus the heartbeat loop. Imports psycopg, trio and ``errors`` only.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable

import psycopg
import trio

from ..errors import SessionStoreError
from .database import Database

__all__ = [
    "beat",
    "default_instance_id",
    "deregister",
    "live_instance_ids",
    "register",
    "serve_heartbeat",
]

logger = logging.getLogger(__name__)


def default_instance_id() -> str:
    """``<host name>-<pid>``: unique among live processes, readable in status and logs."""
    return f"{socket.gethostname()}-{os.getpid()}"


def register(
    connection: psycopg.Connection, instance_id: str, lease_seconds: float, version: str
) -> None:
    """Create (or take over, after a restart with the same id) this instance's row."""
    connection.execute(
        """
        INSERT INTO epiloop_instances (instance_id, host, pid, version, expires_at)
        VALUES (%(id)s, %(host)s, %(pid)s, %(version)s,
                now() + make_interval(secs => %(lease)s))
        ON CONFLICT (instance_id) DO UPDATE
           SET host = excluded.host, pid = excluded.pid, version = excluded.version,
               started_at = now(), heartbeat_at = now(), expires_at = excluded.expires_at
        """,
        {
            "id": instance_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": version,
            "lease": lease_seconds,
        },
    )


def beat(connection: psycopg.Connection, instance_id: str, lease_seconds: float) -> bool:
    """Renew this instance's row; ``False`` if it is gone (another party removed it)."""
    cursor = connection.execute(
        """
        UPDATE epiloop_instances
           SET heartbeat_at = now(), expires_at = now() + make_interval(secs => %s)
         WHERE instance_id = %s
        """,
        (lease_seconds, instance_id),
    )
    return cursor.rowcount == 1


def live_instance_ids(connection: psycopg.Connection) -> frozenset[str]:
    """The instances whose lease has not expired (by the database's clock)."""
    rows = connection.execute(
        "SELECT instance_id FROM epiloop_instances WHERE expires_at > now()"
    ).fetchall()
    return frozenset(str(row[0]) for row in rows)


def deregister(connection: psycopg.Connection, instance_id: str) -> None:
    """This instance stops (a clean exit): what it holds is released at once."""
    connection.execute("DELETE FROM epiloop_instances WHERE instance_id = %s", (instance_id,))


async def serve_heartbeat(
    db: Database,
    instance_id: str,
    lease_seconds: float,
    version: str,
    *,
    on_beat: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Register, then renew the row every ``lease_seconds / 3`` until cancelled.

    ``on_beat`` runs after each renewal (the durable checks that ride on the heartbeat). A beat
    that fails (the database is away) is logged and tried again at the next interval; a row
    that vanished is registered again. Started with ``nursery.start``: ready once registered."""
    await db.run(lambda c: register(c, instance_id, lease_seconds, version), cancellable=False)
    task_status.started()
    interval = lease_seconds / 3
    while True:
        await trio.sleep(interval)
        try:
            alive = await db.run(lambda c: beat(c, instance_id, lease_seconds))
            if not alive:
                logger.warning("instance.reregistered instance=%s", instance_id)
                await db.run(lambda c: register(c, instance_id, lease_seconds, version))
            if on_beat is not None:
                await on_beat()
        except SessionStoreError as exc:
            logger.warning("instance.heartbeat.failed instance=%s reason=%s", instance_id, exc)
