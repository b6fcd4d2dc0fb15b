"""The control plane's methods that answer from the gateway's state (protocol:
docs/control-protocol.md): ``health``, ``status``, ``agents.list``, ``models.list``,
``sessions.*`` and ``config.*``. Each is a function of the runtime and its method's params
struct, returning its result struct (both from ``wire.control``). The methods that start and
follow runs live with the connection, in ``control.py``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import msgspec
import trio

from ..agent import AgentRuntime
from ..agent.routing import select_agent
from ..config import redacted
from ..errors import ConfigError, GatewayError, NotFoundError
from ..sessions.store import SessionInfo
from ..wire.control import (
    AdmissionInfo,
    AgentInfo,
    AgentsListResult,
    DeleteResult,
    HealthResult,
    ModelInfo,
    ModelsListResult,
    NoParams,
    ReloadResult,
    ResetResult,
    RunInfo,
    SessionDetail,
    SessionKeyParams,
    SessionsListParams,
    SessionsListResult,
    SessionSummary,
    StatusResult,
    ToolCallInfo,
    TranscriptEntry,
)

__all__ = ["Handler", "abort_session_everywhere", "state_handlers"]

#: A method's handler: its params struct in, its result out.
Handler = Callable[[Any], Awaitable[object]]


class _InvalidConfig(GatewayError):
    code = "invalid_config"


def _session_summary(info: SessionInfo) -> SessionSummary:
    return SessionSummary(
        key=info.key,
        agent_id=info.agent_id,
        created_at=info.created_at,
        updated_at=info.updated_at,
        model=info.model,
        last_status=info.last_status,
        last_run_id=info.last_run_id,
        message_count=info.message_count,
        prompt_tokens=info.prompt_tokens,
        completion_tokens=info.completion_tokens,
    )


async def health(runtime: AgentRuntime, params: NoParams) -> HealthResult:
    await trio.lowlevel.checkpoint()
    return HealthResult(ok=True, uptime_seconds=round(time.time() - runtime.started_at, 3))


async def status(runtime: AgentRuntime, params: NoParams) -> StatusResult:
    await trio.lowlevel.checkpoint()
    now = time.time()
    runs = [
        RunInfo(
            run_id=run.run_id,
            agent_id=run.agent_id,
            session_key=run.session_key,
            source=run.source,
            started_at=run.started_at,
            age_seconds=round(now - run.started_at, 3),
            text_chars=run.text_chars,
            # Text deltas received so far (pieces of text as the upstream sent them; not tokens):
            # see the status method in docs/control-protocol.md.
            deltas=len(run.parts),
            instance_id=runtime.instance_id,
        )
        for run in runtime.active_runs.running()
    ]
    if runtime.cluster is not None:
        # Every live run of every instance; this instance's own with their text of now.
        local = {run.run_id for run in runs}
        runs += [
            RunInfo(
                run_id=run.run_id,
                agent_id=run.agent_id,
                session_key=run.session_key,
                source=run.source,
                started_at=run.started_at,
                age_seconds=round(run.age_seconds, 3),
                text_chars=run.text_chars,
                deltas=None,
                instance_id=run.instance_id,
                state=run.state,
            )
            for run in await runtime.cluster.live_runs()
            if run.run_id not in local
        ]
    stats = runtime.admission.statistics()
    admission = AdmissionInfo(
        running=stats.running,
        queued=stats.queued,
        busy_sessions=stats.busy_sessions,
        waiting_for_session=stats.waiting_for_session,
    )
    return StatusResult(
        round(now - runtime.started_at, 3), runs, admission, instance_id=runtime.instance_id
    )


async def agents_list(runtime: AgentRuntime, params: NoParams) -> AgentsListResult:
    await trio.lowlevel.checkpoint()
    config = runtime.config
    default_model = config.agents.defaults.model
    default = select_agent(config, header_agent_id=None, model="epiloop")
    agents = [
        AgentInfo(
            id=agent.id,
            name=agent.name or agent.id,
            model=agent.model or default_model,
            default=agent.id == default.id,
        )
        for agent in config.agents.entries
    ]
    return AgentsListResult(agents)


async def models_list(runtime: AgentRuntime, params: NoParams) -> ModelsListResult:
    await trio.lowlevel.checkpoint()
    entries = runtime.config.agents.entries
    return ModelsListResult([ModelInfo(f"epiloop:{a.id}") for a in entries])


async def sessions_list(runtime: AgentRuntime, query: SessionsListParams) -> SessionsListResult:
    sessions = await runtime.sessions.list_sessions(agent_id=query.agent_id, limit=query.limit)
    return SessionsListResult([_session_summary(info) for info in sessions])


async def sessions_get(runtime: AgentRuntime, params: SessionKeyParams) -> SessionDetail:
    key = params.key
    session = await runtime.sessions.get(key)
    if session is None:
        raise NotFoundError(f"No session {key!r}.")
    transcript = [
        TranscriptEntry(
            role=entry.role,
            content=entry.content,
            status=entry.status,
            internal=entry.internal,
            tool_calls=[ToolCallInfo(c.id, c.name, c.arguments) for c in entry.tool_calls],
            tool_call_id=entry.tool_call_id or None,
        )
        for entry in session.transcript
    ]
    summary = msgspec.structs.asdict(_session_summary(session))
    return SessionDetail(**summary, transcript=transcript)


async def abort_session_everywhere(runtime: AgentRuntime, session_key: str) -> list[str]:
    """Abort the session's runs on this instance and (PostgreSQL mode) on every other one."""
    aborted = runtime.active_runs.abort_session(session_key)
    if runtime.cluster is not None:
        aborted += await runtime.cluster.request_session_abort(session_key, "agent.abort")
    return aborted


