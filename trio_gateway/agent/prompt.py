"""Building the model input: the agent's system prompt, the request's system and developer
messages, then the conversation, each as a structured message (never flattened into one string).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..providers.base import ModelMessage
from ..wire.chat import (
    AssistantMessage,
    DeveloperMessage,
    Message,
    Role,
    SystemMessage,
    ToolMessage,
    UserMessage,
    message_text,
)

__all__ = ["build_messages", "to_model_message"]


_ROLES: Mapping[type, Role] = {
    SystemMessage: "system",
    DeveloperMessage: "developer",
    UserMessage: "user",
    AssistantMessage: "assistant",
    ToolMessage: "tool",
}


def to_model_message(message: Message) -> ModelMessage:
    if isinstance(message, ToolMessage):
        return ModelMessage("tool", message_text(message), tool_call_id=message.tool_call_id)
    return ModelMessage(_ROLES[type(message)], message_text(message), name=message.name)


def build_messages(system_prompt: str | None, messages: Sequence[Message]) -> list[ModelMessage]:
    instructions = [m for m in messages if isinstance(m, SystemMessage | DeveloperMessage)]
    conversation = [m for m in messages if not isinstance(m, SystemMessage | DeveloperMessage)]
    built = [ModelMessage("system", system_prompt)] if system_prompt else []
    built.extend(to_model_message(m) for m in instructions)
    built.extend(to_model_message(m) for m in conversation)
    return built
