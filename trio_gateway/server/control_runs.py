"""The control plane's run methods (protocol: docs/control-protocol.md): ``agent`` starts a run
(or follows the one an idempotency key names) and streams its events to the connection as
``agent`` events; ``agent.wait`` and ``agent.abort`` act on runs by id. Also how a run's events
and result look in the protocol (:func:`result_payload`, which the CLI's local runs share).

The connection (``control.py``) owns the socket and the dispatch; this module only queues
frames on it, through :class:`Outbox`, and never waits for the client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import msgspec
import trio

from ..agent import AgentRuntime, RunEvent, RunFailed, RunFinished, RunRequest, RunStarted
from ..agent.active import ActiveRun
from ..agent.events import RunResult, ToolFinished, ToolStarted
from ..agent.kept import decode_result
from ..errors import NotFoundError
from ..messages import Message
from ..providers.base import ReasoningDelta, TextDelta, ToolCallDelta
from ..wire import control as protocol
from ..wire.control import (
    AbortParams,
    AbortResult,
    AgentAccepted,
    AgentEvent,
    AgentParams,
    DeltaData,
    ErrorInfo,
    LifecycleEndData,
    LifecycleErrorData,
    LifecycleStartData,
    RunIdParams,
    ToolCallInfo,
    ToolResultData,
    ToolStartData,
    Usage,
    encode_response,
)
from .control_methods import Handler, InvalidParams, abort_session_everywhere

__all__ = ["Outbox", "agent", "result_payload", "run_handlers"]

logger = logging.getLogger(__name__)


class Outbox(Protocol):
    """Where a run method's frames go: a connection's outgoing queue (it never blocks)."""

    def queue(self, frame: str) -> None: ...

    def queue_event(self, event: str, payload: object) -> None: ...


def result_payload(result: RunResult, run_id: str) -> protocol.RunResult:
    """A run's result as the control protocol reports it (``agent``, ``agent.wait``)."""
    error = result.error
    return protocol.RunResult(
        run_id=run_id,
        status=result.status,
        text=result.text,
        stop_reason=result.finish_reason,
        usage=Usage(result.usage.prompt_tokens, result.usage.completion_tokens),
        text_dropped=result.text_dropped,
        error=None if error is None else ErrorInfo(error.code, error.message),
        tool_calls=[ToolCallInfo(c.id, c.name, c.arguments) for c in result.tool_calls],
    )


def _event_data(event: RunEvent) -> tuple[str, msgspec.Struct] | None:
    """An agent event as the protocol's ``(stream, data)``."""
    if type(event) is TextDelta:
        return "assistant", DeltaData(event.text)
    if type(event) is ReasoningDelta:
        return "reasoning", DeltaData(event.text)
    if isinstance(event, ToolStarted):
        return "tool", ToolStartData(event.call_id, event.name, event.arguments)
    if isinstance(event, ToolFinished):
        return "tool", ToolResultData(event.call_id, event.name, event.ok, event.result)
    if isinstance(event, RunStarted):
        return "lifecycle", LifecycleStartData(event.agent_id, event.session_key, event.model)
    if isinstance(event, RunFinished):
        usage = Usage(event.usage.prompt_tokens, event.usage.completion_tokens)
        return "lifecycle", LifecycleEndData(event.finish_reason, usage)
    if isinstance(event, RunFailed):
        return "lifecycle", LifecycleErrorData(ErrorInfo(event.error.code, event.error.message))
    if isinstance(event, ToolCallDelta):
        return None  # client tool calls are an OpenAI-API notion; the result lists them
    return None


@dataclass
class _RunFeed:
    """Turns one run's events into ``agent`` events on a connection."""

    outbox: Outbox
    run_id: str
    seq: int = 0

    def __call__(self, event: RunEvent) -> None:
        mapped = _event_data(event)
        if mapped is None:
            return
        stream, data = mapped
        self.seq += 1
        self.outbox.queue_event(
            "agent", AgentEvent(run_id=self.run_id, seq=self.seq, stream=stream, data=data)
        )


