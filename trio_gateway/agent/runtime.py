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
   of growing a buffer. The whole run is bounded by the agent's ``timeoutSeconds``, and what
   the model may send by ``maxOutputChars`` (per run), ``tools.maxCallsPerTurn`` and
   ``tools.maxArgumentChars``: past one of them the stream is stopped at once and the run
   fails with a 502 ``upstream_error`` (``output_too_large``, ``too_many_tool_calls``,
   ``tool_arguments_too_large``), so no buffer of a run grows without bound.

A run that fails emits ``RunFailed`` and returns a failed :class:`RunResult`; it does not raise.
A cancelled run (its client went away) records what it had so far as ``aborted`` and lets
``trio.Cancelled`` propagate. A stable session gets every turn recorded whatever the outcome, in
one atomic write, shielded from cancellation and bounded in time. A completed run whose turn
cannot be stored fails (``session_store_error``) instead of finishing: its client must not
believe the reply is part of the session.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from .. import metrics
from ..auth import check_exposure, needs_secret
from ..config import AgentConfig, AuthConfig, Config
from ..config.credentials import with_mode_secret
from ..config.loader import load_config
from ..config.loader import state_dir as default_state_dir
from ..config.schema import EchoProviderConfig
from ..errors import (
    ConfigError,
    DrainingError,
    GatewayError,
    InvalidRequestError,
    ProviderError,
    RunAbortedError,
    RunError,
    RunTimeoutError,
    SessionStoreError,
    ToolError,
)
from ..logs import run_id_var
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
from ..providers.registry import ProviderLease, ProviderSet, close_providers
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
from .active import ActiveRun, ActiveRuns, Retention
from .events import (
    RunEvent,
    RunFailed,
    RunFinished,
    RunResult,
    RunStarted,
    RunTimings,
    ToolFinished,
    ToolStarted,
)
from .failover import ModelTarget, RetryPolicy, call_with_failover
from .lanes import Admission, Ticket
from .prompt import client_tool_specs, close_tool_calls, split_request
from .routing import RunTarget, resolve_target

__all__ = [
    "AgentRuntime",
    "OutputLimits",
    "PreparedRun",
    "ReloadResult",
    "RunResult",
    "open_runtime",
]

logger = logging.getLogger(__name__)

#: How long recording a turn may take once the run is over (it runs shielded from cancellation).
RECORD_BOUND_SECONDS = 5.0

