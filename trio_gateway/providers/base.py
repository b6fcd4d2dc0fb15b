"""The provider protocol and the values that cross it.

A provider streams one model call: it awaits ``emit`` for every :class:`TextDelta`,
:class:`ReasoningDelta` and :class:`ToolCallDelta` as they arrive (so a slow consumer slows it
down), and returns a :class:`Completion` with the stop reason, the usage, and the complete tool
calls it assembled. It raises :class:`~trio_gateway.errors.UpstreamError` for upstream faults,
with ``retryable`` set when the same call may succeed later, and stops promptly when cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..messages import Message, ToolCall, ToolSpec

__all__ = [
    "Completion",
    "Emit",
    "FinishReason",
    "ModelEvent",
    "ModelMessage",
    "ModelRequest",
    "Provider",
    "ReasoningDelta",
    "TextDelta",
    "TokenUsage",
    "ToolCallDelta",
]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]

#: The provider layer's name for a conversation message.
ModelMessage = Message


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """What a provider is asked to complete."""

    model: str
    messages: Sequence[Message]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    tools: Sequence[ToolSpec] = ()
    #: OpenAI's ``tool_choice`` (``"auto"``, ``"none"``, ``"required"`` or a function object).
    tool_choice: str | Mapping[str, object] | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of assistant text, in the order it was produced."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's reasoning (``reasoning_content`` / thinking), when it shows it."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call. The first piece of call ``index`` carries its ``id`` and ``name``;
    later pieces add to its ``arguments`` text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


ModelEvent = TextDelta | ReasoningDelta | ToolCallDelta


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """How a provider call ended."""

    finish_reason: FinishReason
    usage: TokenUsage = field(default_factory=TokenUsage)
    tool_calls: tuple[ToolCall, ...] = ()


Emit = Callable[[ModelEvent], Awaitable[None]]


class Provider(Protocol):
    """An upstream model. ``stream`` must stop promptly when cancelled."""

    async def stream(self, request: ModelRequest, emit: Emit) -> Completion: ...