async def agent(
    runtime: AgentRuntime, outbox: Outbox, request_id: str, params: AgentParams
) -> None:
    """``agent``: accept the run, stream its events, then answer with its result (at once, for
    a detached run, which then lives in the runtime's background nursery)."""
    if params.idempotency_key is not None:
        run_id = runtime.active_runs.run_for_idempotency_key(params.idempotency_key)
        if run_id is None and runtime.cluster is not None:
            run_id = await runtime.cluster.find_idempotent(params.idempotency_key)
        if run_id is not None:
            await _attach(runtime, outbox, request_id, run_id)
            return
    prepared = await runtime.prepare(
        RunRequest(
            messages=(Message("user", params.message),),
            agent_id=None if params.agent_id is None else params.agent_id.strip(),
            session_key=params.session_key or None,
            default_session="main",
            idempotency_key=params.idempotency_key,
            source="ws",
        )
    )
    admitted = await runtime.admit(prepared)
    feed = _RunFeed(outbox, prepared.run_id)
    outbox.queue(encode_response(request_id, AgentAccepted("accepted", prepared.run_id)))

    async def run() -> None:
        with admitted:
            result = await admitted.run(_as_async(feed))
        outbox.queue(encode_response(request_id, result_payload(result, prepared.run_id)))

    if params.detached:
        runtime.start_background(partial(_detached, run, prepared.run_id))
    else:
        await run()


async def _attach(runtime: AgentRuntime, outbox: Outbox, request_id: str, run_id: str) -> None:
    """An idempotent retry: follow the run that the first request started."""
    outbox.queue(encode_response(request_id, AgentAccepted("accepted", run_id)))
    active = runtime.active_runs.get(run_id)
    if active is not None:
        feed = _RunFeed(outbox, run_id)
        active.subscribers.append(feed)
        try:
            await active.done.wait()
        finally:
            active.subscribers.remove(feed)
        result = active.result
    else:
        result = await _finished_result(runtime, run_id)
    if result is None:
        raise NotFoundError(f"The run {run_id!r} is no longer known.")
    outbox.queue(encode_response(request_id, result_payload(result, run_id)))


async def agent_wait(runtime: AgentRuntime, params: RunIdParams) -> protocol.RunResult:
    run_id = params.run_id
    active: ActiveRun | None = runtime.active_runs.get(run_id)
    if active is not None:
        await active.done.wait()
        result = active.result
    else:
        result = await _finished_result(runtime, run_id)
    if result is None:
        raise NotFoundError(f"No run {run_id!r} is running or finished recently.")
    return result_payload(result, run_id)


async def _finished_result(runtime: AgentRuntime, run_id: str) -> RunResult | None:
    """A run that is not running here: its kept result here, else (PostgreSQL mode) the one
    another instance kept, once that run ends."""
    result = runtime.active_runs.result(run_id)
    cluster = runtime.cluster
    if result is None and cluster is not None:
        kept = await cluster.wait_result(run_id)
        result = None if kept is None else decode_result(kept)
    return result


async def agent_abort(runtime: AgentRuntime, abort: AbortParams) -> AbortResult:
    await trio.lowlevel.checkpoint()
    runs = runtime.active_runs
    cluster = runtime.cluster
    if abort.run_id is not None:
        aborted = [abort.run_id] if runs.abort(abort.run_id) else []
        if not aborted and cluster is not None:
            aborted = await cluster.request_abort(abort.run_id)  # on another instance
        if not aborted:
            raise NotFoundError(f"No run {abort.run_id!r} is in progress.")
    elif abort.session_key is not None:
        aborted = await abort_session_everywhere(runtime, abort.session_key)
    else:
        raise InvalidParams("agent.abort needs 'runId' or 'sessionKey'.")
    return AbortResult(aborted)


def run_handlers(runtime: AgentRuntime) -> dict[str, Handler]:
    """``agent.wait`` and ``agent.abort``, bound to ``runtime`` (``agent`` needs the
    connection: see :func:`agent`)."""
    return {
        "agent.wait": partial(agent_wait, runtime),
        "agent.abort": partial(agent_abort, runtime),
    }


async def _detached(run: Callable[[], Awaitable[None]], run_id: str) -> None:
    """A detached run in the gateway's background nursery: a failure there must not take the
    nursery (and every other detached run) down with it."""
    try:
        await run()
    except Exception:
        logger.exception("control.detached_run.crashed run_id=%s", run_id)


def _as_async(feed: Callable[[RunEvent], None]) -> Callable[[RunEvent], Awaitable[None]]:
    async def emit(event: RunEvent) -> None:
        feed(event)

    return emit
