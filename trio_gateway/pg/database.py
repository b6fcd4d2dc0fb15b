"""A PostgreSQL database as trio code sees it: a pool of connections driven from worker threads.

Owns the connection pool (psycopg_pool's), the worker threads that run statements on it, the
translation of psycopg's failures into :class:`~trio_gateway.errors.SessionStoreUnavailableError`
(the database cannot be reached) and :class:`~trio_gateway.errors.SessionStoreError` (a
statement failed), and the redaction of the connection string. Imports nothing above ``errors``.

Why threads. psycopg 3 has no trio support, so the choice is between its blocking API in worker
threads and a driver of our own over libpq's non-blocking interface (``wait_readable`` on the
socket). The blocking API is the one psycopg's authors test and keep; a worker thread costs a
few tens of microseconds per call (measured in benchmarks/RESULTS.md, "cluster"), against a
network round trip of the same order even on loopback: well inside the budget of a run.

Calls. :meth:`Database.run` runs one function ``fn(connection)`` in a worker thread on a pooled
connection in autocommit mode (a function that needs a transaction opens one with
``connection.transaction()``). At most ``pool_size`` calls run at once (a
:class:`trio.CapacityLimiter`: waiting for it is cancellable and holds nothing), so a thread never
waits inside the pool.

Cancellation. A call is never abandoned while its thread uses a connection, so a connection
goes back to the pool only between statements, never mid-query:

- a *cancellable* call (reads, and writes whose effect is harmless if interrupted) asks the
  server to cancel the running statement (``cancel_safe``), waits for the thread to return
  (shielded, bounded by :data:`CANCEL_BOUND_SECONDS`), then raises ``trio.Cancelled``. The
  statement's transaction is rolled back. The cancel request is sent from a thread of its own,
  which the call joins before its connection goes back to the pool, so it can never land on
  another call's statement.
- any other call runs to its end (bounded by the server's ``statement_timeout``, which every
  pooled connection sets, and on the client by TCP keepalives and ``tcp_user_timeout``) and
  returns what it did: the caller learns of its cancellation at its next checkpoint, as with
  ``trio.to_thread.run_sync`` (a turn stored is reported stored, never lost).

Lost connections. A statement that fails because its connection is gone (the server restarted,
``pg_terminate_backend``, a network cut) leaves a broken connection, which the pool discards and
replaces. An ``idempotent`` call (the caller says so; reads are) is tried once more on another
connection before it fails. A call waits at most :data:`CONNECT_SECONDS` for a connection, and
only :data:`UNREACHABLE_CHECKOUT_SECONDS` while the last call found the server unreachable, so
that with the database away a stateful request gets its 503 in about half a second.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import outcome
import psycopg
import psycopg_pool
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import SessionStoreError, SessionStoreUnavailableError

__all__ = [
    "CANCEL_BOUND_SECONDS",
    "Database",
    "DatabaseStatistics",
    "open_database",
    "redact_dsn",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a cancelled call waits for its statement to stop after asking the server to cancel it.
CANCEL_BOUND_SECONDS = 5.0

#: How long opening the pool waits for its first connection, and a call for a connection.
CONNECT_SECONDS = 5.0

#: How long closing the pool may take (shielded from cancellation).
CLOSE_BOUND_SECONDS = 10.0

#: How long data sent on a pooled connection may stay unacknowledged before the call fails.
TCP_USER_TIMEOUT_MS = 10_000

#: How long a call waits for a connection while the server is known to be unreachable.
UNREACHABLE_CHECKOUT_SECONDS = 0.5

#: Every pooled connection's ``statement_timeout``: no statement of ours runs longer.
STATEMENT_TIMEOUT_MS = 30_000

#: What a redacted secret looks like.
REDACTED = "********"


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password (and any other secret parameter) replaced by ``********``.

    Works on both forms, ``key=value`` strings and ``postgresql://`` URLs; a string that does not
    parse is replaced whole (it may hold a secret in a place we cannot find)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return REDACTED
    secret_keys = {"password", "sslpassword", "sslkey"}
    if not secret_keys & params.keys():
        return dsn
    shown = {key: (REDACTED if key in secret_keys else value) for key, value in params.items()}
    return make_conninfo("", **shown)


@dataclass(frozen=True, slots=True)
class DatabaseStatistics:
    """A snapshot: calls running now, calls waiting for a connection, connections open, and
    calls made since the pool opened (each one round trip, or a few for a transaction)."""

    running: int
    waiting: int
    connections: int
    calls: int = 0


class _Call(Generic[T]):
    """One call in its worker thread; knows its connection so that it can be cancelled."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool,
        fn: Callable[[psycopg.Connection], T],
        checkout_seconds: float,
    ):
        self._pool = pool
        self._fn = fn
        self._checkout_seconds = checkout_seconds
        self._lock = threading.Lock()
        self._connection: psycopg.Connection | None = None
        self._interrupted = False
        #: The thread that sends the server a cancel request, if one was started.
        self._canceller: threading.Thread | None = None

    def __call__(self, idempotent: bool) -> T:
        try:
            return self._once(self._checkout_seconds)
        except psycopg_pool.PoolTimeout:
            raise  # no connection to be had: waiting again would only double the wait
        except psycopg.OperationalError as exc:
            if not idempotent or self._interrupted or not _connection_lost(exc):
                raise
            logger.info("db.retry reason=%s", _first_line(exc))
            # The other idle connections were likely lost with it (a server restart): the
            # pool checks them all and replaces the broken ones before the second try, which
            # waits no longer than a call does while the server is known to be away.
            self._pool.check()
            return self._once(min(self._checkout_seconds, UNREACHABLE_CHECKOUT_SECONDS))

    def _once(self, checkout_seconds: float) -> T:
        with self._pool.connection(timeout=checkout_seconds) as connection:
            with self._lock:
                self._connection = connection
            try:
                if self._interrupted:
                    raise psycopg.errors.QueryCanceled("cancelled before it started")
                return self._fn(connection)
            finally:
                with self._lock:
                    self._connection = None
                    canceller = self._canceller
                if canceller is not None:
                    # The cancel request must have reached the server before the connection
                    # goes back to the pool: landing late, it would cancel the statement of
                    # whichever call takes the connection next.
                    canceller.join(CANCEL_BOUND_SECONDS)

    def interrupt(self) -> None:
        """Ask the server to cancel the statement this call runs (from the trio thread)."""
        with self._lock:
            self._interrupted = True
            connection = self._connection
            if connection is not None and self._canceller is None:
                # cancel_safe blocks for a round trip to the server: a short-lived thread of
                # its own does it (bounded by its timeout), joined by the call's thread before
                # the connection goes back to the pool.
                self._canceller = threading.Thread(
                    target=_cancel_quietly,
                    args=(connection,),
                    name="epiloop-pg-cancel",
                    daemon=True,
                )
                self._canceller.start()


