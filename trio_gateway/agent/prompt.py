"""Building the model input: the agent's system prompt, the request's system and developer
messages, then the conversation, each as a structured message (never flattened into one string).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..messages import Message, Role, ToolCall, ToolSpec
from ..wire import chat as wire

__all__ = ["client_tool_specs", "close_tool_calls", "split_request", "to_message"]

_ROLES: Mapping[type, Role] = {
    wire.SystemMessage: "system",
    wire.DeveloperMessage: "developer",
    wire.UserMessage: "user",
    wire.AssistantMessage: "assistant",
    wire.ToolMessage: "tool",
}

_EMPTY_SCHEMA: Mapping[str, object] = {"type": "object", "properties": {}}


def to_message(message: wire.Message) -> Message:
    """A wire message as the neutral :class:`~trio_gateway.messages.Message`."""
    text = wire.message_text(message)
    if isinstance(message, wire.ToolMessage):
        return Message("tool", text, tool_call_id=message.tool_call_id)
    if isinstance(message, wire.AssistantMessage) and message.tool_calls:
        calls = tuple(
            ToolCall(call.id, call.function.name, call.function.arguments)
            for call in message.tool_calls
        )
        return Message("assistant", text, name=message.name, tool_calls=calls)
    return Message(_ROLES[type(message)], text, name=message.name)


def split_request(messages: Sequence[wire.Message]) -> tuple[list[Message], list[Message]]:
    """The request's instructions (system and developer messages) and its conversation."""
    instructions: list[Message] = []
    conversation: list[Message] = []
    for message in messages:
        is_instruction = isinstance(message, wire.SystemMessage | wire.DeveloperMessage)
        (instructions if is_instruction else conversation).append(to_message(message))
    return instructions, conversation


def client_tool_specs(tools: Sequence[wire.Tool] | None) -> list[ToolSpec]:
    """The request's OpenAI ``tools`` as specs offered to the model."""
    return [
        ToolSpec(
            tool.function.name,
            tool.function.description or "",
            tool.function.parameters if tool.function.parameters is not None else _EMPTY_SCHEMA,
        )
        for tool in tools or ()
    ]


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
