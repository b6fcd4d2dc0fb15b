"""The run loop: one agent run, from its first event to its recorded turn.

:meth:`RunLoop.run` reconciles the request with the stored session, calls the model (with
retries and fallbacks before the first token), runs the agent's tools concurrently and calls the
model again, until a final answer, a client tool call or ``maxToolIterations``. Everything it
does is reported through the ``emit`` callback as :mod:`events <trio_gateway.agent.events>`,
awaited, so a slow consumer slows the run instead of growing a buffer. The whole run is bounded
by the agent's ``timeoutSeconds``, and what the model may send by ``maxOutputChars`` (per run),
``tools.maxCallsPerTurn`` and ``tools.maxArgumentChars``: past one of them the stream is stopped
at once and the run fails with a 502 ``upstream_error`` (``output_too_large``,
``too_many_tool_calls``, ``tool_arguments_too_large``), so no buffer of a run grows without bound.

A run that fails emits ``RunFailed`` and returns a failed :class:`RunResult`; it does not raise.
A cancelled run (its client went away) records what it had so far as ``aborted`` and lets
``trio.Cancelled`` propagate. A stable session gets every turn recorded whatever the outcome, in
one atomic write, shielded from cancellation and bounded in time. A completed run whose turn
cannot be stored fails (``session_store_error``) instead of finishing: its client must not
believe the reply is part of the session.

Admission, the active-run listing and the run metrics are the runtime's
(:mod:`~trio_gateway.agent.runtime`); this module must not import it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from .. import metrics
from ..config import Config
from ..errors import (
    GatewayError,
    LeaseLostError,
    ProviderError,
    RunAbortedError,
    RunError,
    RunTimeoutError,
    SessionStoreError,
    ToolError,
)
from ..messages import Message, ToolCall
from ..providers.base import (
    Completion,
    FinishReason,
    ModelEvent,
    ModelRequest,
    ReasoningDelta,
    TextDelta,
    TokenUsage,
    ToolCallDelta,
)
from ..sessions import Session, SessionStore, TranscriptEntry, Turn
from ..sessions.reconcile import reconcile
from ..sessions.store import Fence, RunStatus
from ..tools import ToolContext, call_tool, workspace_for
from .active import ActiveRun
from .events import (
    RunFailed,
    RunFinished,
    RunResult,
    RunStarted,
    RunTimings,
    ToolFinished,
    ToolStarted,
)
from .failover import call_with_failover
from .images import check_session_images, without_images
from .prepared import EmitEvent, PreparedRun, session_mismatch
from .prompt import close_tool_calls
from .renumbering import ToolCallRenumbering

__all__ = ["RECORD_BOUND_SECONDS", "HeldLane", "RunLoop", "history_messages"]

logger = logging.getLogger(__name__)

#: How long recording a turn may take once the run is over (it runs shielded from cancellation).
RECORD_BOUND_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class HeldLane:
    """The shared session lane a run holds (PostgreSQL mode): the fence its turn is written
    under, and the session as read once the lane was granted (so the run reads it once)."""

    fence: Fence
    session: Session | None


@dataclass
class _RunState:
    """What a run has produced so far (kept so a failed or aborted run can be recorded)."""

    parts: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    #: Index into ``parts`` where the current model call's text starts.
    call_start: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)
    upstream_seconds: float = 0.0
    tool_seconds: float = 0.0
    started_at: float = field(default_factory=time.monotonic)
    first_text_at: float | None = None
    new_entries: list[TranscriptEntry] = field(default_factory=list)
    produced: list[TranscriptEntry] = field(default_factory=list)
    keep: int | None = None
    #: The transcript's length once the turn was stored (``None``: not stored).
    position: int | None = None
    #: Agent tool calls whose results are not in ``produced`` yet.
    pending_calls: tuple[ToolCall, ...] = ()
    #: Characters of model output received so far in the run (see :class:`OutputLimits`).
    output_chars: int = 0
    #: The shared lane the run holds (PostgreSQL mode), else ``None``.
    lane: HeldLane | None = None

    def text(self) -> str:
        return "".join(self.parts)

    def call_text(self) -> str:
        return "".join(self.parts[self.call_start :])

    def timings(self, started: float) -> RunTimings:
        first = None if self.first_text_at is None else self.first_text_at - started
        return RunTimings(
            upstream=self.upstream_seconds,
            tools=self.tool_seconds,
            total=time.monotonic() - started,
            first_text=first,
        )


class RunLoop:
    """Runs prepared runs against a session store, with the tools settings of ``config``."""

    def __init__(self, sessions: SessionStore, config: Config, state_dir: Path) -> None:
        self.sessions = sessions
        self.config = config
        self.state_dir = state_dir

    async def run(
        self,
        prepared: PreparedRun,
        emit: EmitEvent,
        active: ActiveRun,
        lane: HeldLane | None = None,
    ) -> RunResult:
        """Run ``prepared``; ``lane``: the shared lane it holds, if any (its fence goes into the
        turn, and its session is the one the run continues)."""
        target = prepared.target
        state = _RunState()
        state.lane = lane
        active.parts = state.parts
        logger.debug(
            "run.started run_id=%s agent=%s model=%s",
            prepared.run_id,
            target.agent.id,
            prepared.model_ref,
        )
        started = time.monotonic()
        with active.abort_scope:
            finish: FinishReason | None = None
            error: GatewayError | None = None
            try:
                try:
                    with trio.fail_after(prepared.timeout_seconds):
                        await emit(
                            RunStarted(
                                prepared.run_id,
                                target.agent.id,
                                target.session_key,
                                prepared.model_ref,
                            )
                        )
                        finish = await self._loop(prepared, emit, state)
                except trio.TooSlowError as exc:
                    raise RunTimeoutError(
                        f"The agent run did not finish within {prepared.timeout_seconds:g} seconds "
                        "(timeoutSeconds)."
                    ) from exc
            except GatewayError as exc:
                error = exc
            except Exception as exc:
                logger.exception("run.crashed run_id=%s", prepared.run_id)
                error = RunError("The agent run failed unexpectedly.")
                error.__cause__ = exc
            except BaseException:
                await self._record(prepared, state, "aborted")
                logger.info(
                    "run.cancelled run_id=%s agent=%s duration_ms=%.1f",
                    prepared.run_id,
                    target.agent.id,
                    (time.monotonic() - started) * 1000,
                )
                raise
            duration_ms = (time.monotonic() - started) * 1000
            if error is not None:
                await self._record(prepared, state, "failed")
                return await self._failed(prepared, state, emit, error, started, duration_ms)
            assert finish is not None
            lost = await self._record(prepared, state, "completed")
            if lost is not None:  # the answer is complete but its turn could not be stored
                return await self._failed(prepared, state, emit, lost, started, duration_ms)
            logger.info(
                "run.complete run_id=%s agent=%s finish_reason=%s tokens=%d duration_ms=%.1f",
                prepared.run_id,
                target.agent.id,
                finish,
                state.usage.total_tokens,
                duration_ms,
            )
            timings = state.timings(started)
            await emit(RunFinished(finish, state.usage, timings))
            last = state.produced[-1] if state.produced else None
            client_calls = last.tool_calls if last is not None and finish == "tool_calls" else ()
            return RunResult(
                "completed",
                state.text(),
                finish,
                state.usage,
                tool_calls=client_calls,
                reasoning="".join(state.reasoning),
                timings=timings,
                session_position=state.position,
            )
        # Only an abort gets here: the scope caught its own cancellation (the partial turn was
        # recorded as aborted on the way out).
        error = RunAbortedError(f"The run was aborted ({active.abort_reason}).")
        logger.info("run.aborted run_id=%s agent=%s", prepared.run_id, target.agent.id)
        await emit(RunFailed(error, state.usage))
        timings = state.timings(started)
        return RunResult(
            "aborted",
            state.text(),
            None,
            state.usage,
            error,
            timings=timings,
            session_position=state.position,
        )

    async def _failed(
        self,
        prepared: PreparedRun,
        state: _RunState,
        emit: EmitEvent,
        error: GatewayError,
        started: float,
        duration_ms: float,
    ) -> RunResult:
        """End a run that failed (its turn already recorded, or found unrecordable)."""
        logger.info(
            "run.failed run_id=%s agent=%s error=%s duration_ms=%.1f",
            prepared.run_id,
            prepared.target.agent.id,
            error.code,
            duration_ms,
        )
        await emit(RunFailed(error, state.usage))
        timings = state.timings(started)
        return RunResult(
            "failed",
            state.text(),
            None,
            state.usage,
            error,
            timings=timings,
            session_position=state.position,
        )

    async def _loop(self, prepared: PreparedRun, emit: EmitEvent, state: _RunState) -> FinishReason:
        history, new = await self._conversation(prepared, state)
        if not prepared.chain[0].images:
            history = without_images(history)  # stored images, a text-only model now
        messages = close_tool_calls([*prepared.instructions, *history, *new])
        client_names = {spec.name for spec in prepared.client_tools}
        renumbering = ToolCallRenumbering(client_names)
        request = prepared.request
        for iteration in range(prepared.max_tool_iterations):
            request = replace(request, messages=tuple(messages))
            state.call_start = len(state.parts)
            call_started = time.monotonic()
            try:
                completion = await self._model_call(prepared, request, emit, state, renumbering)
            finally:
                state.upstream_seconds += time.monotonic() - call_started
            state.usage += completion.usage
            calls = completion.tool_calls
            if not calls:
                state.produced.append(TranscriptEntry("assistant", state.text()))
                return completion.finish_reason
            client_calls = tuple(call for call in calls if call.name in client_names)
            if client_calls:
                # The client runs these; agent tools called in the same turn are not run (the
                # model sees only the client's results and can call them again).
                reply = Message("assistant", state.text(), tool_calls=client_calls)
                state.produced.append(TranscriptEntry.of(reply))
                return "tool_calls"
            if iteration == prepared.max_tool_iterations - 1:
                break  # no round left to show the model the results: do not run the tools
            assistant = Message("assistant", state.call_text(), tool_calls=calls)
            state.produced.append(TranscriptEntry.of(assistant, internal=True))
            state.pending_calls = calls
            tools_started = time.monotonic()
            try:
                results = await self._run_tools(prepared, calls, emit)
            finally:
                state.tool_seconds += time.monotonic() - tools_started
            state.pending_calls = ()
            state.produced.extend(TranscriptEntry.of(r, internal=True) for r in results)
            messages += [assistant, *results]
            # A forced tool_choice applies to the first call only, or the loop could not end.
            request = replace(request, tool_choice=None)
        raise RunError(
            f"The agent called tools {prepared.max_tool_iterations} times without reaching an "
            "answer (maxToolIterations).",
            code="max_tool_iterations",
        )

    async def _conversation(
        self, prepared: PreparedRun, state: _RunState
    ) -> tuple[list[Message], list[Message]]:
        """The stored history to continue and the request's new messages."""
        conversation = list(prepared.conversation)
        session = None
        if state.lane is not None:
            session = state.lane.session  # read under the lane already
        elif not prepared.target.stateless and not prepared.target.fresh:
            session = await self.sessions.get(prepared.target.session_key)
        if session is None:
            state.new_entries = [TranscriptEntry.of(m) for m in conversation]
            return [], conversation
        if session.agent_id.lower() != prepared.target.agent.id.lower():
            # Checked in prepare too; checked again here, under the session's lane, because
            # another agent's run may have created the session in between.
            raise session_mismatch()
        check_session_images(session.transcript, conversation, self.config)
        if prepared.continue_at is not None:
            # Continuing a stored response: right after its turn, whatever came later.
            at = prepared.continue_at
            state.keep = at if at < len(session.transcript) else None
            state.new_entries = [TranscriptEntry.of(m) for m in conversation]
            return history_messages(session.transcript[:at]), conversation
        reconciled = reconcile(session.transcript, conversation)
        kept = (
            session.transcript if reconciled.keep is None else session.transcript[: reconciled.keep]
        )
        state.keep = reconciled.keep
        state.new_entries = [TranscriptEntry.of(m) for m in reconciled.new]
        return history_messages(kept), list(reconciled.new)

    async def _model_call(
        self,
        prepared: PreparedRun,
        request: ModelRequest,
        emit: EmitEvent,
        state: _RunState,
        renumbering: ToolCallRenumbering,
    ) -> Completion:
        parts, reasoning = state.parts, state.reasoning
        renumbering.start_answer()
        limits = prepared.limits
        #: Argument characters of each tool call of this answer, by the provider's index.
        argument_chars: dict[int, int] = {}
        call_names: dict[int, str] = {}

        def count(chars: int) -> None:
            state.output_chars += chars
            if state.output_chars > limits.max_output_chars:
                raise limits.output_too_large()

        async def route(event: ModelEvent) -> None:
            if type(event) is TextDelta:
                count(len(event.text))
                if not parts:
                    state.first_text_at = time.monotonic()
                parts.append(event.text)
                await emit(event)
            elif type(event) is ReasoningDelta:
                count(len(event.text))
                reasoning.append(event.text)
                await emit(event)
            elif type(event) is ToolCallDelta:
                index = event.index
                count(len(event.arguments) + len(event.name or "") + len(event.id or ""))
                chars = argument_chars.get(index)
                if chars is None:
                    if len(argument_chars) >= limits.max_calls_per_turn:
                        raise limits.too_many_tool_calls()
                    chars = 0
                chars += len(event.arguments)
                argument_chars[index] = chars
                if event.name:
                    call_names.setdefault(index, event.name)
                if chars > limits.max_argument_chars:
                    raise limits.arguments_too_large(call_names.get(index))
                delta = renumbering.feed(event)
                if delta is not None:
                    await emit(delta)

        try:
            completion, _ = await call_with_failover(prepared.chain, request, route)
        except (GatewayError, trio.BrokenResourceError, trio.ClosedResourceError):
            raise  # ours, or the consumer went away: not a provider bug
        except Exception as exc:
            # A provider bug, not an upstream answer: keep the details in the log only.
            logger.exception("provider.crashed run_id=%s", prepared.run_id)
            raise ProviderError("The model provider failed unexpectedly.") from exc
        return completion

    async def _run_tools(
        self, prepared: PreparedRun, calls: Sequence[ToolCall], emit: EmitEvent
    ) -> list[Message]:
        """Run the agent tool calls of one model turn concurrently; results in call order."""
        agent = prepared.target.agent
        context = ToolContext(
            agent_id=agent.id,
            run_id=prepared.run_id,
            workspace=workspace_for(agent, self.config.agents.defaults, self.state_dir),
            config=self.config.tools,
        )
        results: list[Message | None] = [None] * len(calls)

        async def run_one(index: int, call: ToolCall) -> None:
            await emit(ToolStarted(call.id, call.name, call.arguments))
            ok, output = await self._call_tool(prepared, call, context)
            results[index] = Message("tool", output, name=call.name, tool_call_id=call.id)
            await emit(ToolFinished(call.id, call.name, ok, output))

        async with trio.open_nursery() as nursery:
            for index, call in enumerate(calls):
                nursery.start_soon(run_one, index, call)
        return [result for result in results if result is not None]

    async def _call_tool(
        self, prepared: PreparedRun, call: ToolCall, context: ToolContext
    ) -> tuple[bool, str]:
        """One tool call; failures become an error text for the model, not a crash."""
        tool = prepared.agent_tools.get(call.name)
        try:
            if tool is None:
                available = ", ".join(sorted(prepared.agent_tools)) or "none"
                raise ToolError(f"Unknown tool {call.name!r}. Available tools: {available}.")
            output = await call_tool(tool, call.arguments, context)
        except ToolError as exc:
            metrics.TOOL_CALLS.labels(call.name if tool else "unknown", "error").inc()
            return False, f"Error: {exc.message}"
        except Exception:
            logger.exception("tool.crashed run_id=%s tool=%s", prepared.run_id, call.name)
            metrics.TOOL_CALLS.labels(call.name, "error").inc()
            return False, "Error: the tool failed unexpectedly."
        metrics.TOOL_CALLS.labels(call.name, "ok").inc()
        return True, output

    async def _record(
        self, prepared: PreparedRun, state: _RunState, status: RunStatus
    ) -> SessionStoreError | None:
        """Store the turn; shielded and bounded, so a cancelled run is recorded too.

        Returns the error to report when the turn could not be stored (counted in
        ``epiloop_session_record_failures``), ``None`` when it was stored or needs no storing.
        """
        if not prepared.record:
            return None
        entries = [*state.new_entries, *state.produced]
        if status != "completed":
            # Calls that never got results get one, so the transcript stays a valid input.
            entries.extend(
                TranscriptEntry(
                    "tool",
                    f"Error: the run was {status} before the tool finished.",
                    tool_call_id=call.id,
                    name=call.name,
                    internal=True,
                )
                for call in state.pending_calls
            )
            entries.append(TranscriptEntry("assistant", state.text(), status))
        turn = Turn(
            run_id=prepared.run_id,
            agent_id=prepared.target.agent.id,
            model=prepared.model_ref,
            entries=entries,
            status=status,
            prompt_tokens=state.usage.prompt_tokens,
            completion_tokens=state.usage.completion_tokens,
            at=time.time(),
            keep=state.keep,
            fence=None if state.lane is None else state.lane.fence,
        )
        reason = "timeout"
        with trio.move_on_after(RECORD_BOUND_SECONDS, shield=True):
            try:
                info = await self.sessions.record_turn(prepared.target.session_key, turn)
                state.position = info.message_count
            except LeaseLostError as exc:
                # Fenced off: another run holds the session now. The client learns why.
                logger.warning(
                    "session.record.refused run_id=%s reason=lease_lost", prepared.run_id
                )
                metrics.SESSION_RECORD_FAILURES.labels("lease_lost").inc()
                return exc
            except Exception:
                logger.exception("session.record.failed run_id=%s", prepared.run_id)
                reason = "error"
            else:
                return None
        if reason == "timeout":
            logger.error("session.record.failed run_id=%s reason=timeout", prepared.run_id)
        metrics.SESSION_RECORD_FAILURES.labels(reason).inc()
        return SessionStoreError(
            "The reply could not be stored in the session (the session store failed); it is "
            "not part of the conversation. Retry later."
        )


def history_messages(transcript: Sequence[TranscriptEntry]) -> list[Message]:
    """A stored transcript as model input.

    A run's final reply holds all the text its client saw, including what the model said
    before calling tools; that text is also in the run's internal tool-calling entries. The
    reply keeps only what is new, so the model never reads the same words twice.
    """
    messages: list[Message] = []
    said = ""  # the text of the internal assistant entries since the last visible entry
    for entry in transcript:
        message = entry.to_message()
        if entry.internal:
            if entry.role == "assistant":
                said += entry.content
        else:
            if entry.role == "assistant" and said and entry.content.startswith(said):
                message = replace(message, content=entry.content[len(said) :])
            said = ""
        messages.append(message)
    return messages
