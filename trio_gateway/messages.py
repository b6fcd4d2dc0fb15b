"""The conversation values every layer shares: messages, tool calls, tool specs.

Plain frozen dataclasses with no behaviour, below everything but ``errors``: the wire parser
produces them, providers consume them, sessions store them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["Message", "Role", "ToolCall", "ToolSpec"]

Role = Literal["system", "developer", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call as the model made it; ``arguments`` is the model's JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as offered to the model: ``parameters`` is a JSON schema object."""

    name: str
    description: str
    parameters: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation, in order."""

    role: Role
    content: str
    name: str | None = None
    #: For ``role == "tool"``: the call this message answers.
    tool_call_id: str | None = None
    #: For ``role == "assistant"``: the tools it called.
    tool_calls: tuple[ToolCall, ...] = ()
