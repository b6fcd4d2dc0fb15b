"""The runs in progress: what ``status`` lists, what ``agent.abort`` cancels, what
``agent.wait`` waits for, whatever transport started them.

Each run registers an :class:`ActiveRun` for its lifetime. Its ``abort_scope`` is the cancel
scope the runtime runs it in, so aborting is ``abort_scope.cancel()``. Other parties can
subscribe to its events (a WebSocket client that attached with an idempotency key, say):
subscribers are synchronous and must not block — the run never waits for them.

Finished runs keep their result for a while so ``agent.wait`` and an idempotent retry that come
late still get it: only what they answer with (status, text, stop reason, usage, the error's code
and message, client tool calls), bounded in count, in bytes and in age (:class:`Retention`, from
``gateway.finishedRuns``). A run started over HTTP keeps no text: its client has it already. A
result whose text alone is over the byte budget keeps no text either; older results make room
for newer ones.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import trio

from .events import RunEvent, RunResult

__all__ = ["ActiveRun", "ActiveRuns", "FinishedStatistics", "Retention"]


@dataclass(frozen=True, slots=True)
class Retention:
    """How many finished results are kept, how many bytes they may hold together (their text,
    mostly), and for how long."""

    max_results: int = 1000
    max_bytes: int = 16 * 1024 * 1024
    keep_seconds: float = 600.0


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


@dataclass(frozen=True, slots=True)
class FinishedStatistics:
    """The finished results kept: how many, and the bytes they hold."""

    results: int
    held_bytes: int


class ActiveRuns:
    def __init__(self, retention: Retention | None = None) -> None:
        self._runs: dict[str, ActiveRun] = {}
        self.retention = retention or Retention()
        #: Finished results, oldest first: run id → (finished at, result, bytes held).
        self._recent: OrderedDict[str, tuple[float, RunResult, int]] = OrderedDict()
        self._recent_bytes = 0
        self._idempotent: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def register(self, run: ActiveRun) -> None:
        self._runs[run.run_id] = run

    def finish(self, run: ActiveRun, result: RunResult, retention: Retention | None = None) -> None:
        """Mark ``run`` finished: its waiters get ``result`` in full (they hold the run); the
        finished results keep what ``agent.wait`` needs, within ``retention`` (which also
        becomes the limit from now on)."""
        if retention is not None:
            self.retention = retention
        run.result = result
        self._runs.pop(run.run_id, None)
        now = time.monotonic()
        kept = _for_waiters(result, keep_text=run.source != "http")
        size = _held_bytes(kept)
        if size > self.retention.max_bytes:
            kept = replace(kept, text="", tool_calls=(), text_dropped=True)
            size = _held_bytes(kept)
        previous = self._recent.pop(run.run_id, None)
        if previous is not None:
            self._recent_bytes -= previous[2]
        self._recent[run.run_id] = (now, kept, size)
        self._recent_bytes += size
        self._trim_results(now)
        run.done.set()

    def get(self, run_id: str) -> ActiveRun | None:
        return self._runs.get(run_id)

    def result(self, run_id: str) -> RunResult | None:
        """The result of a recently finished run, as kept (see the module docstring)."""
        self._trim_results(time.monotonic())
        entry = self._recent.get(run_id)
        return entry[1] if entry is not None else None

    def statistics(self) -> FinishedStatistics:
        """How many finished results are kept, and the bytes they hold."""
        return FinishedStatistics(len(self._recent), self._recent_bytes)

    def _trim_results(self, now: float) -> None:
        limits = self.retention
        recent = self._recent
        while recent:
            finished_at, _, size = next(iter(recent.values()))
            if (
                len(recent) <= limits.max_results
                and self._recent_bytes <= limits.max_bytes
                and finished_at >= now - limits.keep_seconds
            ):
                break
            recent.popitem(last=False)
            self._recent_bytes -= size

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

    def _trim(self, entries: OrderedDict[str, tuple[float, _V]], now: float) -> None:
        limits = self.retention
        while entries and (
            len(entries) > limits.max_results
            or next(iter(entries.values()))[0] < now - limits.keep_seconds
        ):
            entries.popitem(last=False)


def _for_waiters(result: RunResult, *, keep_text: bool) -> RunResult:
    """``result`` with only what ``agent.wait`` answers: no reasoning, no timings, an error
    without its traceback and causes (which hold the run's frames, and its text with them)."""
    error = result.error
    if error is not None:
        bare = type(error).__new__(type(error), *error.args)
        bare.__dict__.update(error.__dict__)
        error = bare
    if keep_text:
        return RunResult(
            result.status,
            result.text,
            result.finish_reason,
            result.usage,
            error,
            tool_calls=result.tool_calls,
        )
    return RunResult(
        result.status, "", result.finish_reason, result.usage, error, text_dropped=True
    )


def _held_bytes(result: RunResult) -> int:
    """What a kept result holds beyond its fixed-size parts."""
    size = sys.getsizeof(result.text)
    for call in result.tool_calls:
        size += sys.getsizeof(call.id) + sys.getsizeof(call.name) + sys.getsizeof(call.arguments)
    if result.error is not None:
        size += sys.getsizeof(result.error.message)
    return size