async def sessions_reset(runtime: AgentRuntime, params: SessionKeyParams) -> ResetResult:
    if runtime.cluster is not None:
        # Shared sessions: a run elsewhere must not write into the session reset under it.
        await abort_session_everywhere(runtime, params.key)
    if not await runtime.sessions.reset(params.key):
        raise NotFoundError(f"No session {params.key!r}.")
    return ResetResult(reset=True)


async def sessions_delete(runtime: AgentRuntime, params: SessionKeyParams) -> DeleteResult:
    if runtime.cluster is not None:
        await abort_session_everywhere(runtime, params.key)
    if not await runtime.sessions.delete(params.key):
        raise NotFoundError(f"No session {params.key!r}.")
    return DeleteResult(deleted=True)


async def config_reload(runtime: AgentRuntime, params: NoParams) -> ReloadResult:
    await trio.lowlevel.checkpoint()
    try:
        result = runtime.reload_from_file()
    except ConfigError as exc:
        raise _InvalidConfig(f"config not reloaded, the running config stays: {exc}") from exc
    return ReloadResult(
        reloaded=True,
        source=str(runtime.config_path),
        warnings=result.warnings,
        restart_required=result.restart_required,
    )


async def config_get(runtime: AgentRuntime, params: NoParams) -> dict[str, object]:
    await trio.lowlevel.checkpoint()
    return redacted(runtime.config)


def state_handlers(runtime: AgentRuntime) -> dict[str, Handler]:
    """This module's methods, by name, bound to ``runtime``."""
    methods: dict[str, Callable[[AgentRuntime, Any], Awaitable[object]]] = {
        "health": health,
        "status": status,
        "agents.list": agents_list,
        "models.list": models_list,
        "sessions.list": sessions_list,
        "sessions.get": sessions_get,
        "sessions.reset": sessions_reset,
        "sessions.delete": sessions_delete,
        "config.get": config_get,
        "config.reload": config_reload,
    }
    return {name: partial(method, runtime) for name, method in methods.items()}
