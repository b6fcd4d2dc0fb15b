"""The gateway instances sharing one database, and the heartbeat that keeps an instance alive.

Owns the ``epiloop_instances`` rows. An instance registers at start (dropping what a previous
process with the same id left) and renews its row every ``lease_seconds / 3``
(:func:`serve_heartbeat`): one statement per instance per beat, however many runs and lanes it
holds, because everything an instance holds is alive exactly while its
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
    connection: psycopg.Connection,
    instance_id: str,
    lease_seconds: float,
    version: str,
    *,
    fresh: bool = True,
) -> int:
    """Create this instance's row, or take it over after a restart with the same id; the number
    of runs a previous process of that id left behind.

    ``fresh`` (a process that starts): in the same transaction, the runs registered under this
    id are dropped and the lanes they hold (under the epoch they were granted) released, with a
    notification to their waiters: they belong to a previous process (killed, say, and
    restarted with a fixed ``gateway.instanceId``, or as ``<host>-<pid>`` with the same pid in
    a container), which will never finish them, and whose row this one renews. Not ``fresh``
    (this process registers again after its row was swept): its own runs are kept."""
    with connection.transaction():
        dropped: list[str] = []
        if fresh:
            rows = connection.execute(
                "SELECT run_id FROM epiloop_runs WHERE instance_id = %s ORDER BY run_id",
                (instance_id,),
            ).fetchall()
            dropped = [str(row[0]) for row in rows]
        if dropped:
            connection.execute(
                "SELECT epiloop_finish(%s, %s, '{}'::text[], '{}'::jsonb[])",
                (instance_id, dropped),
            )
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
    return len(dropped)


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
    on_renewed: Callable[[], None] | None = None,
    on_beat: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Register, then renew the row every ``lease_seconds / 3`` until cancelled.

    Renewals keep to fixed deadlines (``trio.sleep_until``: a slow renewal does not push the
    next ones back; after one slower than the interval, the next comes at once, then the rhythm
    resumes). ``on_renewed`` is called after each renewal that succeeded. ``on_beat`` (the
    durable checks that ride on the heartbeat) runs after a renewal in a task of its own, one at
    a time, so that it never delays the next renewal: a beat whose ``on_beat`` of before still
    runs skips its own. A renewal or an ``on_beat`` that fails because of the database is
    logged, and tried again at the next beat; a row that vanished is registered again.
    Started with ``nursery.start``: ready once registered."""
    dropped = await db.run(
        lambda c: register(c, instance_id, lease_seconds, version), cancellable=False
    )
    if dropped:
        logger.warning(
            "instance.restarted instance=%s dropped_runs=%d: a previous process of this id "
            "left them",
            instance_id,
            dropped,
        )
    task_status.started()
    interval = lease_seconds / 3
    checking = False

    async def check(work: Callable[[], Awaitable[None]]) -> None:
        nonlocal checking
        try:
            await work()
        except SessionStoreError as exc:
            logger.warning("instance.on_beat.failed instance=%s reason=%s", instance_id, exc)
        finally:
            checking = False

    async with trio.open_nursery() as nursery:
        deadline = trio.current_time()
        while True:
            deadline = max(deadline + interval, trio.current_time())
            await trio.sleep_until(deadline)
            try:
                alive = await db.run(lambda c: beat(c, instance_id, lease_seconds))
                if not alive:
                    logger.warning("instance.reregistered instance=%s", instance_id)
                    await db.run(
                        lambda c: register(c, instance_id, lease_seconds, version, fresh=False)
                    )
            except SessionStoreError as exc:
                logger.warning("instance.heartbeat.failed instance=%s reason=%s", instance_id, exc)
                continue
            if on_renewed is not None:
                on_renewed()
            if on_beat is not None and not checking:
                checking = True
                nursery.start_soon(check, on_beat)
