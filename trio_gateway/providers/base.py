"""The provider protocol and the values that cross it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..wire.chat import Role, Tool

__all__ = [
    "Completion",
    "Emit",
    "FinishReason",
    "ModelMessage",
    "ModelRequest",
    "Provider",
    "TextDelta",
    "TokenUsage",
]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True, slots=True)
class ModelMessage:
    """One message of the model input, in order (system prompts first)."""

    role: Role
    content: str
    name: str | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """What a provider is asked to complete."""

    model: str
    messages: Sequence[ModelMessage]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    tools: Sequence[Tool] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of assistant text, in the order it was produced."""

    text: str


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


Emit = Callable[[TextDelta], Awaitable[None]]


class Provider(Protocol):
    """An upstream model. ``stream`` must stop promptly when cancelled.

    It raises :class:`~trio_gateway.errors.ProviderError` (or a subclass) for upstream faults.
    """

    async def stream(self, request: ModelRequest, emit: Emit) -> Completion: ...
