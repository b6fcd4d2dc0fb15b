"""The agent run: one code path for every transport.

A transport (the HTTP chat completions route, the WebSocket control plane, the CLI) does three
things, in order:

1. ``prepare``: route the request to an agent and a session, check everything that can be
   checked up front, and raise request errors while a real HTTP status can still be answered;
2. ``admit``: wait for the session's lane and a run slot (409 / 429 when that fails, see
   :mod:`~trio_gateway.agent.lanes`), giving a ticket to release when the run is over;
3. ``run``: the agent loop. It reconciles the request with the stored session, calls the model
   (with retries and fallbacks before the first token), runs the agent's tools concurrently and
   calls the model again, until a final answer, a client tool call or ``maxToolIterations``.
   Everything it does is reported through the ``emit`` callback as
   :mod:`events <trio_gateway.agent.events>`, awaited, so a slow consumer slows the run instead
   of growing a buffer. The whole run is bounded by the agent's ``timeoutSeconds``.

A run that fails emits ``RunFailed`` and returns a failed :class:`RunResult`; it does not raise.
A cancelled run (its client went away) records what it had so far as ``aborted`` and lets
``trio.Cancelled`` propagate. A stable session gets every turn recorded whatever the outcome, in
one atomic write, shielded from cancellation and bounded in time.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from ..config import AgentConfig, Config
from ..config.loader import state_dir as default_state_dir
from ..config.schema import EchoProviderConfig
from ..errors import (
    GatewayError,
    InvalidRequestError,
    ProviderError,
    RunAbortedError,
    RunError,
    RunTimeoutError,
    ToolError,
)
from ..messages import Message, ToolCall, ToolSpec
from ..providers import build_providers
from ..providers.base import (
    Completion,
    FinishReason,
    ModelEvent,
    ModelRequest,
    Provider,
    ReasoningDelta,
    TextDelta,
    TokenUsage,
    ToolCallDelta,
)
from ..providers.registry import close_providers
from ..sessions import MemorySessionStore, SessionStore, TranscriptEntry, Turn, open_session_store
from ..sessions.reconcile import reconcile
from ..sessions.store import RunStatus
from ..tools import (
    Tool,
    ToolContext,
    ToolRegistry,
    call_tool,
    default_registry,
    workspace_for,
)
from ..wire.chat import ChatRequest
from .active import ActiveRun, ActiveRuns
from .events import (
    RunEvent,
    RunFailed,
    RunFinished,
    RunResult,
    RunStarted,
    ToolFinished,
    ToolStarted,
)
from .failover import ModelTarget, RetryPolicy, call_with_failover
from .lanes import Admission, Ticket
from .prompt import client_tool_specs, close_tool_calls, split_request
from .routing import RunTarget, resolve_target

__all__ = ["AgentRuntime", "PreparedRun", "RunResult", "open_runtime"]

logger = logging.getLogger(__name__)

#: How long recording a turn may take once the run is over (it runs shielded from cancellation).
RECORD_BOUND_SECONDS = 5.0

EmitEvent = Callable[[RunEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """A run that passed every up-front check and is ready to be admitted and started."""

    run_id: str
    created: int
    target: RunTarget
    chain: tuple[ModelTarget, ...]
    #: The agent's system prompt, then the request's system and developer messages.
    instructions: tuple[Message, ...]
    #: The request's other messages, in order.
    conversation: tuple[Message, ...]
    agent_tools: Mapping[str, Tool]
    client_tools: tuple[ToolSpec, ...]
    request: ModelRequest
    timeout_seconds: float
    max_tool_iterations: int
    #: Whether the turn is stored (a stable session, or ``session.persistStateless``).
    record: bool

    @property
    def model_ref(self) -> str:
        return self.chain[0].ref


@dataclass
class _RunState:
    """What a run has produced so far (kept so a failed or aborted run can be recorded)."""

    parts: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    #: Index into ``parts`` where the current model call's text starts.
    call_start: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)
    new_entries: list[TranscriptEntry] = field(default_factory=list)
    produced: list[TranscriptEntry] = field(default_factory=list)
    keep: int | None = None
    #: Agent tool calls whose results are not in ``produced`` yet.
    pending_calls: tuple[ToolCall, ...] = ()
    client_indexes: dict[int, int] = field(default_factory=dict)
    client_calls_seen: int = 0

    def text(self) -> str:
        return "".join(self.parts)

    def call_text(self) -> str:
        return "".join(self.parts[self.call_start :])


class AgentRuntime:
    """The configured agents with their models, tools and the session store."""

    def __init__(
        self,
        config: Config,
        *,
        providers: Mapping[str, Provider] | None = None,
        sessions: SessionStore | None = None,
        tools: ToolRegistry | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.providers: Mapping[str, Provider] = (
            providers if providers is not None else build_providers(config)
        )
        self.sessions: SessionStore = sessions if sessions is not None else MemorySessionStore()
        self.tools = tools if tools is not None else default_registry()
        self.state_dir = state_dir if state_dir is not None else default_state_dir()
        defaults = config.agents.defaults
        self.active_runs = ActiveRuns()
        #: Where detached runs live (set by whoever serves the runtime; see serve_gateway).
        self.background: trio.Nursery | None = None
        self.started_at = time.time()
        self.admission = Admission(
            max_concurrent=defaults.max_concurrent, max_queued=defaults.max_queued
        )
        self._chains = {agent.id: self._chain(agent) for agent in config.agents.entries}
        self._agent_tools = {
            agent.id: {tool.spec.name: tool for tool in self.tools.tools_for(agent, defaults)}
            for agent in config.agents.entries
        }

    def _chain(self, agent: AgentConfig) -> tuple[ModelTarget, ...]:
        defaults = self.config.agents.defaults
        fallbacks = agent.fallbacks if agent.fallbacks is not None else defaults.fallbacks
        chain = []
        for ref in (agent.model or defaults.model, *fallbacks):
            provider_name, _, model = ref.partition("/")
            provider = self.providers.get(provider_name)
            if provider is None:
                raise ProviderError(f"No provider named {provider_name!r} is available.")
            settings = self.config.models.providers.get(provider_name)
            retry = RetryPolicy()
            if settings is not None and not isinstance(settings, EchoProviderConfig):
                retry = RetryPolicy(
                    settings.max_retries,
                    settings.retry_delay_seconds,
                    settings.retry_max_delay_seconds,
                )
            chain.append(ModelTarget(ref, provider, model, retry))
        return tuple(chain)

    async def prepare(
        self,
        chat: ChatRequest,
        *,
        header_agent_id: str | None = None,
        header_session_key: str | None = None,
    ) -> PreparedRun:
        """Route and validate a chat request; raise a request error if it cannot run."""
        config = self.config
        defaults = config.agents.defaults
        target = resolve_target(
            config,
            header_agent_id=header_agent_id,
            header_session_key=header_session_key,
            model=chat.model,
            user=chat.user,
        )
        agent = target.agent
        if not target.stateless:
            session = await self.sessions.get(target.session_key)
            if session is not None and session.agent_id.lower() != agent.id.lower():
                raise _session_mismatch()
        agent_tools = self._agent_tools[agent.id]
        client_tools = client_tool_specs(chat.tools)
        for index, spec in enumerate(client_tools):
            if spec.name in agent_tools:
                raise InvalidRequestError(
                    f"The tool name {spec.name!r} is taken by one of the agent's own tools; "
                    "rename the client tool.",
                    param=f"tools[{index}].function.name",
                    code="tool_name_conflict",
                )
        system_prompt = agent.system_prompt
        if system_prompt is None:
            system_prompt = defaults.system_prompt
        instructions, conversation = split_request(chat.messages)
        if system_prompt:
            instructions.insert(0, Message("system", system_prompt))
        stop = chat.stop
        request = ModelRequest(
            model="",  # each link of the chain sets its own
            messages=(),
            max_tokens=chat.token_limit,
            temperature=chat.temperature,
            top_p=chat.top_p,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            tools=(*(tool.spec for tool in agent_tools.values()), *client_tools),
            tool_choice=chat.tool_choice,
        )
        return PreparedRun(
            run_id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            target=target,
            chain=self._chains[agent.id],
            instructions=tuple(instructions),
            conversation=tuple(conversation),
            agent_tools=agent_tools,
            client_tools=tuple(client_tools),
            request=request,
            timeout_seconds=agent.timeout_seconds or defaults.timeout_seconds,
            max_tool_iterations=agent.max_tool_iterations or defaults.max_tool_iterations,
            record=not target.stateless or config.session.persist_stateless,
        )

    async def admit(self, prepared: PreparedRun) -> Ticket:
        """Wait for the session's lane and a run slot; raise 409/429 errors when refused."""
        return await self.admission.admit(
            prepared.target.session_key,
            lane_wait_seconds=self.config.session.queue_timeout_seconds,
        )

    async def run(
        self, prepared: PreparedRun, emit: EmitEvent, *, source: str = "http"
    ) -> RunResult:
        """Run the agent, emitting events; see the module docstring for the outcomes.

        While it runs, the run is listed in :attr:`active_runs` (``source`` says which transport
        started it), where ``agent.abort`` can stop it and others can follow its events.
        """
        target = prepared.target
        active = ActiveRun(prepared.run_id, target.agent.id, target.session_key, source)
        self.active_runs.register(active)

        async def publishing_emit(event: RunEvent) -> None:
            await emit(event)
            if active.subscribers:
                active.publish(event)

        result = RunResult(
            "aborted", "", None, TokenUsage(), RunAbortedError("The run was cancelled.")
        )
        try:
            result = await self._run(prepared, publishing_emit, active)
            return result
        finally:
            self.active_runs.finish(active, result)

    async def _run(self, prepared: PreparedRun, emit: EmitEvent, active: ActiveRun) -> RunResult:
        target = prepared.target
        state = _RunState()
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
                logger.info(
                    "run.failed run_id=%s agent=%s error=%s duration_ms=%.1f",
                    prepared.run_id,
                    target.agent.id,
                    error.code,
                    duration_ms,
                )
                await emit(RunFailed(error))
                return RunResult("failed", state.text(), None, state.usage, error)
            assert finish is not None
            await self._record(prepared, state, "completed")
            logger.info(
                "run.complete run_id=%s agent=%s finish_reason=%s tokens=%d duration_ms=%.1f",
                prepared.run_id,
                target.agent.id,
                finish,
                state.usage.total_tokens,
                duration_ms,
            )
            await emit(RunFinished(finish, state.usage))
            last = state.produced[-1] if state.produced else None
            client_calls = last.tool_calls if last is not None and finish == "tool_calls" else ()
            return RunResult(
                "completed",
                state.text(),
                finish,
                state.usage,
                tool_calls=client_calls,
                reasoning="".join(state.reasoning),
            )
        # Only an abort gets here: the scope caught its own cancellation (the partial turn was
        # recorded as aborted on the way out).
        error = RunAbortedError("The run was aborted (agent.abort).")
        logger.info("run.aborted run_id=%s agent=%s", prepared.run_id, target.agent.id)
        await emit(RunFailed(error))
        return RunResult("aborted", state.text(), None, state.usage, error)

    async def _loop(self, prepared: PreparedRun, emit: EmitEvent, state: _RunState) -> FinishReason:
        history, new = await self._conversation(prepared, state)
        messages = close_tool_calls([*prepared.instructions, *history, *new])
        client_names = {spec.name for spec in prepared.client_tools}
        request = prepared.request
        for iteration in range(prepared.max_tool_iterations):
            request = replace(request, messages=tuple(messages))
            state.call_start = len(state.parts)
            completion = await self._model_call(prepared, request, emit, state, client_names)
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
            results = await self._run_tools(prepared, calls, emit)
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
        if not prepared.target.stateless:
            session = await self.sessions.get(prepared.target.session_key)
        if session is None:
            state.new_entries = [TranscriptEntry.of(m) for m in conversation]
            return [], conversation
        if session.agent_id.lower() != prepared.target.agent.id.lower():
            # Checked in prepare too; checked again here, under the session's lane, because
            # another agent's run may have created the session in between.
            raise _session_mismatch()
        reconciled = reconcile(session.transcript, conversation)
        kept = (
            session.transcript if reconciled.keep is None else session.transcript[: reconciled.keep]
        )
        state.keep = reconciled.keep
        state.new_entries = [TranscriptEntry.of(m) for m in reconciled.new]
        return [entry.to_message() for entry in kept], list(reconciled.new)

    async def _model_call(
        self,
        prepared: PreparedRun,
        request: ModelRequest,
        emit: EmitEvent,
        state: _RunState,
        client_names: set[str],
    ) -> Completion:
        parts, reasoning, indexes = state.parts, state.reasoning, state.client_indexes
        indexes.clear()
        #: Pieces of calls whose name has not arrived yet: (id, arguments so far).
        unnamed: dict[int, tuple[str | None, str]] = {}

        async def route(event: ModelEvent) -> None:
            if type(event) is TextDelta:
                parts.append(event.text)
                await emit(event)
            elif type(event) is ReasoningDelta:
                reasoning.append(event.text)
                await emit(event)
            elif type(event) is ToolCallDelta:
                index = event.index
                if index not in indexes:
                    if event.name is None:
                        call_id, arguments = unnamed.get(index, (None, ""))
                        unnamed[index] = (call_id or event.id, arguments + event.arguments)
                        return
                    call_id, arguments = unnamed.pop(index, (None, ""))
                    if event.name not in client_names:
                        indexes[index] = -1  # an agent tool: the client never sees it
                        return
                    indexes[index] = state.client_calls_seen
                    state.client_calls_seen += 1
                    event = ToolCallDelta(
                        index, event.id or call_id, event.name, arguments + event.arguments
                    )
                client_index = indexes[index]
                if client_index >= 0:
                    await emit(replace(event, index=client_index))

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
            return True, await call_tool(tool, call.arguments, context)
        except ToolError as exc:
            return False, f"Error: {exc.message}"
        except Exception:
            logger.exception("tool.crashed run_id=%s tool=%s", prepared.run_id, call.name)
            return False, "Error: the tool failed unexpectedly."

    async def _record(self, prepared: PreparedRun, state: _RunState, status: RunStatus) -> None:
        """Store the turn; shielded and bounded, so a cancelled run is recorded too."""
        if not prepared.record:
            return
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
        )
        with trio.move_on_after(RECORD_BOUND_SECONDS, shield=True) as scope:
            try:
                await self.sessions.record_turn(prepared.target.session_key, turn)
            except Exception:
                # The client still gets its answer; the operator gets the store's error.
                logger.exception("session.record.failed run_id=%s", prepared.run_id)
        if scope.cancelled_caught:
            logger.error("session.record.failed run_id=%s reason=timeout", prepared.run_id)


def _session_mismatch() -> InvalidRequestError:
    return InvalidRequestError(
        "This session key belongs to another agent; a session can only be used with the agent "
        "that created it.",
        param="x-epiloop-session-key",
        code="session_agent_mismatch",
    )


@asynccontextmanager
async def open_runtime(config: Config, *, state_dir: Path) -> AsyncIterator[AgentRuntime]:
    """The runtime for ``config`` with its configured session store and providers, closed on
    exit (the store flushed, the providers' HTTP connections closed)."""
    providers = build_providers(config)
    try:
        async with open_session_store(config.session, state_dir) as sessions:
            yield AgentRuntime(config, providers=providers, sessions=sessions, state_dir=state_dir)
    finally:
        await close_providers(providers)