def _cancel_quietly(connection: psycopg.Connection) -> None:
    try:
        connection.cancel_safe(timeout=CANCEL_BOUND_SECONDS)
    except (psycopg.Error, OSError) as exc:
        logger.debug("db.cancel.failed reason=%s", _first_line(exc))


def _connection_lost(exc: psycopg.OperationalError) -> bool:
    """Whether ``exc`` says the connection is gone (not that a statement failed)."""
    if isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.CrashShutdown):
        return True
    return exc.sqlstate is None or exc.sqlstate.startswith("08")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Database:
    """A pool of connections to one database; made by :func:`open_database` only."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, *, pool_size: int, dsn: str) -> None:
        self._pool = pool
        self._limiter = trio.CapacityLimiter(pool_size)
        self._calls = 0
        #: Set when a call found the server unreachable, cleared by the next that reached it:
        #: meanwhile calls wait only :data:`UNREACHABLE_CHECKOUT_SECONDS` for a connection, so
        #: requests get their 503 at once instead of each waiting out the pool.
        self._unreachable = False
        #: The connection string, for the dedicated connections a LISTEN needs (never logged:
        #: :attr:`display_dsn` is).
        self.dsn = dsn
        self.display_dsn = redact_dsn(dsn)

    async def run(
        self,
        fn: Callable[[psycopg.Connection], T],
        *,
        cancellable: bool = True,
        idempotent: bool = True,
    ) -> T:
        """``fn(connection)`` in a worker thread, on a pooled connection in autocommit mode.

        See the module docstring for cancellation (``cancellable``) and retries
        (``idempotent``). Raises :class:`SessionStoreUnavailableError` when the database cannot
        be reached and :class:`SessionStoreError` when a statement fails; errors of ours that
        ``fn`` raises pass through unchanged."""
        async with self._limiter:
            self._calls += 1
            checkout = UNREACHABLE_CHECKOUT_SECONDS if self._unreachable else CONNECT_SECONDS
            call: _Call[T] = _Call(self._pool, fn, checkout)
            result = await _in_thread(lambda: call(idempotent), call.interrupt, cancellable)
        try:
            value = result.unwrap()
        except psycopg_pool.PoolTimeout as exc:
            self._unreachable = True
            raise SessionStoreUnavailableError(
                f"The session database does not answer: {_first_line(exc)}"
            ) from exc
        except psycopg.OperationalError as exc:
            if _connection_lost(exc):
                self._unreachable = True
                raise SessionStoreUnavailableError(
                    f"The session database is unreachable: {_first_line(exc)}"
                ) from exc
            raise SessionStoreError(
                f"A session database statement failed: {_first_line(exc)}"
            ) from exc
        except psycopg.Error as exc:
            self._unreachable = False  # it answered, with an error
            raise SessionStoreError(
                f"A session database statement failed: {_first_line(exc)}"
            ) from exc
        except Exception:
            self._unreachable = False  # ``fn`` raised one of ours: the server answered
            raise
        self._unreachable = False
        return value

    def statistics(self) -> DatabaseStatistics:
        stats = self._pool.get_stats()
        return DatabaseStatistics(
            running=self._limiter.borrowed_tokens,
            waiting=self._limiter.statistics().tasks_waiting,
            connections=stats.get("pool_size", 0),
            calls=self._calls,
        )


async def _in_thread(
    work: Callable[[], T], interrupt: Callable[[], None], cancellable: bool
) -> outcome.Outcome[T]:
    """Run ``work`` in a worker thread and return its outcome; on cancellation, ``interrupt`` it
    (if ``cancellable``), wait for the thread (shielded, bounded) and raise ``Cancelled``."""
    done = trio.Event()
    box: list[outcome.Outcome[T]] = []
    token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[T]) -> None:
        box.append(result)
        with contextlib.suppress(trio.RunFinishedError):  # the loop is gone: nobody waits
            token.run_sync_soon(done.set)

    trio.lowlevel.start_thread_soon(work, deliver, name="epiloop-pg")
    try:
        await done.wait()
    except trio.Cancelled:
        if cancellable:
            interrupt()
        bound = CANCEL_BOUND_SECONDS if cancellable else STATEMENT_TIMEOUT_MS / 1000 + 5
        with trio.move_on_after(bound, shield=True) as waited:
            await done.wait()
        if waited.cancelled_caught:
            logger.warning("db.cancel.slow seconds=%s: the statement still runs", bound)
            raise
        if cancellable:
            raise
        # A call that runs to its end returns what it did (a turn stored is stored): the
        # cancellation stays pending and is raised at the caller's next checkpoint, as
        # trio.to_thread.run_sync does for a call it may not abandon.
    return box[0]


@asynccontextmanager
async def open_database(
    dsn: str, *, pool_size: int, application_name: str = "epiloop-gateway"
) -> AsyncIterator[Database]:
    """A pool of up to ``pool_size`` connections to ``dsn``, closed on exit.

    Waits (at most :data:`CONNECT_SECONDS`) for the first connection, so an unreachable server
    is a :class:`SessionStoreUnavailableError` here, at start, with the redacted DSN."""
    display = redact_dsn(dsn)
    try:
        given = conninfo_to_dict(dsn).get("options") or ""
    except psycopg.ProgrammingError as exc:
        raise SessionStoreError(f"session.postgres.dsn does not parse: {display}") from exc
    options = f"{given} -c statement_timeout={STATEMENT_TIMEOUT_MS}".strip()
    pool = psycopg_pool.ConnectionPool(
        dsn,
        min_size=1,
        max_size=pool_size,
        open=False,
        kwargs={
            "autocommit": True,
            "application_name": application_name,
            "options": options,
            # A network cut must not hang a call until the kernel gives up (minutes): data
            # sent and not acknowledged fails after TCP_USER_TIMEOUT_MS, a silent peer after
            # the keepalive probes (about 11 s).
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
        },
        timeout=CONNECT_SECONDS,
        name="epiloop",
    )

    def open_pool() -> None:
        pool.open(wait=True, timeout=CONNECT_SECONDS)

    try:
        await trio.to_thread.run_sync(open_pool)
    except (psycopg_pool.PoolTimeout, psycopg.Error) as exc:
        await trio.to_thread.run_sync(lambda: pool.close(timeout=0))
        raise SessionStoreUnavailableError(
            f"Cannot connect to PostgreSQL at {display} within {CONNECT_SECONDS:g} s; "
            "is the server running, and is session.postgres.dsn right?"
        ) from exc
    try:
        yield Database(pool, pool_size=pool_size, dsn=dsn)
    finally:
        with trio.move_on_after(CLOSE_BOUND_SECONDS, shield=True) as scope:
            await trio.to_thread.run_sync(
                lambda: pool.close(timeout=CLOSE_BOUND_SECONDS), abandon_on_cancel=True
            )
        if scope.cancelled_caught:
            logger.warning("db.close.slow seconds=%s", CLOSE_BOUND_SECONDS)
