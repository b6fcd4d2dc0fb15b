"""A prepared run: what the runtime's ``prepare`` checked and settled up front, and the bounds
on what its model may send. Plain data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from ..errors import InvalidRequestError, ProviderError
from ..messages import Message, ToolSpec
from ..providers.base import ModelRequest
from ..providers.registry import ProviderLease
from ..tools import Tool
from .events import RunEvent
from .failover import ModelTarget
from .routing import RunTarget

__all__ = ["EmitEvent", "OutputLimits", "PreparedRun", "session_mismatch"]

#: How a run reports its events: awaited, so a slow consumer slows the run.
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
    #: Which transport started the run (its listing's ``source`` and its metrics label).
    source: str = "http"
    #: A retry with this key follows this run instead of starting another (once admitted).
    idempotency_key: str | None = None
    #: The run's use of the providers in ``chain``, released when the run (or its admission
    #: ticket) ends: a reload closes the providers it replaced only once every lease is gone.
    lease: ProviderLease | None = None
    #: Continue the session after this many stored entries, appending the conversation as is
    #: (see :attr:`~trio_gateway.agent.request.RunRequest.continue_at`).
    continue_at: int | None = None

    @property
    def model_ref(self) -> str:
        return self.chain[0].ref


def session_mismatch() -> InvalidRequestError:
    return InvalidRequestError(
        "This session key belongs to another agent; a session can only be used with the agent "
        "that created it.",
        param="x-epiloop-session-key",
        code="session_agent_mismatch",
    )
