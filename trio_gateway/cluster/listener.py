"""The dedicated connection that LISTENs: the fast path of the cluster's wake-ups and aborts.

Owns one connection outside the pool (LISTEN belongs to a session, so it needs a connection of
its own, and a direct one: a pooler in transaction mode would hand the session to others), the
channels it listens on, and its replacement when it drops (``pg_terminate_backend``, a server
restart, a network cut), with a growing delay between attempts. After each reconnection
``on_reconnect`` runs: notifications sent while the connection was down are lost, so the caller
re-reads what they would have said (the durable state in the tables).

No worker thread waits for notifications: trio waits for the connection's socket to become
readable (``wait_readable``), then libpq's non-blocking calls (``consume_input``,
``notifies``) drain what arrived. Cancelling the wait is instant and leaves nothing running.
Only connecting runs in a thread (libpq's connect blocks), bounded by ``connect_timeout``.

Imports psycopg, trio and ``errors`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import psycopg
import trio
from psycopg import pq, sql

from ..errors import SessionStoreUnavailableError
from ..pg.database import redact_dsn

__all__ = ["ListenerState", "reconnect_delay", "serve_listener"]

logger = logging.getLogger(__name__)

#: Seconds libpq may take to connect.
CONNECT_TIMEOUT_SECONDS = 5
#: The first and the longest delay between reconnection attempts.
FIRST_RETRY_SECONDS = 0.1
MAX_RETRY_SECONDS = 5.0


def reconnect_delay(attempt: int) -> float:
    """The delay before reconnection attempt ``attempt`` (1, 2, ...): doubling, capped."""
    return float(min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** max(0, attempt - 1)))


class ListenerState:
    """Whether the listener holds a live connection now (for readiness), and how often it
    connected (a test and the logs can see a reconnection)."""

    def __init__(self) -> None:
        self.connected = False
        self.connections = 0


class _Lost(Exception):
    """The listening connection is gone."""


def _connect(dsn: str, channels: Sequence[str]) -> psycopg.Connection:
    connection = psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        application_name="epiloop-listener",
        # A peer that vanished without closing (host lost) is noticed within a minute.
        keepalives=1,
        keepalives_idle=20,
        keepalives_interval=5,
        keepalives_count=4,
    )
    try:
        for channel in channels:
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    except BaseException:
        connection.close()
        raise
    return connection


async def _pump(connection: psycopg.Connection, on_notify: Callable[[str, str], None]) -> None:
    pgconn = connection.pgconn
    while True:
        await trio.lowlevel.wait_readable(pgconn.socket)
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as exc:
            raise _Lost(str(exc).strip() or "connection lost") from exc
        if pgconn.status != pq.ConnStatus.OK:
            raise _Lost("connection lost")
        while (notify := pgconn.notifies()) is not None:
            on_notify(notify.relname.decode(), notify.extra.decode())


async def serve_listener(
    dsn: str,
    channels: Sequence[str],
    on_notify: Callable[[str, str], None],
    on_reconnect: Callable[[], Awaitable[None]],
    state: ListenerState,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """LISTEN on ``channels`` and call ``on_notify(channel, payload)`` (synchronously, in
    order) until cancelled; reconnect when the connection drops, then ``await
    on_reconnect()``. Ready (``task_status``) once the first connection listens; failing to
    make that one is a :class:`SessionStoreUnavailableError`."""
    display = redact_dsn(dsn)
    attempt = 0
    while True:
        try:
            connection = await trio.to_thread.run_sync(
                _connect, dsn, channels, abandon_on_cancel=True
            )
        except psycopg.Error as exc:
            if state.connections == 0:
                raise SessionStoreUnavailableError(
                    f"Cannot open the listening connection to PostgreSQL at {display}: "
                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
                ) from exc
            attempt += 1
            logger.warning("listener.connect.failed attempt=%d reason=%s", attempt, exc)
            await trio.sleep(reconnect_delay(attempt))
            continue
        state.connections += 1
        state.connected = True
        attempt = 0
        try:
            if state.connections == 1:
                task_status.started()
            else:
                logger.info("listener.reconnected connections=%d", state.connections)
                await on_reconnect()
            await _pump(connection, on_notify)
        except _Lost as exc:
            logger.warning("listener.lost reason=%s", exc)
        finally:
            state.connected = False
            connection.close()  # no round trip: libpq closes the socket
        attempt += 1
        await trio.sleep(reconnect_delay(attempt))