EmitEvent = Callable[[RunEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class OutputLimits:
    """The bounds on a run's model output, from the config when the run was prepared."""

    #: Characters of text, reasoning and tool calls (names and arguments) in the whole run.
    max_output_chars: int
    #: Tool calls in one model answer.
    max_calls_per_turn: int
    #: Characters of one tool call's arguments.
    max_argument_chars: int

    def output_too_large(self) -> ProviderError:
        return ProviderError(
            f"The model's output passed {self.max_output_chars} characters in this run "
            "(agents.defaults.maxOutputChars); the run was stopped.",
            code="output_too_large",
        )

    def too_many_tool_calls(self) -> ProviderError:
        return ProviderError(
            f"The model made more than {self.max_calls_per_turn} tool calls in one answer "
            "(tools.maxCallsPerTurn); the run was stopped.",
            code="too_many_tool_calls",
        )

    def arguments_too_large(self, name: str | None) -> ProviderError:
        what = f"the tool call {name!r}" if name else "a tool call"
        return ProviderError(
            f"The arguments of {what} passed {self.max_argument_chars} characters "
            "(tools.maxArgumentChars); the run was stopped.",
            code="tool_arguments_too_large",
        )


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
    #: What the model may send in one run, one answer and one tool call (see the module doc).
    limits: OutputLimits
    #: The run's use of the providers in ``chain``, released when the run (or its admission
    #: ticket) ends: a reload closes the providers it replaced only once every lease is gone.
    lease: ProviderLease | None = None

    @property
    def model_ref(self) -> str:
        return self.chain[0].ref


#: Settings read once, when the process starts: a reload that changes them says so.
RESTART_ONLY: tuple[tuple[str, Callable[[Config], object]], ...] = (
    ("gateway.port", lambda c: c.gateway.port),
    ("gateway.bind", lambda c: c.gateway.bind),
    ("gateway.logging.level", lambda c: c.gateway.logging.level),
    ("gateway.logging.format", lambda c: c.gateway.logging.format),
    ("session.store", lambda c: c.session.store),
    ("session.path", lambda c: c.session.path),
)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did not apply at once."""

    #: Human-readable notes (settings that apply to new connections only, and the like).
    warnings: list[str]
    #: Dotted keys whose new value differs from the one the gateway started with and that
    #: only a restart applies.
    restart_required: list[str]


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
    #: Agent tool calls whose results are not in ``produced`` yet.
    pending_calls: tuple[ToolCall, ...] = ()
    client_indexes: dict[int, int] = field(default_factory=dict)
    client_calls_seen: int = 0
    #: Characters of model output received so far in the run (see :class:`OutputLimits`).
    output_chars: int = 0

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
        self.active_runs = ActiveRuns(_retention(config))
        #: Where detached runs live (set by whoever serves the runtime; see serve_gateway).
        self.background: trio.Nursery | None = None
        self.started_at = time.time()
        #: Set when the gateway begins shutting down: /readyz answers 503 from then on.
        self.draining = False
        self.admission = Admission(
            max_concurrent=defaults.max_concurrent,
            max_queued=defaults.max_queued,
            on_change=_export_queue_depth,
        )
        #: Where the config came from (a file path), for ``reload``; ``None``: not reloadable.
        self.config_path: Path | None = None
        #: The config the runtime started with (what restart-only settings still follow).
        self._startup_config = config
        #: The providers new runs use. Given ones belong to the caller; built ones to the
        #: runtime, which closes them (see :meth:`aclose_providers`).
        self._provider_set = ProviderSet(self.providers, owned=providers is None)
        #: Sets a reload built and replaced, unused now, waiting for :meth:`serve_retirement`.
        self._idle_sets: list[ProviderSet] = []
        self._idle_sets_changed = trio.Event()
        #: Sets the runtime built and has not closed yet (the current one included).
        self._owned_sets: list[ProviderSet] = []
        if self._provider_set.owned:
            self._owned_sets.append(self._provider_set)
        #: The hosts the runtime is served on (see :meth:`exposed_on`).
        self._hosts: list[str] = []
        #: Counts the reloads that changed the credential clients must present.
        self.credentials_generation = 0
        #: Set (and replaced) when it changes.
        self._credentials_changed = trio.Event()
        #: The auth settings in the config file, by the file's (inode, mtime, size).
        self._file_auth: tuple[tuple[int, int, int], AuthConfig | None] | None = None
        self._chains, self._agent_tools = self._derive(config, self.providers)

    def _derive(
        self, config: Config, providers: Mapping[str, Provider]
    ) -> tuple[dict[str, tuple[ModelTarget, ...]], dict[str, dict[str, Tool]]]:
        """The per-agent model chains and tools for ``config`` with ``providers``."""
        defaults = config.agents.defaults
        chains = {
            agent.id: self._chain(agent, config, providers) for agent in config.agents.entries
        }
        tools = {
            agent.id: {tool.spec.name: tool for tool in self.tools.tools_for(agent, defaults)}
            for agent in config.agents.entries
        }
        return chains, tools

    @contextmanager
    def exposed_on(self, host: str) -> Iterator[None]:
        """While the runtime is served on ``host``: refuse auth settings that would expose it
        (at once, and on every later reload)."""
        check_exposure(host, self.config.gateway.auth)
        self._hosts.append(host)
        try:
            yield
        finally:
            self._hosts.remove(host)

    def _set_idle(self, provider_set: ProviderSet) -> None:
        """A replaced set's last user is done: hand it to :meth:`serve_retirement`."""
        self._idle_sets.append(provider_set)
        self._idle_sets_changed.set()

    async def serve_retirement(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Close the providers a reload replaced, each once its last run is over; runs until
        cancelled (:func:`open_runtime` runs it)."""
        task_status.started()
        while True:
            await self._idle_sets_changed.wait()
            self._idle_sets_changed = trio.Event()
            while self._idle_sets:
                provider_set = self._idle_sets.pop(0)
                if provider_set not in self._owned_sets:
                    continue  # closed on exit already
                self._owned_sets.remove(provider_set)
                await close_providers(provider_set.providers)  # shielded and bounded
                logger.debug("providers.retired providers=%s", ",".join(provider_set.providers))

    async def aclose_providers(self) -> None:
        """Close every provider the runtime built that is still open (on exit)."""
        self._idle_sets.clear()
        while self._owned_sets:
            provider_set = self._owned_sets.pop()
            provider_set.closed = True
            await close_providers(provider_set.providers)

    async def wait_credentials_changed(self, since: int) -> None:
        """Return once :attr:`credentials_generation` is past ``since``: a reload changed the
        credential clients authenticate with."""
        while self.credentials_generation == since:
            await self._credentials_changed.wait()

    def file_auth(self) -> AuthConfig | None:
        """The auth settings the config file holds now (what a reload would apply; ``None``
        without a file or when it is invalid). Read again only when the file changed."""
        if self.config_path is None:
            return None
        try:
            status = self.config_path.stat()
        except OSError:
            return None
        key = (status.st_ino, status.st_mtime_ns, status.st_size)
        if self._file_auth is None or self._file_auth[0] != key:
            try:
                auth: AuthConfig | None = load_config(self.config_path).config.gateway.auth
            except ConfigError:
                auth = None
            self._file_auth = (key, auth)
        return self._file_auth[1]

    def reload(self, config: Config) -> ReloadResult:
        """Apply a new, validated config to new runs; runs in progress keep what they started
        with (their providers are closed once the last of them is over). Raises
        ``ConfigError`` (the current config stays) for a config the running gateway cannot
        take: one that would serve a non-loopback host without authentication, say."""
        current = self.config
        auth = config.gateway.auth
        if needs_secret(auth):
            # The running gateway may be using a generated secret: keep it rather than lock
            # every client out.
            if current.gateway.auth.mode != auth.mode or current.gateway.auth.secret is None:
                raise ConfigError(
                    f"no {auth.mode} is set; the running gateway would refuse every request",
                    path=f"gateway.auth.{auth.mode}",
                )
            config = with_mode_secret(config, current.gateway.auth.secret)
        for host in self._hosts:
            check_exposure(host, config.gateway.auth)
        providers = build_providers(config)
        chains, tools = self._derive(config, providers)
        replaced = self._provider_set
        self.providers = providers
        self._provider_set = ProviderSet(providers, owned=True)
        self._owned_sets.append(self._provider_set)
        self.config, self._chains, self._agent_tools = config, chains, tools
        if replaced.retire():
            self._set_idle(replaced)
        defaults = config.agents.defaults
        self.admission.resize(
            max_concurrent=defaults.max_concurrent, max_queued=defaults.max_queued
        )
        old_auth, new_auth = current.gateway.auth, config.gateway.auth
        if new_auth.mode != "none" and (old_auth.mode, old_auth.secret) != (
            new_auth.mode,
            new_auth.secret,
        ):
            self.credentials_generation += 1
            self._credentials_changed.set()
            self._credentials_changed = trio.Event()
            logger.info("config.credentials_changed mode=%s", new_auth.mode)
        warnings = []
        if current.gateway.ws != config.gateway.ws:
            warnings.append("gateway.ws settings apply to new connections")
        restart = [
            key for key, value in RESTART_ONLY if value(config) != value(self._startup_config)
        ]
        if restart:
            logger.warning("config.reload.restart_required keys=%s", ",".join(restart))
        logger.info(
            "config.reloaded agents=%s warnings=%d",
            ",".join(agent.id for agent in config.agents.entries),
            len(warnings),
        )
        return ReloadResult(warnings, restart)

    def reload_from_file(self) -> ReloadResult:
        """Load the config file again and :meth:`reload` it (``ConfigError`` if invalid: the
        current config stays)."""
        if self.config_path is None:
            raise ConfigError("this gateway runs on the embedded default: there is no file")
        return self.reload(load_config(self.config_path).config)

    def _chain(
        self, agent: AgentConfig, config: Config, providers: Mapping[str, Provider]
    ) -> tuple[ModelTarget, ...]:
        defaults = config.agents.defaults
        fallbacks = agent.fallbacks if agent.fallbacks is not None else defaults.fallbacks
        chain = []
        for ref in (agent.model or defaults.model, *fallbacks):
            provider_name, _, model = ref.partition("/")
            provider = providers.get(provider_name)
            if provider is None:
                raise ProviderError(f"No provider named {provider_name!r} is available.")
            settings = config.models.providers.get(provider_name)
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
        """Route and validate a chat request; raise a request error if it cannot run.

        The prepared run holds a lease on the providers it will use (see :meth:`admit`)."""
        config, chains, all_tools = self.config, self._chains, self._agent_tools
        lease = self._provider_set.lease(self._set_idle)
        try:
            prepared = await self._prepare(
                chat, config, chains, all_tools, header_agent_id, header_session_key
            )
        except BaseException:
            lease.release()
            raise
        return replace(prepared, lease=lease)

    async def _prepare(
        self,
        chat: ChatRequest,
        config: Config,
        chains: Mapping[str, tuple[ModelTarget, ...]],
        all_tools: Mapping[str, dict[str, Tool]],
        header_agent_id: str | None,
        header_session_key: str | None,
    ) -> PreparedRun:
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
        agent_tools = all_tools[agent.id]
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
            chain=chains[agent.id],
            instructions=tuple(instructions),
            conversation=tuple(conversation),
            agent_tools=agent_tools,
            client_tools=tuple(client_tools),
            request=request,
            timeout_seconds=agent.timeout_seconds or defaults.timeout_seconds,
            max_tool_iterations=agent.max_tool_iterations or defaults.max_tool_iterations,
            record=not target.stateless or config.session.persist_stateless,
            limits=OutputLimits(
                max_output_chars=defaults.max_output_chars,
                max_calls_per_turn=config.tools.max_calls_per_turn,
                max_argument_chars=config.tools.max_argument_chars,
            ),
        )

    async def admit(self, prepared: PreparedRun) -> Ticket:
        """Wait for the session's lane and a run slot; raise 409/429 errors when refused, and
        503 once the gateway is draining for shutdown. Releasing the ticket releases the
        prepared run's lease on its providers too (so does the end of the run); a refusal
        releases it at once."""
        lease = prepared.lease
        try:
            if self.draining:
                raise DrainingError(
                    "The gateway is shutting down and starts no new runs; retry shortly.",
                    retry_after=1,
                )
            ticket = await self.admission.admit(
                prepared.target.session_key,
                lane_wait_seconds=self.config.session.queue_timeout_seconds,
            )
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        if lease is not None:
            ticket.on_release = lease.release
        return ticket

    async def run(
        self, prepared: PreparedRun, emit: EmitEvent, *, source: str = "http"
    ) -> RunResult:
        """Run the agent, emitting events; see the module docstring for the outcomes.

        While it runs, the run is listed in :attr:`active_runs` (``source`` says which transport
        started it), where ``agent.abort`` can stop it and others can follow its events.
        """
        run_id_token = run_id_var.set(prepared.run_id)  # every log line of the run carries it
        target = prepared.target
        active = ActiveRun(prepared.run_id, target.agent.id, target.session_key, source)
        self.active_runs.register(active)

        async def publishing_emit(event: RunEvent) -> None:
            await emit(event)
            if active.subscribers:
                active.publish(event)

        result: RunResult | None = None
        metrics.ACTIVE_RUNS.labels(source).inc()
        started = time.monotonic()
        try:
            result = await self._run(prepared, publishing_emit, active)
            return result
        except BaseException as exc:
            metrics.count_cancelled_run(exc, draining=self.draining)
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
            self.active_runs.finish(active, result, _retention(self.config))
            run_id_var.reset(run_id_token)
            if prepared.lease is not None:
                prepared.lease.release()

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
                timings = state.timings(started)
                return RunResult("failed", state.text(), None, state.usage, error, timings=timings)
            assert finish is not None
            lost = await self._record(prepared, state, "completed")
            if lost is not None:
                logger.info(
                    "run.failed run_id=%s agent=%s error=%s duration_ms=%.1f",
                    prepared.run_id,
                    target.agent.id,
                    lost.code,
                    duration_ms,
                )
                await emit(RunFailed(lost))
                timings = state.timings(started)
                return RunResult("failed", state.text(), None, state.usage, lost, timings=timings)
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
            )
        # Only an abort gets here: the scope caught its own cancellation (the partial turn was
        # recorded as aborted on the way out).
        error = RunAbortedError(f"The run was aborted ({active.abort_reason}).")
        logger.info("run.aborted run_id=%s agent=%s", prepared.run_id, target.agent.id)
        await emit(RunFailed(error))
        timings = state.timings(started)
        return RunResult("aborted", state.text(), None, state.usage, error, timings=timings)

    async def _loop(self, prepared: PreparedRun, emit: EmitEvent, state: _RunState) -> FinishReason:
        history, new = await self._conversation(prepared, state)
        messages = close_tool_calls([*prepared.instructions, *history, *new])
        client_names = {spec.name for spec in prepared.client_tools}
        request = prepared.request
        for iteration in range(prepared.max_tool_iterations):
            request = replace(request, messages=tuple(messages))
            state.call_start = len(state.parts)
            call_started = time.monotonic()
            try:
                completion = await self._model_call(prepared, request, emit, state, client_names)
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
        return history_messages(kept), list(reconciled.new)

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
        )
        reason = "timeout"
        with trio.move_on_after(RECORD_BOUND_SECONDS, shield=True):
            try:
                await self.sessions.record_turn(prepared.target.session_key, turn)
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


def _retention(config: Config) -> Retention:
    kept = config.gateway.finished_runs
    return Retention(kept.max_count, kept.max_bytes, kept.keep_seconds)


def _export_queue_depth(admission: Admission) -> None:
    stats = admission.statistics()
    metrics.QUEUE_DEPTH.labels("slots").set(stats.queued)
    metrics.QUEUE_DEPTH.labels("sessions").set(stats.waiting_for_session)


def _session_mismatch() -> InvalidRequestError:
    return InvalidRequestError(
        "This session key belongs to another agent; a session can only be used with the agent "
        "that created it.",
        param="x-epiloop-session-key",
        code="session_agent_mismatch",
    )


@asynccontextmanager
async def open_runtime(
    config: Config, *, state_dir: Path, config_path: Path | None = None
) -> AsyncIterator[AgentRuntime]:
    """The runtime for ``config`` with its configured session store and providers, closed on
    exit (the store flushed, the providers' HTTP connections closed, those a reload replaced
    too). ``config_path`` is the file :meth:`AgentRuntime.reload_from_file` reads."""
    async with (
        open_session_store(config.session, state_dir) as sessions,
        trio.open_nursery() as nursery,
    ):
        runtime = AgentRuntime(config, sessions=sessions, state_dir=state_dir)
        try:
            runtime.config_path = config_path
            await nursery.start(runtime.serve_retirement)
            yield runtime
        finally:
            nursery.cancel_scope.cancel(reason="the runtime is closing")
            await runtime.aclose_providers()  # shielded and bounded
