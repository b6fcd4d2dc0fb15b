"""Stored responses while their runs go on: each run's event log, its readers, its writes.

A stored response (a Responses API response with ``store``, a chat completion stream started
with ``x-epiloop-resumable``) keeps every event its run produced, numbered 0, 1, 2... with no
gap, in the session store, so that ``GET /v1/responses/{id}?stream=true&starting_after=N`` (or
``GET /v1/chat/completions/{id}/stream`` with ``Last-Event-ID``) can replay them after ``N`` and
then follow the live ones, on this instance or on any other that shares the store.

:class:`LiveLog` is one run's log on the instance that runs it. The run's renderer hands it each
event as it is made (:meth:`LiveLog.add`, synchronous and cheap: a list append and a wake-up);
the events stay in memory until the run ends, bounded in count and bytes
(``maxEventsPerRun``, ``maxEventBytesPerRun``: past them the run fails with
``event_log_full``, its ending still logged). Readers on this instance follow the list directly
(:meth:`LiveLog.follow`). The log is written to the store in batches: a flusher task writes the
new events when ``flushEvents`` of them are waiting or ``flushSeconds`` after the first one
came, one ``save_response`` (the record and the batch, one transaction) per batch, never one
per token; the end of the run writes the rest with the final record, shielded from
cancellation and bounded (:data:`FINAL_WRITE_BOUND_SECONDS`).

:func:`follow_stored` is a reader on an instance where the run is not live: it pages through
the stored events, then polls the store every ``pollSeconds`` for new ones until the record is
final (bounded by the agent's run deadline, so a reader never waits forever on a run whose
instance vanished without a trace).

:class:`ResponseLogs` is the registry of the live logs by response id, and the service that
keeps the stored responses tidy (:meth:`ResponseLogs.serve`): at start, and then every
:data:`SWEEP_SECONDS`, it deletes the responses past their retention and marks as ``failed``
(``run_lost``) those whose instance is gone (see :mod:`~trio_gateway.sessions.orphans`).

Imports trio, the agent runtime's types, ``sessions`` and ``wire``; nothing from quart.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import trio

from .. import metrics
from ..config import Config
from ..errors import EventLogFullError, GatewayError, SessionStoreError
from ..sessions.orphans import orphaned
from ..sessions.store import (
    UNFINISHED,
    LoggedEvent,
    SessionStore,
    StoredResponse,
    StoredResponseStatus,
)
from ..wire.response_events import lost_response

__all__ = [
    "FINAL_WRITE_BOUND_SECONDS",
    "LiveLog",
    "LogSettings",
    "ResponseLogs",
    "follow_stored",
]

logger = logging.getLogger(__name__)

#: How long the last write of a run's log may take once the run is over (shielded).
FINAL_WRITE_BOUND_SECONDS = 10.0

#: How often the stored responses past their retention are deleted and lost runs marked.
SWEEP_SECONDS = 30.0

#: How many stored events a reader fetches per read.
PAGE_EVENTS = 500

#: How long after its run's deadline a reader stops waiting for a run that never ends.
_READER_GRACE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class LogSettings:
    """``gateway.http.endpoints.responses``' settings of the event log."""

    retention_seconds: float
    max_events: int
    max_bytes: int
    flush_seconds: float
    flush_events: int
    poll_seconds: float
    #: A reader gets a keep-alive after this long without an event (``gateway.http``).
    keep_alive_seconds: float = 15.0

    @classmethod
    def of(cls, config: Config) -> LogSettings:
        section = config.gateway.http.endpoints.responses
        return cls(
            retention_seconds=section.retention_seconds,
            max_events=section.max_events_per_run,
            max_bytes=section.max_event_bytes_per_run,
            flush_seconds=section.flush_seconds,
            flush_events=section.flush_events,
            poll_seconds=section.poll_seconds,
            keep_alive_seconds=config.gateway.http.keep_alive_seconds,
        )


