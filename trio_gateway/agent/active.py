"""The runs in progress: what ``status`` lists, what ``agent.abort`` cancels, what
``agent.wait`` waits for, whatever transport started them.

Each run registers an :class:`ActiveRun` for its lifetime. Its ``abort_scope`` is the cancel
scope the runtime runs it in, so aborting is ``abort_scope.cancel()``. Other parties can
subscribe to its events (a WebSocket client that attached with an idempotency key, say):
subscribers are synchronous and must not block — the run never waits for them.

Finished runs keep their result for a while (bounded in count and age) so ``agent.wait`` and an
idempotent retry that come late still get it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from .events import RunEvent, RunResult

__all__ = ["ActiveRun", "ActiveRuns"]

#: How many finished results are kept, and for how long.
RECENT_RESULTS = 1000
RECENT_SECONDS = 600.0

Subscriber = Callable[[RunEvent], None]
_V = TypeVar("_V")


@dataclass(eq=False)
class ActiveRun:
    run_id: str
    agent_id: str
    session_key: str
    source: str
    started_at: float = field(default_factory=time.time)
    abort_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    subscribers: list[Subscriber] = field(default_factory=list)
    #: The assistant text so far, in pieces (the run's own list: read it, never change it).
    parts: list[str] = field(default_factory=list)
    abort_reason: str = "agent.abort"
    #: The final result, once ``done`` is set.
    result: RunResult | None = None

    @property
    def text_chars(self) -> int:
        return sum(len(part) for part in self.parts)

    def publish(self, event: RunEvent) -> None:
        for subscriber in tuple(self.subscribers):
            subscriber(event)

    def abort(self, reason: str = "agent.abort") -> None:
        self.abort_reason = reason
        self.abort_scope.cancel(reason=f"aborted: {reason}")


class ActiveRuns:
    def __init__(self) -> None:
        self._runs: dict[str, ActiveRun] = {}
        self._recent: OrderedDict[str, tuple[float, RunResult]] = OrderedDict()
        self._idempotent: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def register(self, run: ActiveRun) -> None:
        self._runs[run.run_id] = run

    def finish(self, run: ActiveRun, result: RunResult) -> None:
        run.result = result
        self._runs.pop(run.run_id, None)
        now = time.monotonic()
        self._recent[run.run_id] = (now, result)
        self._trim(self._recent, now)
        run.done.set()

    def get(self, run_id: str) -> ActiveRun | None:
        return self._runs.get(run_id)

    def result(self, run_id: str) -> RunResult | None:
        """The result of a recently finished run."""
        self._trim(self._recent, time.monotonic())
        entry = self._recent.get(run_id)
        return entry[1] if entry is not None else None

    def running(self) -> list[ActiveRun]:
        return list(self._runs.values())

    def abort(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        if run is None:
            return False
        run.abort()
        return True

    def abort_all(self, reason: str) -> list[str]:
        runs = list(self._runs.values())
        for run in runs:
            run.abort(reason)
        return [run.run_id for run in runs]

    def abort_session(self, session_key: str) -> list[str]:
        aborted = [run for run in self._runs.values() if run.session_key == session_key]
        for run in aborted:
            run.abort()
        return [run.run_id for run in aborted]

    def remember_idempotency_key(self, key: str, run_id: str) -> None:
        now = time.monotonic()
        self._idempotent[key] = (now, run_id)
        self._trim(self._idempotent, now)

    def run_for_idempotency_key(self, key: str) -> str | None:
        self._trim(self._idempotent, time.monotonic())
        entry = self._idempotent.get(key)
        return entry[1] if entry is not None else None

    @staticmethod
    def _trim(entries: OrderedDict[str, tuple[float, _V]], now: float) -> None:
        while entries and (
            len(entries) > RECENT_RESULTS or next(iter(entries.values()))[0] < now - RECENT_SECONDS
        ):
            entries.popitem(last=False)
