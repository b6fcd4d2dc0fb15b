"""Building the model input: the agent's system prompt, the request's system and developer
messages, then the conversation, each as a structured message (never flattened into one string).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..messages import Message, ToolCall

__all__ = ["close_tool_calls", "split_messages"]

_INSTRUCTION_ROLES = frozenset({"system", "developer"})


def split_messages(messages: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """The request's instructions (system and developer messages) and its conversation."""
    instructions = [message for message in messages if message.role in _INSTRUCTION_ROLES]
    if not instructions:
        return instructions, list(messages)
    conversation = [message for message in messages if message.role not in _INSTRUCTION_ROLES]
    return instructions, conversation


def close_tool_calls(messages: Sequence[Message]) -> list[Message]:
    """The messages with a result for every tool call (upstreams refuse a call left open).

    A call can be left without a result when a client ends a turn on a client tool call and
    then sends a new message instead of the result; it gets an error result right after the
    results the call's turn does have.
    """
    closed: list[Message] = []
    open_calls: list[ToolCall] = []

    def close_open() -> None:
        closed.extend(
            Message(
                "tool",
                "Error: no result was provided for this tool call.",
                name=call.name,
                tool_call_id=call.id,
            )
            for call in open_calls
        )
        open_calls.clear()

    for message in messages:
        if message.role == "tool":
            open_calls[:] = [c for c in open_calls if c.id != message.tool_call_id]
        else:
            close_open()
        closed.append(message)
        if message.tool_calls:
            open_calls.extend(message.tool_calls)
    close_open()
    return closed