class LiveLog:
    """The event log of one stored response whose run is on this instance (see the module
    doc). Made by :meth:`ResponseLogs.create`; written while :meth:`running` is entered."""

    def __init__(self, record: StoredResponse, store: SessionStore, settings: LogSettings) -> None:
        #: The record as the next write stores it (its body, status... kept up to date by the
        #: run's owner through :meth:`update`).
        self.record = record
        self.settings = settings
        self._store = store
        #: Every event of the run so far, in order (``events[i].sequence == i``).
        self.events: list[LoggedEvent] = []
        self._bytes = 0
        self._written = 0
        #: Writes made so far (the benchmark counts them).
        self.writes = 0
        self.ended = False
        #: Set by a DELETE: nothing more is written.
        self.deleted = False
        self._lot = trio.lowlevel.ParkingLot()
        #: When the last event came (trio time), and how many keep-alive ticks readers got.
        self._last_event = trio.current_time()
        self._ticks = 0
        self._pending = trio.Event()
        self._batch_full = trio.Event()
        self._write_lock = trio.Lock()
        #: Set once the final record is written (or given up on).
        self.stored = trio.Event()
        #: The response object as it stands now (the run's renderer), written with each batch.
        self.snapshot: Callable[[], bytes] | None = None

    @property
    def id(self) -> str:
        return self.record.id

    # --- the run's side (synchronous) ---------------------------------------------------------

    def check_room(self) -> None:
        """Raise :class:`EventLogFullError` when the log holds as many events or bytes as a
        run may keep: the run then fails (its ending is still logged)."""
        settings = self.settings
        if len(self.events) < settings.max_events and self._bytes < settings.max_bytes:
            return
        self.record = replace(self.record, events_truncated=True)
        raise EventLogFullError(
            f"The run produced more events than a stored response keeps "
            f"({settings.max_events} events or {settings.max_bytes} bytes; "
            "gateway.http.endpoints.responses.maxEventsPerRun / maxEventBytesPerRun)."
        )

    def add(self, sequence: int, data: bytes) -> None:
        """One event, as made (its number is the next one)."""
        events = self.events
        events.append(LoggedEvent(sequence, data))
        self._bytes += len(data)
        self._last_event = trio.current_time()
        self._lot.unpark_all()
        waiting = len(events) - self._written
        if waiting == 1:
            self._pending.set()
        if waiting >= self.settings.flush_events:
            self._batch_full.set()

    def update(self, *, status: StoredResponseStatus, body: bytes) -> None:
        """The record the next write stores has this status and body."""
        self.record = replace(self.record, status=status, body=body)

    def end(
        self,
        *,
        status: StoredResponseStatus,
        body: bytes | None = None,
        session_position: int | None = None,
    ) -> None:
        """The run is over: its last record; the retention starts now. Readers get the
        remaining events, then the end."""
        now = time.time()
        record = self.record
        self.record = replace(
            record,
            status=status,
            body=record.body if body is None else body,
            session_position=session_position,
            ended_at=now,
            expires_at=now + self.settings.retention_seconds,
        )
        self.ended = True
        self._lot.unpark_all()
        self._pending.set()

    def current_body(self) -> bytes:
        """The response object as it stands (live while the run goes on)."""
        if self.snapshot is not None and not self.ended:
            return self.snapshot()
        return self.record.body

    # --- writes ---------------------------------------------------------------------------------

    async def write(self) -> None:
        """Store the record and the events not written yet: one write."""
        async with self._write_lock:
            if self.deleted:
                return
            written = len(self.events)
            batch = self.events[self._written : written]
            record = replace(self.record, body=self.current_body(), event_count=written)
            await self._store.save_response(record, batch)
            self._written = written
            self.writes += 1
            metrics.RESPONSE_LOG_WRITES.inc()
            metrics.RESPONSE_LOG_EVENTS.inc(len(batch))

    async def _serve_flushes(self) -> None:
        settings = self.settings
        while True:
            await self._pending.wait()
            if self.ended:
                return  # the final write is the owner's
            with trio.move_on_after(settings.flush_seconds):
                await self._batch_full.wait()
            self._pending = trio.Event()
            self._batch_full = trio.Event()
            try:
                await self.write()
            except SessionStoreError as exc:
                # Tried again with the next batch (the events stay in memory meanwhile).
                logger.warning("response_log.write.failed id=%s reason=%s", self.id, exc.message)
            if len(self.events) > self._written:
                self._pending.set()

    async def _serve_keep_alives(self) -> None:
        """Wake the readers with a tick when the run was silent for a keep-alive interval
        (one task per run, so a reader's wait needs no cancel scope of its own)."""
        period = self.settings.keep_alive_seconds
        while True:
            await trio.sleep(period / 4)
            now = trio.current_time()
            if now - self._last_event >= period:
                self._last_event = now
                self._ticks += 1
                self._lot.unpark_all()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[LiveLog]:
        """While the run goes on: its batches are written; on exit, the rest with the final
        record (shielded, bounded). The owner calls :meth:`end` before leaving; a log left
        without an end (its owner was cancelled) is ended as lost here."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_flushes)
                nursery.start_soon(self._serve_keep_alives)
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel(reason="the run is over")
        finally:
            if not self.ended:
                self.end(status="failed")
            with trio.move_on_after(FINAL_WRITE_BOUND_SECONDS, shield=True) as scope:
                try:
                    await self.write()
                except SessionStoreError as exc:
                    logger.error(
                        "response_log.final_write.failed id=%s reason=%s", self.id, exc.message
                    )
            if scope.cancelled_caught:
                logger.error(
                    "response_log.final_write.failed id=%s reason=timeout seconds=%g",
                    self.id,
                    FINAL_WRITE_BOUND_SECONDS,
                )
            self.stored.set()

    # --- readers ----------------------------------------------------------------------------

    async def follow(self, after: int) -> AsyncIterator[bytes]:
        """The events after ``after`` as they come, joined per wake-up; ``b""`` when the run
        was silent for a keep-alive interval; ends with the run."""
        index = max(after + 1, 0)
        events = self.events
        ticks = self._ticks
        while True:
            if index < len(events):
                batch = events[index:]
                index += len(batch)
                yield batch[0].data if len(batch) == 1 else b"".join(e.data for e in batch)
                continue
            if self.ended:
                return
            if ticks != self._ticks:
                ticks = self._ticks
                yield b""
                continue
            await self._lot.park()


async def follow_stored(
    store: SessionStore,
    response_id: str,
    after: int,
    *,
    poll_seconds: float,
    keep_alive_seconds: float,
    give_up_at: float,
    live: Callable[[], LiveLog | None],
) -> AsyncIterator[bytes]:
    """The stored events after ``after``, then (while the record is not final) the new ones
    as they are written, polling every ``poll_seconds``; ``b""`` when nothing came for
    ``keep_alive_seconds``. If the run turns out to be live here (it was not yet when the
    reader came), follows it directly. Gives up (ends) at ``give_up_at`` (``time.time()``)."""
    silent_since = trio.current_time()
    while True:
        batch = await store.response_events(response_id, after=after, limit=PAGE_EVENTS)
        if batch:
            after = batch[-1].sequence
            yield b"".join(event.data for event in batch)
            silent_since = trio.current_time()
            continue
        log = live()
        if log is not None:
            async for chunk in log.follow(after):
                yield chunk
            return
        record = await store.get_response(response_id)
        if record is None:
            return  # deleted meanwhile
        if record.status not in UNFINISHED:
            # The final record and the last events are written together: read them once more.
            last = await store.response_events(response_id, after=after, limit=PAGE_EVENTS)
            if not last:
                return
            after = last[-1].sequence
            yield b"".join(event.data for event in last)
            continue
        if time.time() >= give_up_at:
            return
        if trio.current_time() - silent_since >= keep_alive_seconds:
            silent_since = trio.current_time()
            yield b""
        await trio.sleep(poll_seconds)


class ResponseLogs:
    """The live logs of this instance by response id, and the upkeep of the stored ones."""

    def __init__(
        self,
        store: Callable[[], SessionStore],
        config: Callable[[], Config],
        *,
        instance_id: str,
    ) -> None:
        self._store = store
        self._config = config
        self.instance_id = instance_id
        self._live: dict[str, LiveLog] = {}

    def settings(self) -> LogSettings:
        return LogSettings.of(self._config())

    def create(self, record: StoredResponse) -> LiveLog:
        """A new live log for ``record`` (registered until its :meth:`LiveLog.running` ends)."""
        log = LiveLog(record, self._store(), self.settings())
        self._live[record.id] = log
        return log

    def get(self, response_id: str) -> LiveLog | None:
        return self._live.get(response_id)

    @asynccontextmanager
    async def running(self, log: LiveLog) -> AsyncIterator[LiveLog]:
        """:meth:`LiveLog.running`, and the log leaves the registry once it is stored."""
        try:
            async with log.running():
                yield log
        finally:
            if self._live.get(log.id) is log:
                del self._live[log.id]

    def discard(self, log: LiveLog) -> None:
        """Forget a log whose run never started (its admission was refused)."""
        if self._live.get(log.id) is log:
            del self._live[log.id]

    def statistics(self) -> dict[str, int]:
        return {"live": len(self._live)}

    async def tidy(self, *, live_instances: frozenset[str] | None) -> tuple[int, int]:
        """Delete the responses past their retention; mark those whose instance is gone as
        failed. ``live_instances``: the instances alive (PostgreSQL mode); ``None``: the
        processes of this host that share the store (SQLite), found by their default instance
        id (``<host>-<pid>``). Returns (swept, lost)."""
        store = self._store()
        now = time.time()
        swept = await store.sweep_responses(now)
        unfinished = await store.unfinished_responses()
        if live_instances is None:
            live_instances = frozenset(
                record.instance_id for record in unfinished if _process_alive(record.instance_id)
            )
        lost = orphaned(
            unfinished,
            own_instance=self.instance_id,
            live_here=frozenset(self._live),
            live_instances=live_instances,
        )
        retention = self.settings().retention_seconds
        for record in lost:
            body = lost_response(record.body, _LOST) if record.kind == "response" else record.body
            await store.save_response(
                replace(
                    record, status="failed", body=body, ended_at=now, expires_at=now + retention
                )
            )
            logger.warning(
                "response.lost id=%s run_id=%s instance=%s",
                record.id,
                record.run_id,
                record.instance_id,
            )
        return swept, len(lost)

    async def serve(
        self,
        live_instances: Callable[[], Awaitable[frozenset[str]]] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Tidy at start (before ``started``), then every :data:`SWEEP_SECONDS`, until
        cancelled. ``live_instances`` is an async function giving the live instance ids
        (PostgreSQL mode)."""
        first = True
        while True:
            try:
                instances = None if live_instances is None else await live_instances()
                swept, lost = await self.tidy(live_instances=instances)
                if swept or lost:
                    logger.info("response.tidy.complete swept=%d lost=%d", swept, lost)
            except GatewayError as exc:
                logger.warning("response.tidy.failed reason=%s", exc.message)
            if first:
                first = False
                task_status.started()
            await trio.sleep(SWEEP_SECONDS)


_LOST = "The gateway instance running this response stopped before the run ended (run_lost)."


def _process_alive(instance_id: str) -> bool:
    """Whether ``instance_id`` is a default id (``<host>-<pid>``) of a process of this host that
    still runs. Any other id is taken as alive: only its own instance can tell it is not."""
    host, _, pid = instance_id.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
