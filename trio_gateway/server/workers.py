"""Worker processes that share the listening sockets: ``epiloop gateway --workers N``.

The parent binds the sockets (so a port in use fails once, before any worker starts), starts
``N`` processes (spawned: fresh interpreters) that each serve on them, and owns them: it
passes ``SIGTERM`` / ``SIGINT`` / ``SIGHUP`` on to them, and stops them all when one of them
fails. Its exit status is what a supervisor needs: 0 after a requested stop that every worker
finished cleanly, 1 when a worker failed to start or ended unexpectedly, with the failing
worker's one-line reason (sent over a pipe) for the caller to print once.

hypercorn's own ``--workers`` runner loses a failed worker's exit status (its ``run()``
replaces it with the result of a second reaping pass, which no longer sees that worker), so it
exits 0 after a start-up failure.

A worker reports through :class:`WorkerReport`: :meth:`~WorkerReport.ready` once it serves,
:meth:`~WorkerReport.failed` with one line when it cannot. Imports nothing from the package.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import trio

__all__ = ["WorkerReport", "WorkersOutcome", "run_workers"]

logger = logging.getLogger(__name__)

#: The signals the parent passes on to every worker.
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: While workers are stopping, SIGTERM goes to those still running this often.
_RESIGNAL_SECONDS = 1.0


class WorkerReport:
    """A worker's line to its parent (picklable: it travels to the spawned process)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def ready(self, urls: Sequence[str]) -> None:
        self._connection.send(("ready", list(urls)))

    def failed(self, line: str) -> None:
        self._connection.send(("failed", line))


@dataclass
class WorkersOutcome:
    """How the workers ended: ``exit_status`` for the parent, ``error`` (one line) if one
    failed, ``stopped_by`` the signal that asked them to stop, if any."""

    exit_status: int = 0
    error: str | None = None
    stopped_by: signal.Signals | None = None


@dataclass
class _Worker:
    process: BaseProcess
    messages: Connection
    ready: bool = False
    ended: trio.Event = field(default_factory=trio.Event)


@dataclass
class _Supervision:
    workers: list[_Worker]
    outcome: WorkersOutcome = field(default_factory=WorkersOutcome)
    stopping: bool = False
    stop: trio.Event = field(default_factory=trio.Event)

    def fail(self, line: str) -> None:
        """A worker failed: the first failure is the outcome's error; the others stop too."""
        if self.outcome.error is None:
            self.outcome.error = line
        self.outcome.exit_status = 1
        self.request_stop()

    def request_stop(self) -> None:
        self.stopping = True
        self.stop.set()


def run_workers(
    count: int,
    target: Callable[..., None],
    args: tuple[object, ...],
    *,
    stop_seconds: float,
    on_ready: Callable[[list[str]], None],
    on_signal: Callable[[signal.Signals], None],
) -> WorkersOutcome:
    """Run ``target(*args, report)`` in ``count`` spawned processes until a forwarded signal
    stops them or one fails. ``on_ready`` gets the URLs once every worker serves; ``on_signal``
    each signal received (before it is passed on). Workers that have not ended ``stop_seconds``
    after being asked to stop are killed."""
    context = multiprocessing.get_context("spawn")
    workers: list[_Worker] = []
    # Workers start with SIGINT ignored (the parent passes it on), like hypercorn's.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for index in range(count):
            receiving, sending = context.Pipe(duplex=False)
            process = context.Process(
                target=target,
                args=(*args, WorkerReport(sending)),
                name=f"epiloop-worker-{index + 1}",
            )
            process.start()
            sending.close()  # the worker holds its own copy; EOF here means it is gone
            workers.append(_Worker(process, receiving))
    except BaseException:
        for worker in workers:
            worker.process.kill()
            worker.process.join()
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    supervision = _Supervision(workers)
    try:
        trio.run(_supervise, supervision, stop_seconds, on_ready, on_signal)
    finally:
        for worker in workers:
            if worker.process.exitcode is None:
                worker.process.kill()
            worker.process.join()
            worker.messages.close()
    return supervision.outcome


async def _supervise(
    supervision: _Supervision,
    stop_seconds: float,
    on_ready: Callable[[list[str]], None],
    on_signal: Callable[[signal.Signals], None],
) -> None:
    workers = supervision.workers
    with trio.open_signal_receiver(*_FORWARDED) as signals:
        async with trio.open_nursery() as nursery:

            async def forward_signals() -> None:
                async for signum in signals:
                    received = signal.Signals(signum)
                    on_signal(received)
                    if received == signal.SIGHUP:
                        _signal_all(workers, signal.SIGHUP)
                    elif not supervision.stopping:
                        supervision.outcome.stopped_by = received
                        supervision.request_stop()

            async def stop_when_asked() -> None:
                await supervision.stop.wait()
                with trio.move_on_after(stop_seconds):
                    while not all(worker.ended.is_set() for worker in workers):
                        # Again each period: one that arrives while a worker is still starting
                        # up, before it listens for signals, can be lost.
                        _signal_all(workers, signal.SIGTERM)
                        with trio.move_on_after(_RESIGNAL_SECONDS):
                            for worker in workers:
                                await worker.ended.wait()
                for worker in workers:
                    if worker.process.exitcode is None:
                        logger.warning(
                            "workers.killed pid=%s after_seconds=%g",
                            worker.process.pid,
                            stop_seconds,
                        )
                        worker.process.kill()
                        worker.process.join()
                        supervision.fail(f"worker {worker.process.name} did not stop in time")
                nursery.cancel_scope.cancel(reason="every worker has ended")

            nursery.start_soon(forward_signals)
            nursery.start_soon(stop_when_asked)
            for worker in workers:
                nursery.start_soon(_watch, supervision, worker, on_ready)


async def _watch(
    supervision: _Supervision, worker: _Worker, on_ready: Callable[[list[str]], None]
) -> None:
    """Read the worker's reports until it is gone, then judge how it ended."""
    while True:
        await trio.lowlevel.wait_readable(worker.messages)
        try:
            kind, payload = worker.messages.recv()
        except EOFError:
            break
        if kind == "ready" and not worker.ready:
            worker.ready = True
            if all(other.ready for other in supervision.workers) and not supervision.stopping:
                on_ready(list(payload))
        elif kind == "failed":
            supervision.fail(str(payload))
    await trio.lowlevel.wait_readable(worker.process.sentinel)
    worker.process.join()
    worker.ended.set()
    status = worker.process.exitcode
    if supervision.stopping and status == -signal.SIGTERM:
        return  # asked to stop before it could handle the signal itself
    if status != 0:
        supervision.fail(f"worker {worker.process.name} exited with status {status}")
    elif not supervision.stopping:
        supervision.fail(f"worker {worker.process.name} stopped unexpectedly")


def _signal_all(workers: Sequence[_Worker], signum: signal.Signals) -> None:
    """Send ``signum`` to every worker still running."""
    for worker in workers:
        pid = worker.process.pid
        if worker.process.exitcode is None and pid is not None:
            with suppress(ProcessLookupError):  # it ended between the check and the signal
                os.kill(pid, signum)
