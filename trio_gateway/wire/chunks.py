"""Encoding chat completion answers: the whole ``chat.completion`` object and streamed chunks.

A stream's ``id``, ``created`` and ``model`` never change, so :class:`ChunkEncoder` renders the
invariant JSON around them once and per token only encodes the delta text (msgspec escapes it)
between two prebuilt byte strings. No dict is built per token. Every chunk it returns is already
framed as an SSE ``data:`` event.
"""

from __future__ import annotations

import msgspec

from .sse import encode_data

__all__ = ["ChatCompletion", "ChunkEncoder", "Usage", "encode_completion"]

_encode = msgspec.json.encode


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


class _AssistantMessage(msgspec.Struct, frozen=True):
    content: str
    role: str = "assistant"
    refusal: None = None


class _Choice(msgspec.Struct, frozen=True):
    index: int
    message: _AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(msgspec.Struct, frozen=True):
    """The non-streaming answer (``object: "chat.completion"``)."""

    id: str
    created: int
    model: str
    choices: list[_Choice]
    usage: Usage
    object: str = "chat.completion"


def encode_completion(
    *,
    completion_id: str,
    created: int,
    model: str,
    content: str,
    finish_reason: str,
    usage: Usage,
) -> bytes:
    """Render a full ``chat.completion`` JSON object."""
    completion = ChatCompletion(
        id=completion_id,
        created=created,
        model=model,
        choices=[_Choice(0, _AssistantMessage(content), finish_reason)],
        usage=usage,
    )
    return _encode(completion)


class ChunkEncoder:
    """Renders the SSE events of one ``chat.completion.chunk`` stream."""

    __slots__ = ("_choice_head", "_content_tail", "_head")

    def __init__(self, *, completion_id: str, created: int, model: str) -> None:
        self._head = (
            b'{"id":'
            + _encode(completion_id)
            + b',"object":"chat.completion.chunk","created":'
            + _encode(created)
            + b',"model":'
            + _encode(model)
            + b',"choices":['
        )
        self._choice_head = b"data: " + self._head + b'{"index":0,"delta":'
        self._content_tail = b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def role(self) -> bytes:
        """The first chunk: the assistant role with empty content."""
        return (
            self._choice_head
            + b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def content(self, text: str) -> bytes:
        """One content delta."""
        return self._choice_head + b'{"content":' + _encode(text) + self._content_tail

    def finish(self, finish_reason: str) -> bytes:
        """The chunk that carries the choice's ``finish_reason`` (an empty delta)."""
        return (
            self._choice_head
            + b'{},"logprobs":null,"finish_reason":'
            + _encode(finish_reason)
            + b"}]}\n\n"
        )

    def usage(self, usage: Usage) -> bytes:
        """The usage chunk sent when ``stream_options.include_usage`` is true (no choices)."""
        return encode_data(self._head + b'],"usage":' + _encode(usage) + b"}")
