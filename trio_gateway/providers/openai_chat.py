"""The OpenAI-compatible Chat Completions provider (OpenAI, vLLM, Ollama, llama.cpp, ...).

Two halves. The sans-IO half maps a :class:`ModelRequest` to a request body
(:func:`encode_chat_request`) and turns the streamed chunks into model events
(:class:`ChatStreamParser`: ``delta.content`` → :class:`TextDelta`, ``delta.reasoning_content``
(or ``delta.reasoning``) → :class:`ReasoningDelta`, ``delta.tool_calls`` → :class:`ToolCallDelta`,
the last ``usage`` seen, ``finish_reason`` as is). The I/O half is
:class:`~trio_gateway.providers.upstream.UpstreamClient`.

A user message with images is sent as content parts: its text as a ``text`` part, then one
``image_url`` part per image (bytes as a base64 ``data:`` URL, a remote image as its URL, with
its ``detail``).

Compatibility choices: ``developer`` messages are sent as ``system`` and the limit as
``max_tokens`` (not every server knows ``developer`` or ``max_completion_tokens``); a stream that
made tool calls but says ``finish_reason: "stop"`` (some local servers do) ends as
``"tool_calls"``; a tool call that arrives without an ``id`` gets one.

Must not import the agent, server or tools layers.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

import httpx
import msgspec

from ..config.schema import OpenAIChatProviderConfig
from ..errors import UpstreamError
from ..messages import ToolCall
from ..wire.decoding import DECODE_ERRORS
from ..wire.images import data_url
from ..wire.sse import SSEEvent
from .base import (
    Completion,
    Emit,
    FinishReason,
    ModelEvent,
    ModelRequest,
    ReasoningDelta,
    TextDelta,
    TokenUsage,
    ToolCallDelta,
)
from .http_provider import HttpProvider
from .upstream_errors import bad_event

__all__ = ["ChatStreamParser", "OpenAIChatProvider", "encode_chat_request"]


# -- the request ------------------------------------------------------------------------------


class _FunctionCall(msgspec.Struct):
    name: str
    arguments: str


class _ToolCall(msgspec.Struct):
    id: str
    function: _FunctionCall
    type: str = "function"


class _TextPart(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class _ImageUrl(msgspec.Struct, omit_defaults=True):
    url: str
    detail: str | None = None


class _ImagePart(msgspec.Struct, tag="image_url", tag_field="type"):
    image_url: _ImageUrl


class _Message(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | list[_TextPart | _ImagePart] | None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _FunctionSpec(msgspec.Struct, omit_defaults=True):
    name: str
    parameters: dict[str, object]
    description: str | None = None


class _Tool(msgspec.Struct):
    function: _FunctionSpec
    type: str = "function"


class _StreamOptions(msgspec.Struct):
    include_usage: bool


class _ChatBody(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[_Message]
    stream: bool
    stream_options: _StreamOptions
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | dict[str, object] | None = None


_encoder = msgspec.json.Encoder()


def encode_chat_request(request: ModelRequest) -> bytes:
    """The streaming Chat Completions body for ``request``."""
    messages: list[_Message] = []
    for message in request.messages:
        if message.role == "assistant":
            calls = [
                _ToolCall(call.id, _FunctionCall(call.name, call.arguments))
                for call in message.tool_calls
            ]
            content = message.content if message.content or not calls else None
            messages.append(
                _Message("assistant", content, name=message.name, tool_calls=calls or None)
            )
        elif message.role == "tool":
            messages.append(
                _Message("tool", message.content, tool_call_id=message.tool_call_id or "")
            )
        elif message.images:
            parts: list[_TextPart | _ImagePart] = [_TextPart(message.content)]
            if not message.content:
                parts.clear()
            parts.extend(
                _ImagePart(_ImageUrl(data_url(image), image.detail)) for image in message.images
            )
            messages.append(_Message(message.role, parts, name=message.name))
        else:
            role = "system" if message.role == "developer" else message.role
            messages.append(_Message(role, message.content, name=message.name))
    tools = [
        _Tool(_FunctionSpec(tool.name, dict(tool.parameters), tool.description or None))
        for tool in request.tools
    ]
    tool_choice = request.tool_choice
    body = _ChatBody(
        model=request.model,
        messages=messages,
        stream=True,
        stream_options=_StreamOptions(include_usage=True),
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=list(request.stop) or None,
        tools=tools or None,
        tool_choice=(dict(tool_choice) if isinstance(tool_choice, Mapping) else tool_choice)
        if tools
        else None,
    )
    return _encoder.encode(body)


# -- the stream -------------------------------------------------------------------------------


class _FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _ErrorDetail(msgspec.Struct):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: _ErrorDetail | str | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
#: In-band error types worth retrying (before the first token).
_RETRYABLE_ERROR_TYPES = frozenset(
    {"server_error", "api_error", "rate_limit_error", "overloaded_error", "timeout"}
)
_NOTHING: tuple[ModelEvent, ...] = ()


class _CallBuilder:
    __slots__ = ("arguments", "id", "name")

    def __init__(self, call_id: str, name: str) -> None:
        self.id = call_id
        self.name = name
        self.arguments: list[str] = []


class ChatStreamParser:
    """Chat Completions chunks in, model events out (see :class:`~.upstream.StreamParser`)."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.done = False
        self._finish: str | None = None
        self._usage: TokenUsage | None = None
        self._calls: dict[int, _CallBuilder] = {}

    def feed(self, event: SSEEvent) -> Sequence[ModelEvent]:
        data = event.data
        if data == "[DONE]":
            self.done = True
            return _NOTHING
        try:
            chunk = _chunk_decoder.decode(data)
        except DECODE_ERRORS as exc:
            raise bad_event(self.provider, exc, data) from exc
        if chunk.error is not None:
            raise self._stream_error(chunk.error)
        if chunk.usage is not None:
            self._usage = TokenUsage(
                chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0
            )
        if not chunk.choices:
            return _NOTHING
        events: list[ModelEvent] = []
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # n > 1 is never requested
            delta = choice.delta
            if delta is not None:
                reasoning = delta.reasoning_content
                if reasoning is None:
                    reasoning = delta.reasoning
                if reasoning:
                    events.append(ReasoningDelta(reasoning))
                if delta.content:
                    events.append(TextDelta(delta.content))
                if delta.tool_calls:
                    self._tool_calls(delta.tool_calls, events)
            if choice.finish_reason is not None:
                self._finish = choice.finish_reason
        return events

    def _tool_calls(self, calls: list[_ToolCallDelta], events: list[ModelEvent]) -> None:
        for position, call in enumerate(calls):
            index = call.index if call.index is not None else position
            function = call.function
            name = function.name if function is not None else None
            arguments = (function.arguments if function is not None else None) or ""
            builder = self._calls.get(index)
            if builder is None:
                call_id = call.id or f"call_{secrets.token_hex(12)}"
                builder = self._calls[index] = _CallBuilder(call_id, name or "")
                events.append(ToolCallDelta(index, call_id, name, arguments))
            else:
                if name and not builder.name:
                    builder.name = name
                else:
                    name = None
                if not name and not arguments:
                    continue
                events.append(ToolCallDelta(index, None, name, arguments))
            if arguments:
                builder.arguments.append(arguments)

    def _stream_error(self, error: _ErrorDetail | str) -> UpstreamError:
        if isinstance(error, str):
            message, error_type = error, None
        else:
            message, error_type = error.message or "no message", error.type
        return UpstreamError(
            f"The upstream {self.provider!r} reported an error mid-stream: {message}",
            retryable=error_type in _RETRYABLE_ERROR_TYPES,
            code="upstream_stream_error",
        )

    def completion(self) -> Completion:
        if self._finish is None and not self.done:
            raise UpstreamError(
                f"The upstream {self.provider!r} ended the stream before the answer was complete.",
                retryable=True,
                code="upstream_disconnected",
            )
        finish = _FINISH_REASONS.get(self._finish or "stop", "stop")
        tool_calls = tuple(
            ToolCall(builder.id, builder.name, "".join(builder.arguments))
            for _, builder in sorted(self._calls.items())
        )
        if tool_calls and finish == "stop":
            finish = "tool_calls"
        return Completion(finish, self._usage or TokenUsage(), tool_calls)


# -- the provider -----------------------------------------------------------------------------


class OpenAIChatProvider(HttpProvider):
    """An OpenAI-compatible Chat Completions upstream (``api: "openai-chat"``).

    ``name`` is the provider's key under ``models.providers`` (used in messages and logs).
    The API key is ``apiKey``, else the variable named by ``apiKeyEnv`` read now (``environ``
    defaults to ``os.environ``); with neither, no ``Authorization`` header is sent (local
    servers). Close it with :meth:`aclose`.
    """

    def __init__(
        self,
        config: OpenAIChatProviderConfig,
        *,
        name: str = "openai-chat",
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        super().__init__(
            config,
            name=name,
            environ=environ,
            transport=transport,
            fixed_headers={},
            key_header=lambda key: ("authorization", f"Bearer {key}"),
        )

    async def stream(self, request: ModelRequest, emit: Emit) -> Completion:
        return await self._upstream.stream(
            "chat/completions",
            encode_chat_request(request),
            ChatStreamParser(self.name),
            emit,
            model=request.model,
        )
