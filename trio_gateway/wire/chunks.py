"""Encoding chat completion answers: the whole ``chat.completion`` object and streamed chunks.

A stream's ``id``, ``created`` and ``model`` never change, so :class:`ChunkEncoder` renders the
invariant JSON around them once and per token only encodes the delta text (msgspec escapes it)
between two prebuilt byte strings. No dict is built per token. Every chunk it returns is already
framed as an SSE ``data:`` event.
"""

from __future__ import annotations

import msgspec

from .sse import encode_data

__all__ = [
    "ChatCompletion",
    "ChunkEncoder",
    "FunctionCallOut",
    "ToolCallOut",
    "Usage",
    "encode_completion",
    "server_timing",
    "timing_extension",
]

_encode = msgspec.json.encode


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


class FunctionCallOut(msgspec.Struct, frozen=True):
    name: str
    arguments: str


class ToolCallOut(msgspec.Struct, frozen=True):
    """A tool call in a response: ``{"id", "type": "function", "function": {...}}``."""

    id: str
    function: FunctionCallOut
    type: str = "function"


class _AssistantMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    role: str
    content: str | None
    refusal: None
    tool_calls: list[ToolCallOut] | None = None
    #: The model's reasoning, when the upstream shows it (a common extension of the API).
    reasoning_content: str | None = None


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
    tool_calls: list[ToolCallOut] | None = None,
    reasoning: str | None = None,
) -> bytes:
    """Render a full ``chat.completion`` JSON object.

    With ``tool_calls`` and no text, ``content`` is ``null`` (as OpenAI sends it).
    """
    message = _AssistantMessage(
        "assistant",
        None if tool_calls and not content else content,
        None,
        tool_calls=tool_calls or None,
        reasoning_content=reasoning or None,
    )
    completion = ChatCompletion(
        id=completion_id,
        created=created,
        model=model,
        choices=[_Choice(0, message, finish_reason)],
        usage=usage,
    )
    return _encode(completion)


class _FunctionDelta(msgspec.Struct, frozen=True, omit_defaults=True):
    arguments: str
    name: str | None = None


class _ToolCallDelta(msgspec.Struct, frozen=True, omit_defaults=True):
    index: int
    id: str | None = None
    type: str | None = None
    function: _FunctionDelta | None = None


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

    def reasoning(self, text: str) -> bytes:
        """One reasoning delta (``reasoning_content``, as vLLM, DeepSeek and others send it)."""
        return self._choice_head + b'{"reasoning_content":' + _encode(text) + self._content_tail

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        """One piece of a tool call: the first piece of a call carries its id and name."""
        delta = _ToolCallDelta(
            index,
            call_id,
            "function" if call_id is not None else None,
            _FunctionDelta(arguments, name),
        )
        return self._choice_head + b'{"tool_calls":[' + _encode(delta) + b"]" + self._content_tail

    def finish(self, finish_reason: str) -> bytes:
        """The chunk that carries the choice's ``finish_reason`` (an empty delta)."""
        return (
            self._choice_head
            + b'{},"logprobs":null,"finish_reason":'
            + _encode(finish_reason)
            + b"}]}\n\n"
        )

    def usage(self, usage: Usage, extension: object = None) -> bytes:
        """The usage chunk sent when ``stream_options.include_usage`` is true (no choices).

        ``extension``, when given, is added as an ``"epiloop"`` object: stock OpenAI clients
        ignore fields they do not know.
        """
        extra = b"" if extension is None else b',"epiloop":' + _encode(extension)
        return encode_data(self._head + b'],"usage":' + _encode(usage) + extra + b"}")


def server_timing(*, queue: float, upstream: float, tools: float, gateway: float) -> str:
    """A ``Server-Timing`` header value (durations given in seconds, sent in milliseconds)."""
    parts = (("queue", queue), ("upstream", upstream), ("tool", tools), ("gateway", gateway))
    return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in parts)


def timing_extension(*, queue: float, upstream: float, tools: float, gateway: float) -> object:
    """The same figures for the ``epiloop`` object of a stream's usage chunk (milliseconds)."""
    return {
        "timing": {
            "queue_ms": round(queue * 1000, 1),
            "upstream_ms": round(upstream * 1000, 1),
            "tool_ms": round(tools * 1000, 1),
            "gateway_ms": round(gateway * 1000, 1),
        }
    }
