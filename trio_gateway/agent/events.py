"""The typed events an agent run emits, in order.

``RunStarted``; then, for each model call, ``TextDelta`` / ``ReasoningDelta`` pieces (shared with
the providers: passed through untouched on the hot path) and ``ToolCallDelta`` pieces of calls
to *client* tools (re-numbered from 0 across the run); ``ToolStarted`` / ``ToolFinished`` around
each agent tool the gateway runs itself; finally exactly one of ``RunFinished`` (the stop reason
and the usage summed over every model call) or ``RunFailed``. A cancelled run emits no final
event: its consumer is gone or is the one that cancelled it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import GatewayError
from ..messages import ToolCall
from ..providers.base import FinishReason, ReasoningDelta, TextDelta, TokenUsage, ToolCallDelta
from ..sessions.store import RunStatus

__all__ = [
    "ReasoningDelta",
    "RunEvent",
    "RunFailed",
    "RunFinished",
    "RunResult",
    "RunStarted",
    "RunTimings",
    "TextDelta",
    "ToolCallDelta",
    "ToolFinished",
    "ToolStarted",
]


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_id: str
    agent_id: str
    session_key: str
    model: str


@dataclass(frozen=True, slots=True)
class ToolStarted:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolFinished:
    call_id: str
    name: str
    ok: bool
    #: What goes back to the model (the tool's output, or its error message).
    result: str


@dataclass(frozen=True, slots=True)
class RunTimings:
    """Where a run's time went, in seconds: waiting for the model, running agent tools, and
    the rest (the gateway's own work, and waiting for a slow client)."""

    upstream: float = 0.0
    tools: float = 0.0
    total: float = 0.0
    #: From the start of the run to its first text, if there was any.
    first_text: float | None = None

    @property
    def gateway(self) -> float:
        return max(0.0, self.total - self.upstream - self.tools)


@dataclass(frozen=True, slots=True)
class RunFinished:
    finish_reason: FinishReason
    usage: TokenUsage
    timings: RunTimings = RunTimings()


@dataclass(frozen=True, slots=True)
class RunFailed:
    error: GatewayError
    #: The tokens the run used before it failed or was aborted (partial output is not free).
    usage: TokenUsage = field(default_factory=TokenUsage)


RunEvent = (
    RunStarted
    | TextDelta
    | ReasoningDelta
    | ToolCallDelta
    | ToolStarted
    | ToolFinished
    | RunFinished
    | RunFailed
)


@dataclass(frozen=True, slots=True)
class RunResult:
    status: RunStatus
    #: All the assistant text the run produced (what a streaming client received).
    text: str
    finish_reason: FinishReason | None
    usage: TokenUsage
    error: GatewayError | None = None
    #: The client tool calls the run ended with (``finish_reason == "tool_calls"``).
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""
    timings: RunTimings = RunTimings()
    #: The text (and tool calls) were dropped when the run's result was kept after it finished.
    text_dropped: bool = False
    #: How many entries the session's transcript held once this run's turn was stored
    #: (``None``: not stored).
    session_position: int | None = None
