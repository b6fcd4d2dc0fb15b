"""An admitted run: a prepared run holding its session's lane and a run slot, and the only way
to start it. While it runs it is listed in the runtime's active runs and counted in the run
metrics; the loop itself is :mod:`~trio_gateway.agent.loop`. Must not import the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .. import metrics
from ..config import Config
from ..errors import RunAbortedError
from ..logs import run_id_var
from ..providers.base import TokenUsage
from .active import ActiveRun, ActiveRuns, Retention
from .admission import Ticket
from .events import RunEvent, RunResult
from .loop import HeldLane, RunLoop
from .prepared import EmitEvent, PreparedRun

__all__ = ["AdmittedRun", "finished_runs_retention"]


class AdmittedRun:
    """A prepared run that holds its session's lane and a run slot: the only way to start it.

    ``with admitted: result = await admitted.run(emit)``. Leaving the ``with`` (or
    :meth:`release`, idempotent, from any task) hands the lane and the slot to the next run."""

    __slots__ = (
        "_active_runs",
        "_draining",
        "_lane",
        "_loop",
        "_on_result",
        "_retention",
        "_started",
        "_ticket",
        "prepared",
    )

    def __init__(
        self,
        prepared: PreparedRun,
        ticket: Ticket,
        *,
        loop: RunLoop,
        active_runs: ActiveRuns,
        retention: Callable[[], Retention],
        draining: Callable[[], bool],
        lane: HeldLane | None = None,
        on_result: Callable[[RunResult], None] | None = None,
    ) -> None:
        self.prepared = prepared
        self._ticket = ticket
        #: What runs it, where it is listed while it runs, and how long it is kept after.
        self._loop = loop
        self._active_runs = active_runs
        self._retention = retention
        #: Whether the gateway is shutting down (a cancellation then counts as a shutdown).
        self._draining = draining
        self._started = False
        #: The shared session lane the run holds (PostgreSQL mode), else ``None``.
        self._lane = lane
        #: Told the run's result as kept (the cluster keeps it for other instances).
        self._on_result = on_result

    @property
    def run_id(self) -> str:
        return self.prepared.run_id

    async def run(self, emit: EmitEvent) -> RunResult:
        """Run the agent once, emitting events (see :mod:`~trio_gateway.agent.loop`)."""
        if self._started:
            raise RuntimeError("an admitted run runs once")
        self._started = True
        return await self._run(self.prepared, emit)

    def release(self) -> None:
        self._ticket.release()

    def __enter__(self) -> AdmittedRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._ticket.release()

    async def _run(self, prepared: PreparedRun, emit: EmitEvent) -> RunResult:
        """Run the agent, emitting events; see :mod:`~trio_gateway.agent.loop` for the outcomes.

        While it runs, the run is listed in the runtime's active runs (its ``source`` says which
        transport started it), where ``agent.abort`` can stop it and others can follow its
        events.
        """
        source = prepared.source
        run_id_token = run_id_var.set(prepared.run_id)  # every log line of the run carries it
        target = prepared.target
        active = ActiveRun(prepared.run_id, target.agent.id, target.session_key, source)
        self._active_runs.register(active)

        async def publishing_emit(event: RunEvent) -> None:
            await emit(event)
            if active.subscribers:
                active.publish(event)

        result: RunResult | None = None
        metrics.ACTIVE_RUNS.labels(source).inc()
        started = time.monotonic()
        try:
            result = await self._loop.run(prepared, publishing_emit, active, self._lane)
            return result
        except BaseException as exc:
            metrics.count_cancelled_run(exc, draining=self._draining())
            raise
        finally:
            if result is None:  # made only now: a run's frame stays alive as long as it does
                result = RunResult(
                    "aborted", "", None, TokenUsage(), RunAbortedError("The run was cancelled.")
                )
            metrics.ACTIVE_RUNS.labels(source).dec()
            agent_id = target.agent.id
            metrics.RUN_DURATION.labels(agent_id, result.status).observe(time.monotonic() - started)
            if result.timings.first_text is not None:
                metrics.TTFT.labels(agent_id).observe(result.timings.first_text)
            metrics.TOKENS.labels(agent_id, "in").inc(result.usage.prompt_tokens)
            metrics.TOKENS.labels(agent_id, "out").inc(result.usage.completion_tokens)
            self._active_runs.finish(active, result, self._retention())
            if self._on_result is not None:
                kept = self._active_runs.result(prepared.run_id)
                self._on_result(kept if kept is not None else result)
            run_id_var.reset(run_id_token)
            if prepared.lease is not None:
                prepared.lease.release()


def finished_runs_retention(config: Config) -> Retention:
    kept = config.gateway.finished_runs
    return Retention(kept.max_count, kept.max_bytes, kept.keep_seconds)
