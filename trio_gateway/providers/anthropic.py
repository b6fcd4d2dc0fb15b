"""The Anthropic Messages API provider.

The sans-IO half maps a :class:`ModelRequest` to a Messages body (:func:`encode_messages_request`)
and turns the streamed events into model events (:class:`MessagesStreamParser`); the I/O half is
:class:`~trio_gateway.providers.upstream.UpstreamClient`.

Request mapping: ``system`` and ``developer`` messages are joined into ``system``; consecutive
messages of one role are merged (the API wants user and assistant to alternate); assistant tool
calls become ``tool_use`` blocks with their arguments parsed (arguments that are not a JSON
object are wrapped as ``{"arguments": ...}``); tool messages become ``tool_result`` blocks of a
user message; a user message's images become ``image`` blocks after its text (bytes as a
``base64`` source, a remote image as a ``url`` source); empty text is left out (the API rejects
empty blocks). ``max_tokens`` comes from
the request or ``defaultMaxTokens``, ``stop`` becomes ``stop_sequences``, ``temperature`` is
capped at 1 (Anthropic's range), tools get an ``input_schema``, and ``tool_choice`` maps
``auto``/``required``/``none``/a named function to ``auto``/``any``/``none``/``tool``.

Stream mapping: ``text_delta`` → :class:`TextDelta`, ``thinking_delta`` → :class:`ReasoningDelta`;
each ``tool_use`` block is a tool call numbered among tool-use blocks only, its id and name sent
on ``content_block_start`` and ``input_json_delta.partial_json`` as argument pieces (a block that
streams no input ends with ``{}``). Stop reasons: ``end_turn``/``stop_sequence``/``pause_turn``
→ ``stop``, ``max_tokens`` → ``length``, ``tool_use`` → ``tool_calls``, ``refusal`` →
``content_filter``. Usage: input tokens (cache reads and writes included) from
``message_start``, output tokens from the last ``message_delta``.

Must not import the agent, server or tools layers.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping, Sequence

import httpx
import msgspec

from ..config.schema import AnthropicProviderConfig
from ..errors import UpstreamError
from ..messages import Image, Message, ToolCall
from ..wire.decoding import DECODE_ERRORS
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
from .upstream_errors import bad_event, bad_response

__all__ = ["AnthropicProvider", "MessagesStreamParser", "encode_messages_request"]


# -- the request ------------------------------------------------------------------------------


class _Text(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class _ToolUse(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, object]


class _ToolResult(msgspec.Struct, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: str


class _Base64Source(msgspec.Struct, tag="base64", tag_field="type"):
    media_type: str
    data: str


class _UrlSource(msgspec.Struct, tag="url", tag_field="type"):
    url: str


class _ImageBlock(msgspec.Struct, tag="image", tag_field="type"):
    source: _Base64Source | _UrlSource


_Block = _Text | _ToolUse | _ToolResult | _ImageBlock


class _Message(msgspec.Struct):
    role: str
    content: list[_Block]


class _ToolSpec(msgspec.Struct, omit_defaults=True):
    name: str
    input_schema: dict[str, object]
    description: str | None = None


class _MessagesBody(msgspec.Struct, omit_defaults=True):
    model: str
    max_tokens: int
    messages: list[_Message]
    stream: bool
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: list[str] | None = None
    tools: list[_ToolSpec] | None = None
    tool_choice: dict[str, object] | None = None


_encoder = msgspec.json.Encoder()


def encode_messages_request(request: ModelRequest, *, default_max_tokens: int) -> bytes:
    """The streaming Messages body for ``request``."""
    system: list[str] = []
    messages: list[_Message] = []
    for message in request.messages:
        if message.role in ("system", "developer"):
            if message.content.strip():
                system.append(message.content)
            continue
        role, blocks = _blocks(message)
        if not blocks:
            continue
        if messages and messages[-1].role == role:
            messages[-1].content.extend(blocks)
        else:
            messages.append(_Message(role, blocks))
    tools = [
        _ToolSpec(tool.name, dict(tool.parameters), tool.description or None)
        for tool in request.tools
    ]
    temperature = request.temperature
    body = _MessagesBody(
        model=request.model,
        max_tokens=request.max_tokens if request.max_tokens is not None else default_max_tokens,
        messages=messages,
        stream=True,
        system="\n\n".join(system) or None,
        temperature=min(temperature, 1.0) if temperature is not None else None,
        top_p=request.top_p,
        stop_sequences=list(request.stop) or None,
        tools=tools or None,
        tool_choice=_tool_choice(request.tool_choice) if tools else None,
    )
    return _encoder.encode(body)


def _blocks(message: Message) -> tuple[str, list[_Block]]:
    blocks: list[_Block] = []
    if message.role == "tool":
        blocks.append(_ToolResult(message.tool_call_id or "", message.content))
        return "user", blocks
    if message.content.strip():
        blocks.append(_Text(message.content))
    blocks.extend(_image_block(image) for image in message.images)
    if message.role == "assistant":
        for call in message.tool_calls:
            blocks.append(_ToolUse(call.id, call.name, _tool_input(call.arguments)))
        return "assistant", blocks
    return "user", blocks


def _image_block(image: Image) -> _ImageBlock:
    """An image block: its bytes as a base64 source, a remote image as a URL source."""
    if image.url is not None:
        return _ImageBlock(_UrlSource(image.url))
    assert image.data is not None, "an inline image has its bytes"
    data = binascii.b2a_base64(image.data, newline=False).decode("ascii")
    return _ImageBlock(_Base64Source(image.media_type, data))


def _tool_input(arguments: str) -> dict[str, object]:
    if not arguments.strip():
        return {}
    try:
        value = msgspec.json.decode(arguments)
    except DECODE_ERRORS:  # not JSON, too deep, not UTF-8: sent as the text it is
        return {"arguments": arguments}
    if isinstance(value, dict):
        return value
    return {"arguments": value}


def _tool_choice(choice: str | Mapping[str, object] | None) -> dict[str, object] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        kind = {"auto": "auto", "required": "any", "none": "none"}.get(choice)
        return {"type": kind} if kind else None
    function = choice.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    if isinstance(name, str):
        return {"type": "tool", "name": name}
    return None


# -- the stream -------------------------------------------------------------------------------


class _ContentBlock(msgspec.Struct):
    type: str = ""
    id: str | None = None
    name: str | None = None
    text: str | None = None
    thinking: str | None = None
    input: dict[str, object] | None = None


class _Delta(msgspec.Struct):
    """A ``content_block_delta`` delta or a ``message_delta`` delta."""

    type: str | None = None
    text: str | None = None
    thinking: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    @property
    def prompt_tokens(self) -> int | None:
        if self.input_tokens is None:
            return None
        return (
            self.input_tokens
            + (self.cache_creation_input_tokens or 0)
            + (self.cache_read_input_tokens or 0)
        )


class _MessageHead(msgspec.Struct):
    usage: _Usage | None = None


class _ErrorDetail(msgspec.Struct):
    type: str | None = None
    message: str | None = None


class _Event(msgspec.Struct):
    """Every stream event in one flat struct: new event and block types decode too."""

    type: str
    index: int = 0
    content_block: _ContentBlock | None = None
    delta: _Delta | None = None
    message: _MessageHead | None = None
    usage: _Usage | None = None
    error: _ErrorDetail | None = None


_event_decoder = msgspec.json.Decoder(_Event)

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_RETRYABLE_ERROR_TYPES = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)
_NOTHING: tuple[ModelEvent, ...] = ()


class _CallBuilder:
    __slots__ = ("arguments", "id", "index", "name")

    def __init__(self, index: int, call_id: str, name: str) -> None:
        self.index = index
        self.id = call_id
        self.name = name
        self.arguments: list[str] = []


class MessagesStreamParser:
    """Messages API events in, model events out (see :class:`~.upstream.StreamParser`)."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.done = False
        self._stop_reason: str | None = None
        self._prompt_tokens = 0
        self._completion_tokens = 0
        #: Tool calls by content-block index.
        self._calls: dict[int, _CallBuilder] = {}

    def feed(self, event: SSEEvent) -> Sequence[ModelEvent]:
        try:
            decoded = _event_decoder.decode(event.data)
        except DECODE_ERRORS as exc:
            raise bad_event(self.provider, exc, event.data) from exc
        kind = decoded.type
        if kind == "content_block_delta":
            return self._block_delta(decoded)
        if kind == "content_block_start":
            return self._block_start(decoded)
        if kind == "content_block_stop":
            return self._block_stop(decoded.index)
        if kind == "message_start":
            if decoded.message is not None and decoded.message.usage is not None:
                self._usage(decoded.message.usage)
        elif kind == "message_delta":
            if decoded.delta is not None and decoded.delta.stop_reason is not None:
                self._stop_reason = decoded.delta.stop_reason
            if decoded.usage is not None:
                self._usage(decoded.usage)
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise self._stream_error(decoded.error)
        return _NOTHING  # ping and event types this client does not know

    def _block_delta(self, event: _Event) -> Sequence[ModelEvent]:
        delta = event.delta
        if delta is None:
            return _NOTHING
        if delta.type == "text_delta" and delta.text:
            return (TextDelta(delta.text),)
        if delta.type == "thinking_delta" and delta.thinking:
            return (ReasoningDelta(delta.thinking),)
        if delta.type == "input_json_delta" and delta.partial_json:
            call = self._calls.get(event.index)
            if call is not None:
                call.arguments.append(delta.partial_json)
                return (ToolCallDelta(call.index, arguments=delta.partial_json),)
        return _NOTHING

    def _block_start(self, event: _Event) -> Sequence[ModelEvent]:
        block = event.content_block
        if block is None:
            return _NOTHING
        if block.type == "tool_use":
            if block.id is None or block.name is None:
                raise bad_response(self.provider, "a tool_use block without an id or name")
            call = _CallBuilder(len(self._calls), block.id, block.name)
            self._calls[event.index] = call
            arguments = _encoder.encode(block.input).decode() if block.input else ""
            if arguments:
                call.arguments.append(arguments)
            return (ToolCallDelta(call.index, block.id, block.name, arguments),)
        if block.type == "text" and block.text:
            return (TextDelta(block.text),)
        if block.type == "thinking" and block.thinking:
            return (ReasoningDelta(block.thinking),)
        return _NOTHING

    def _block_stop(self, index: int) -> Sequence[ModelEvent]:
        call = self._calls.get(index)
        if call is None or call.arguments:
            return _NOTHING
        call.arguments.append("{}")
        return (ToolCallDelta(call.index, arguments="{}"),)

    def _usage(self, usage: _Usage) -> None:
        prompt = usage.prompt_tokens
        if prompt:
            self._prompt_tokens = prompt
        if usage.output_tokens is not None:
            self._completion_tokens = usage.output_tokens

    def _stream_error(self, error: _ErrorDetail | None) -> UpstreamError:
        message = (error.message if error is not None else None) or "no message"
        error_type = error.type if error is not None else None
        return UpstreamError(
            f"The upstream {self.provider!r} reported an error mid-stream: {message}",
            retryable=error_type in _RETRYABLE_ERROR_TYPES,
            code="upstream_stream_error",
        )

    def completion(self) -> Completion:
        if self._stop_reason is None and not self.done:
            raise UpstreamError(
                f"The upstream {self.provider!r} ended the stream before the answer was complete.",
                retryable=True,
                code="upstream_disconnected",
            )
        finish = _STOP_REASONS.get(self._stop_reason or "end_turn", "stop")
        tool_calls = tuple(
            ToolCall(call.id, call.name, "".join(call.arguments) or "{}")
            for call in sorted(self._calls.values(), key=lambda call: call.index)
        )
        usage = TokenUsage(self._prompt_tokens, self._completion_tokens)
        return Completion(finish, usage, tool_calls)


# -- the provider -----------------------------------------------------------------------------


class AnthropicProvider(HttpProvider):
    """Anthropic's Messages API (``api: "anthropic-messages"``).

    ``name`` is the provider's key under ``models.providers``. The API key is ``apiKey``, else
    the variable named by ``apiKeyEnv`` read now (``environ`` defaults to ``os.environ``), sent
    as ``x-api-key`` with ``anthropic-version``. Close it with :meth:`aclose`.
    """

    def __init__(
        self,
        config: AnthropicProviderConfig,
        *,
        name: str = "anthropic",
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        super().__init__(
            config,
            name=name,
            environ=environ,
            transport=transport,
            fixed_headers={"anthropic-version": config.anthropic_version},
            key_header=lambda key: ("x-api-key", key),
        )

    async def stream(self, request: ModelRequest, emit: Emit) -> Completion:
        return await self._upstream.stream(
            "v1/messages",
            # Passed on, not kept: the upstream client drops the body once it is sent.
            encode_messages_request(request, default_max_tokens=self.config.default_max_tokens),
            MessagesStreamParser(self.name),
            emit,
            model=request.model,
        )
