"""The agent runtime: the configured agents, their providers, tools and session store, and
one code path for every transport.

A transport (the HTTP chat completions route, the WebSocket control plane, the CLI) translates
its input into a :class:`~trio_gateway.agent.request.RunRequest`, then does three things, in
order::

    prepared = await runtime.prepare(request)     # routing and every up-front check
    with await runtime.admit(prepared) as admitted:  # the session's lane and a run slot
        result = await admitted.run(emit)          # the agent loop, emitting events

``prepare`` raises request errors while a real HTTP status can still be answered; ``admit``
raises 409 / 429 / 503 (see :mod:`~trio_gateway.agent.admission`); the
:class:`~trio_gateway.agent.admitted.AdmittedRun` is the only way to start a run, and runs the
loop of :mod:`~trio_gateway.agent.loop` (which says what a run does, how it is bounded and how
it ends).

:func:`open_runtime` is the only constructor: it owns the runtime's background nursery
(detached runs), the session store it opened and the providers it built. The runtime also owns
reloads: a new config applies to new runs, and the providers it replaced are closed once the
last run that uses them is over.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path

import trio

from .. import metrics
from ..auth import check_exposure
from ..cluster import ClusterNode
from ..config import AuthConfig, Config
from ..config.loader import load_config
from ..errors import (
    ConfigError,
    DrainingError,
    InvalidRequestError,
)
from ..messages import Message
from ..pg import Database, migrate, open_database
from ..pg.instances import default_instance_id
from ..providers import build_providers
from ..providers.base import (
    ModelRequest,
    Provider,
)
from ..providers.registry import close_providers
from ..sessions import SessionStore, open_session_store
from ..sessions.postgres import PostgresSessionStore
from ..tools import (
    Tool,
    ToolRegistry,
    default_registry,
)
from .active import ActiveRuns
from .admission import Admission
from .admitted import AdmittedRun, finished_runs_retention
from .events import (
    RunResult,
)
from .failover import ModelTarget, model_chain
from .images import check_image_input, check_session_images, fetch_remote_images
from .loop import HeldLane, RunLoop
from .prepared import OutputLimits, PreparedRun, session_mismatch
from .prompt import split_messages
from .provider_sets import ProviderSets
from .reload import ReloadResult, keep_running_secret, reload_warnings, restart_required
from .request import RunRequest
from .routing import resolve_target
from .shared_admission import admit_shared, cluster_settings

__all__ = [
    "AdmittedRun",
    "AgentRuntime",
    "OutputLimits",
    "PreparedRun",
    "ReloadResult",
    "RunResult",
    "open_runtime",
]

logger = logging.getLogger(__name__)


class AgentRuntime:
    """The configured agents with their models, tools and the session store.

    Made by :func:`open_runtime` only, which owns what the runtime opens: its background
    nursery, the providers it built and the session store it opened.
    """

    def __init__(
        self,
        config: Config,
        *,
        background: trio.Nursery,
        providers: Mapping[str, Provider],
        owns_providers: bool,
        sessions: SessionStore,
        tools: ToolRegistry | None,
        state_dir: Path,
        config_path: Path | None,
        database: Database | None = None,
    ) -> None:
        self.config = config
        #: This process among the gateways sharing a database (``gateway.instanceId``).
        self.instance_id = config.gateway.instance_id or default_instance_id()
        self.providers: Mapping[str, Provider] = providers
        self.sessions: SessionStore = sessions
        self.tools = tools if tools is not None else default_registry()
        self.state_dir = state_dir
        defaults = config.agents.defaults
        self.active_runs = ActiveRuns(finished_runs_retention(config))
        #: Where detached runs live (see :meth:`start_background`); open_runtime's nursery.
        self._background = background
        self.started_at = time.time()
        #: Set when the gateway begins shutting down (see :meth:`begin_draining`).
        self._draining = False
        self.admission = Admission(
            max_concurrent=defaults.max_concurrent,
            max_queued=defaults.max_queued,
            lane_wait_seconds=config.session.queue_timeout_seconds,
            on_change=_export_queue_depth,
        )
        #: This instance's part in the cluster (PostgreSQL mode: the database given), which
        #: owns the session lanes, the cluster cap and the shared run registry; else ``None``.
        self.cluster: ClusterNode | None = None
        if database is not None:
            self.cluster = ClusterNode(
                database,
                cluster_settings(config, self.instance_id),
                progress=self._progress,
                abort_local=self._abort_local,
            )
        #: Where the config came from (a file path), for ``reload``; ``None``: not reloadable.
        self._config_path = config_path
        #: The config the runtime started with (what restart-only settings still follow).
        self._startup_config = config
        #: The providers new runs use, and those a reload replaced until their last run ends.
        #: Those open_runtime built (``owns_providers``) belong to the runtime, which closes
        #: them; given ones to the caller.
        self._provider_sets = ProviderSets(providers, owned=owns_providers)
        #: The hosts the runtime is served on (see :meth:`exposed_on`).
        self._hosts: list[str] = []
        #: Counts the reloads that changed the credential clients must present.
        self.credentials_generation = 0
        #: Set (and replaced) when it changes.
        self._credentials_changed = trio.Event()
        #: The auth settings in the config file, by the file's (inode, mtime, size).
        self._file_auth: tuple[tuple[int, int, int], AuthConfig | None] | None = None
        self._chains, self._agent_tools = self._derive(config, self.providers)

    def _progress(self) -> dict[str, int]:
        """The text each local run produced so far (the cluster registry's, at each beat)."""
        return {run.run_id: run.text_chars for run in self.active_runs.running()}

    def _abort_local(self, run_id: str, reason: str) -> bool:
        """Abort a run of this instance asked for by another one; ``False`` if it is not here
        (or already aborted)."""
        run = self.active_runs.get(run_id)
        if run is None or run.abort_scope.cancel_called:
            return False
        run.abort(reason)
        return True

    @property
    def config_path(self) -> Path | None:
        """The file :meth:`reload_from_file` reads; ``None`` on the embedded default."""
        return self._config_path

    @property
    def draining(self) -> bool:
        """Whether the gateway is shutting down: no new runs are admitted, /readyz is 503."""
        return self._draining

    def begin_draining(self) -> None:
        """The gateway begins shutting down: refuse new runs (503) from now on."""
        self._draining = True

    def start_background(self, async_fn: Callable[[], Awaitable[object]]) -> None:
        """Start a task the runtime owns (a detached run): it outlives the request that started
        it and is cancelled when the runtime closes. It must handle its own errors."""
        self._background.start_soon(async_fn)

    def _derive(
        self, config: Config, providers: Mapping[str, Provider]
    ) -> tuple[dict[str, tuple[ModelTarget, ...]], dict[str, dict[str, Tool]]]:
        """The per-agent model chains and tools for ``config`` with ``providers``."""
        defaults = config.agents.defaults
        chains = {
            agent.id: model_chain(agent, config, providers) for agent in config.agents.entries
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

    async def serve_retirement(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Close the providers a reload replaced, each once its last run is over; runs until
        cancelled (:func:`open_runtime` runs it)."""
        await self._provider_sets.serve_retirement(task_status=task_status)

    async def aclose_providers(self) -> None:
        """Close every provider the runtime built that is still open (on exit)."""
        await self._provider_sets.aclose()

    async def wait_credentials_changed(self, since: int) -> None:
        """Return once :attr:`credentials_generation` is past ``since``: a reload changed the
        credential clients authenticate with."""
        while self.credentials_generation == since:
            await self._credentials_changed.wait()

    async def file_auth(self) -> AuthConfig | None:
        """The auth settings the config file holds now (what a reload would apply; ``None``
        without a file or when it is invalid). Read again only when the file changed; the file
        is looked at (and parsed: JSON5 is slow) in a worker thread, never on the event loop."""
        if self.config_path is None:
            return None
        return await trio.to_thread.run_sync(self._read_file_auth, self.config_path)

    def _read_file_auth(self, path: Path) -> AuthConfig | None:
        try:
            status = path.stat()
        except OSError:
            return None
        key = (status.st_ino, status.st_mtime_ns, status.st_size)
        cached = self._file_auth
        if cached is None or cached[0] != key:
            try:
                auth: AuthConfig | None = load_config(path).config.gateway.auth
            except ConfigError:
                auth = None
            cached = self._file_auth = (key, auth)
        return cached[1]

    def reload(self, config: Config) -> ReloadResult:
        """Apply a new, validated config to new runs; runs in progress keep what they started
        with (their providers are closed once the last of them is over). Raises
        ``ConfigError`` (the current config stays) for a config the running gateway cannot
        take: one that would serve a non-loopback host without authentication, say."""
        current = self.config
        config = keep_running_secret(current, config)
        for host in self._hosts:
            check_exposure(host, config.gateway.auth)
        built: dict[str, Provider] = {}
        try:
            providers = build_providers(config, built=built)
            chains, tools = self._derive(config, providers)
        except BaseException:
            self._provider_sets.discard(built)
            raise
        self.providers = providers
        self._provider_sets.replace(providers)
        self.config, self._chains, self._agent_tools = config, chains, tools
        defaults = config.agents.defaults
        self.admission.resize(
            max_concurrent=defaults.max_concurrent,
            max_queued=defaults.max_queued,
            lane_wait_seconds=config.session.queue_timeout_seconds,
        )
        if self.cluster is not None:
            self.cluster.resize(
                cap=defaults.cluster_max_concurrent,
                max_queued=defaults.max_queued,
                lane_wait_seconds=config.session.queue_timeout_seconds,
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
        warnings = reload_warnings(current, config)
        restart = restart_required(self._startup_config, config)
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

    async def prepare(self, request: RunRequest) -> PreparedRun:
        """Route and validate a run request; raise a request error if it cannot run.

        The prepared run holds a lease on the providers it will use (see :meth:`admit`)."""
        config, chains, all_tools = self.config, self._chains, self._agent_tools
        lease = self._provider_sets.lease()
        try:
            prepared = await self._prepare(request, config, chains, all_tools)
        except BaseException:
            lease.release()
            raise
        return replace(prepared, lease=lease)

    async def _prepare(
        self,
        request: RunRequest,
        config: Config,
        chains: Mapping[str, tuple[ModelTarget, ...]],
        all_tools: Mapping[str, dict[str, Tool]],
    ) -> PreparedRun:
        defaults = config.agents.defaults
        target = resolve_target(config, request)
        agent = target.agent
        chain = check_image_input(request.messages, chains[agent.id], agent.id)
        messages = await fetch_remote_images(request.messages, config)
        instructions, conversation = split_messages(messages)
        if not target.stateless and not target.fresh and self.cluster is None:
            # (In PostgreSQL mode the session is read once, under its lane: see admit.)
            session = await self.sessions.get(target.session_key)
            if session is not None and session.agent_id.lower() != agent.id.lower():
                raise session_mismatch()
            if session is not None:  # (the run checks again, under the session's lane)
                check_session_images(session.transcript, conversation, config)
        agent_tools = all_tools[agent.id]
        client_tools = tuple(request.client_tools)
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
        if system_prompt:
            instructions.insert(0, Message("system", system_prompt))
        model_request = ModelRequest(
            model="",  # each link of the chain sets its own
            messages=(),
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=tuple(request.stop),
            tools=(*(tool.spec for tool in agent_tools.values()), *client_tools),
            tool_choice=request.tool_choice,
        )
        return PreparedRun(
            run_id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            target=target,
            chain=chain,
            instructions=tuple(instructions),
            conversation=tuple(conversation),
            agent_tools=agent_tools,
            client_tools=client_tools,
            request=model_request,
            timeout_seconds=agent.timeout_seconds or defaults.timeout_seconds,
            max_tool_iterations=agent.max_tool_iterations or defaults.max_tool_iterations,
            record=not target.stateless or config.session.persist_stateless,
            source=request.source,
            idempotency_key=request.idempotency_key,
            continue_at=request.continue_at,
            limits=OutputLimits(
                max_output_chars=defaults.max_output_chars,
                max_calls_per_turn=config.tools.max_calls_per_turn,
                max_argument_chars=config.tools.max_argument_chars,
            ),
        )

    async def admit(self, prepared: PreparedRun) -> AdmittedRun:
        """Wait for the session's lane and a run slot; raise 409/429 errors when refused, and
        503 once the gateway is draining for shutdown (in PostgreSQL mode, the lane and the
        cluster cap are shared by every instance: see
        :mod:`~trio_gateway.agent.shared_admission`). The admitted run is the only way to
        start the run; releasing it releases the prepared run's lease on its providers too (so
        does the end of the run); a refusal releases the lease at once. A prepared run with an
        idempotency key is findable by that key from now on."""
        lease = prepared.lease
        lane: HeldLane | None = None
        on_result: Callable[[RunResult], None] | None = None
        try:
            if self.draining:
                raise DrainingError(
                    "The gateway is shutting down and starts no new runs; retry shortly.",
                    retry_after=1,
                )
            if self.cluster is not None:
                shared = await admit_shared(prepared, self.cluster, self.admission, self.sessions)
                ticket, lane, on_result = shared.ticket, shared.lane, shared.finished
            else:
                ticket = await self.admission.admit(prepared.target.session_key)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        if lease is not None:
            ticket.on_release = _then(ticket.on_release, lease.release)
        if prepared.idempotency_key is not None:
            self.active_runs.remember_idempotency_key(prepared.idempotency_key, prepared.run_id)
        return AdmittedRun(
            prepared,
            ticket,
            loop=RunLoop(self.sessions, self.config, self.state_dir),
            active_runs=self.active_runs,
            retention=lambda: finished_runs_retention(self.config),
            draining=lambda: self.draining,
            lane=lane,
            on_result=on_result,
        )


def _then(first: Callable[[], None] | None, second: Callable[[], None]) -> Callable[[], None]:
    """``second`` after ``first`` (if any): what a ticket's release does besides its own."""
    if first is None:
        return second

    def both() -> None:
        first()
        second()

    return both


def _export_queue_depth(admission: Admission) -> None:
    stats = admission.statistics()
    metrics.QUEUE_DEPTH.labels("slots").set(stats.queued)
    metrics.QUEUE_DEPTH.labels("sessions").set(stats.waiting_for_session)


@asynccontextmanager
async def open_runtime(
    config: Config,
    *,
    state_dir: Path,
    config_path: Path | None = None,
    providers: Mapping[str, Provider] | None = None,
    sessions: SessionStore | None = None,
    tools: ToolRegistry | None = None,
) -> AsyncIterator[AgentRuntime]:
    """The runtime for ``config``, closed on exit: its background tasks (detached runs)
    cancelled, the session store it opened flushed and closed, the providers it built closed
    (those a reload replaced too). ``config_path`` is the file
    :meth:`AgentRuntime.reload_from_file` reads.

    Without ``sessions`` the configured store is opened (under ``state_dir``); without
    ``providers`` the configured ones are built. What the caller passes stays the caller's to
    close. ``state_dir`` also holds the agents' tool workspaces."""
    async with AsyncExitStack() as stack:
        database: Database | None = None
        if sessions is None:
            sessions = await stack.enter_async_context(
                open_session_store(config.session, state_dir)
            )
            # PostgreSQL mode: the store's pool (migrated) serves the cluster too, one pool
            # per process.
            if isinstance(sessions, PostgresSessionStore):
                database = sessions.database
        if config.session.store == "postgres" and database is None:
            # A store of the caller's own (tests): the cluster opens the database itself.
            postgres = config.session.postgres
            if not postgres.dsn:
                raise ConfigError('session.store is "postgres" but session.postgres.dsn is unset.')
            database = await stack.enter_async_context(
                open_database(postgres.dsn, pool_size=postgres.pool_size)
            )
            await database.run(migrate, cancellable=False)
        runtime: AgentRuntime | None = None
        owns_providers = providers is None
        built: dict[str, Provider] = {}
        try:
            if providers is None:
                providers = build_providers(config, built=built)
            async with trio.open_nursery() as nursery:
                runtime = AgentRuntime(
                    config,
                    background=nursery,
                    providers=providers,
                    owns_providers=owns_providers,
                    sessions=sessions,
                    tools=tools,
                    state_dir=state_dir,
                    config_path=config_path,
                    database=database,
                )
                await nursery.start(runtime.serve_retirement)
                if runtime.cluster is not None:
                    await nursery.start(runtime.cluster.serve)
                try:
                    yield runtime
                finally:
                    nursery.cancel_scope.cancel(reason="the runtime is closing")
        finally:
            if runtime is not None:
                if runtime.cluster is not None:
                    await runtime.cluster.close()  # shielded and bounded
                await runtime.aclose_providers()  # shielded and bounded
            else:  # building failed part way, or the runtime did: close what was built
                await close_providers(built)  # shielded and bounded
