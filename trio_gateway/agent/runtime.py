"""The agent run: one code path for every transport.

``AgentRuntime.prepare`` resolves the agent and session, builds the model input and checks
everything that can be checked before the run starts, raising request errors the transport can
still answer with a real status. ``AgentRuntime.run`` then calls the agent's provider under the
run deadline and emits :mod:`events <trio_gateway.agent.events>` through an ``emit`` callback the
transport supplies (awaited, so a slow consumer slows the run instead of growing a buffer).

A run that fails emits ``RunFailed`` and returns a failed :class:`RunResult`; it does not raise.
A run that is cancelled (its client went away) records the partial reply as aborted and lets
``trio.Cancelled`` propagate. Stable sessions get every turn recorded, whatever the outcome.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import trio

from ..config import Config
from ..errors import (
    GatewayError,
    InvalidRequestError,
    ProviderError,
    RunTimeoutError,
)
from ..providers import build_providers
from ..providers.base import (
    Completion,
    FinishReason,
    ModelEvent,
    ModelRequest,
    Provider,
    TextDelta,
    TokenUsage,
)
from ..sessions import MemorySessionStore, SessionStore, TranscriptEntry, Turn
from ..sessions.store import RunStatus
from ..wire.chat import AssistantMessage, ChatRequest, DeveloperMessage, SystemMessage
from .events import RunEvent, RunFailed, RunFinished, RunStarted
from .prompt import build_messages, to_model_message
from .routing import RunTarget, resolve_target

__all__ = ["AgentRuntime", "PreparedRun", "RunResult"]

logger = logging.getLogger(__name__)

#: How long recording a turn may take once the run is over (it runs shielded from cancellation).
RECORD_BOUND_SECONDS = 5.0

EmitEvent = Callable[[RunEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """A run that passed every check and is ready to start."""

    run_id: str
    created: int
    target: RunTarget
    model_ref: str
    provider: Provider
    request: ModelRequest
    #: The request's new messages, recorded in the session with the reply.
    new_messages: tuple[TranscriptEntry, ...]
    timeout_seconds: float


@dataclass(frozen=True, slots=True)
class RunResult:
    status: RunStatus
    text: str
    finish_reason: FinishReason | None
    usage: TokenUsage
    error: GatewayError | None = None


class AgentRuntime:
    """The configured agents, their providers and the session store."""

    def __init__(
        self,
        config: Config,
        *,
        providers: Mapping[str, Provider] | None = None,
        sessions: SessionStore | None = None,
    ) -> None:
        self.config = config
        self.providers: Mapping[str, Provider] = (
            providers if providers is not None else build_providers(config)
        )
        self.sessions: SessionStore = sessions if sessions is not None else MemorySessionStore()

    async def prepare(
        self,
        chat: ChatRequest,
        *,
        header_agent_id: str | None = None,
        header_session_key: str | None = None,
    ) -> PreparedRun:
        """Route and validate a chat request; raise a request error if it cannot run."""
        config = self.config
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
                raise InvalidRequestError(
                    "This session key belongs to another agent; a session can only be used "
                    "with the agent that created it.",
                    param="x-epiloop-session-key",
                    code="session_agent_mismatch",
                )
        model_ref = agent.model or config.agents.defaults.model
        provider_name, _, model = model_ref.partition("/")
        provider = self.providers.get(provider_name)
        if provider is None:  # the config check makes this unreachable for loaded configs
            raise ProviderError(f"No provider named {provider_name!r} is available.")
        system_prompt = agent.system_prompt
        if system_prompt is None:
            system_prompt = config.agents.defaults.system_prompt
        stop = chat.stop
        request = ModelRequest(
            model=model,
            messages=build_messages(system_prompt, chat.messages),
            max_tokens=chat.token_limit,
            temperature=chat.temperature,
            top_p=chat.top_p,
            stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        )
        return PreparedRun(
            run_id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            target=target,
            model_ref=model_ref,
            provider=provider,
            request=request,
            new_messages=_new_messages(chat),
            timeout_seconds=agent.timeout_seconds or config.agents.defaults.timeout_seconds,
        )

    async def run(self, prepared: PreparedRun, emit: EmitEvent) -> RunResult:
        """Run the agent, emitting events; see the module docstring for the outcomes."""
        target = prepared.target
        parts: list[str] = []

        async def emit_delta(delta: ModelEvent) -> None:
            if isinstance(delta, TextDelta):
                parts.append(delta.text)
                await emit(delta)

        logger.debug(
            "run.started run_id=%s agent=%s model=%s",
            prepared.run_id,
            target.agent.id,
            prepared.model_ref,
        )
        started = time.monotonic()
        await emit(
            RunStarted(prepared.run_id, target.agent.id, target.session_key, prepared.model_ref)
        )
        completion: Completion | None = None
        error: GatewayError | None = None
        try:
            completion = await self._call_provider(prepared, emit_delta)
        except GatewayError as exc:
            error = exc
        except BaseException:
            await self._record(prepared, "aborted", "".join(parts), TokenUsage())
            logger.info(
                "run.cancelled run_id=%s agent=%s duration_ms=%.1f",
                prepared.run_id,
                target.agent.id,
                (time.monotonic() - started) * 1000,
            )
            raise
        text = "".join(parts)
        duration_ms = (time.monotonic() - started) * 1000
        if completion is None:
            assert error is not None
            await self._record(prepared, "failed", text, TokenUsage())
            logger.info(
                "run.failed run_id=%s agent=%s error=%s duration_ms=%.1f",
                prepared.run_id,
                target.agent.id,
                error.code,
                duration_ms,
            )
            await emit(RunFailed(error))
            return RunResult("failed", text, None, TokenUsage(), error)
        await self._record(prepared, "completed", text, completion.usage)
        logger.info(
            "run.complete run_id=%s agent=%s finish_reason=%s tokens=%d duration_ms=%.1f",
            prepared.run_id,
            target.agent.id,
            completion.finish_reason,
            completion.usage.total_tokens,
            duration_ms,
        )
        await emit(RunFinished(completion.finish_reason, completion.usage))
        return RunResult("completed", text, completion.finish_reason, completion.usage)

    async def _call_provider(
        self, prepared: PreparedRun, emit_delta: Callable[[ModelEvent], Awaitable[None]]
    ) -> Completion:
        """The provider call under the run deadline, with foreign errors translated."""
        try:
            with trio.fail_after(prepared.timeout_seconds):
                return await prepared.provider.stream(prepared.request, emit_delta)
        except trio.TooSlowError as exc:
            raise RunTimeoutError(
                f"The agent run did not finish within {prepared.timeout_seconds:g} seconds "
                "(timeoutSeconds)."
            ) from exc
        except GatewayError:
            raise
        except Exception as exc:
            # A provider bug, not an upstream answer: keep the details in the log only.
            logger.exception("provider.failed run_id=%s", prepared.run_id)
            raise ProviderError("The model provider failed unexpectedly.") from exc

    async def _record(
        self, prepared: PreparedRun, status: RunStatus, text: str, usage: TokenUsage
    ) -> None:
        """Store the turn of a stable session; shielded, so a cancelled run is recorded too."""
        if prepared.target.stateless:
            return
        turn = Turn(
            run_id=prepared.run_id,
            agent_id=prepared.target.agent.id,
            model=prepared.model_ref,
            entries=(*prepared.new_messages, TranscriptEntry("assistant", text, status)),
            status=status,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            at=time.time(),
        )
        with trio.move_on_after(RECORD_BOUND_SECONDS, shield=True) as scope:
            await self.sessions.record_turn(prepared.target.session_key, turn)
        if scope.cancelled_caught:
            logger.error("session.record.failed run_id=%s reason=timeout", prepared.run_id)


def _new_messages(chat: ChatRequest) -> tuple[TranscriptEntry, ...]:
    """The messages of this turn: everything after the last assistant message.

    An OpenAI client resends the whole conversation each time; what follows the last assistant
    message is what is new. (System and developer messages are instructions, not transcript.)
    """
    messages = chat.messages
    start = 0
    for index, message in enumerate(messages):
        if isinstance(message, AssistantMessage):
            start = index + 1
    converted = (
        to_model_message(message)
        for message in messages[start:]
        if not isinstance(message, SystemMessage | DeveloperMessage)
    )
    return tuple(TranscriptEntry(message.role, message.content) for message in converted)
