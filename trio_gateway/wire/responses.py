"""Parsing and validating an OpenAI ``POST /v1/responses`` request body.

``parse_responses_request(body)`` turns raw bytes into a typed :class:`ResponsesRequest` or raises
:class:`~trio_gateway.errors.InvalidRequestError` whose ``param`` names the offending field
(``input[2].content[0].type``), the way OpenAI does. As for chat completions, msgspec decodes
and type-checks strictly and unknown top-level fields are ignored; what the gateway knows but
does not support (another tool type, an input item it cannot run, ``conversation``) is refused
with a 400 naming the field, never silently dropped. ``background`` needs ``store``.

The input items are decoded one by one (each kept as raw JSON by the first pass), so an error
inside an item names its index; the messages without a ``type`` (the easy form,
``{"role": "user", "content": "hi"}``) and the typed items are told apart by their ``type``.
``to_messages`` and ``to_tool_specs`` give the request as the neutral values of
:mod:`trio_gateway.messages`, which is what the runtime takes. A user message's ``input_image``
parts (``image_url``: a ``data:`` or ``https:`` URL) are images, under the same limits and checks
as chat completions' ``image_url`` parts (:mod:`~trio_gateway.wire.images`). Sans-IO: msgspec
only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from .. import messages as neutral
from ..errors import InvalidRequestError
from .decoding import (
    DECODE_ERRORS,
    DecodeFault,
    SchemaViolation,
    decode_fault,
    lower_first,
    schema_violation,
)
from .images import ImageBudget, ImageLimits, read_image_url

__all__ = [
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "InputItem",
    "MessageItem",
    "ResponsesRequest",
    "chat_tool_choice",
    "check_limits",
    "input_items",
    "parse_responses_request",
    "to_messages",
    "to_tool_specs",
]

Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
#: OpenAI's limits on ``metadata``: 16 pairs, keys of 64 characters, values of 512.
MetadataKey = Annotated[str, msgspec.Meta(max_length=64)]
MetadataValue = Annotated[str, msgspec.Meta(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], msgspec.Meta(max_length=16)]

MessageRole = Literal["user", "assistant", "system", "developer"]


class ContentPart(msgspec.Struct, frozen=True):
    """One part of a message's ``content`` array: ``input_text`` (any role), ``input_image`` (a
    user message) or ``output_text`` (an assistant message sent back as history). Other fields
    (``annotations``...) are ignored."""

    type: str
    text: str | None = None
    image_url: str | None = None
    detail: str | None = None
    file_id: str | None = None


class MessageItem(msgspec.Struct, frozen=True):
    """``{"role", "content"}``, with or without ``"type": "message"``."""

    role: MessageRole
    content: str | list[ContentPart]
    type: Literal["message"] = "message"


class FunctionCallItem(msgspec.Struct, frozen=True):
    """A client tool call the model made (sent back as history)."""

    call_id: Annotated[str, msgspec.Meta(min_length=1)]
    name: str
    arguments: str
    type: Literal["function_call"] = "function_call"


class FunctionCallOutputItem(msgspec.Struct, frozen=True):
    """The client's result of a tool call: a string, or ``input_text`` parts."""

    call_id: Annotated[str, msgspec.Meta(min_length=1)]
    output: str | list[ContentPart]
    type: Literal["function_call_output"] = "function_call_output"


class ReasoningItem(msgspec.Struct, frozen=True):
    """A reasoning item sent back as history: accepted and not passed on (the model's reasoning
    is not part of a conversation's input)."""

    type: Literal["reasoning"] = "reasoning"


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem


class FunctionTool(msgspec.Struct, frozen=True):
    """``{"type": "function", "name", "description", "parameters", "strict"}`` (flat, unlike
    chat completions' ``{"type", "function": {...}}``)."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}\Z")]
    type: Literal["function"] = "function"
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None


class _ToolHead(msgspec.Struct, frozen=True):
    type: str


class _ItemHead(msgspec.Struct, frozen=True):
    type: str | None = None


class _ToolChoiceObject(msgspec.Struct, frozen=True):
    type: str
    name: str | None = None


class _TextFormat(msgspec.Struct, frozen=True):
    type: str


class _TextConfig(msgspec.Struct, frozen=True):
    format: _TextFormat | None = None


class _RawRequest(msgspec.Struct, frozen=True):
    model: str = "epiloop"
    input: str | list[msgspec.Raw] | None = None
    instructions: str | list[msgspec.Raw] | None = None
    tools: list[msgspec.Raw] | None = None
    tool_choice: str | _ToolChoiceObject | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    metadata: Metadata | None = None
    store: bool | None = None
    stream: bool | None = None
    user: str | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    conversation: object = None
    prompt: object = None
    text: _TextConfig | None = None


class ResponsesRequest(msgspec.Struct, frozen=True):
    """A validated Responses request (only the fields the gateway acts on or echoes)."""

    model: str
    input: tuple[InputItem, ...]
    instructions: str | None
    tools: tuple[FunctionTool, ...]
    #: ``"auto"``, ``"none"``, ``"required"``, or the name of the one function to call
    #: (``{"type": "function", "name": ...}``).
    tool_choice: str | None
    tool_choice_function: str | None
    parallel_tool_calls: bool
    max_output_tokens: int | None
    temperature: float | None
    top_p: float | None
    metadata: dict[str, str]
    store: bool
    stream: bool
    user: str | None
    background: bool = False
    previous_response_id: str | None = None


_decoder = msgspec.json.Decoder(_RawRequest)
_tool_head = msgspec.json.Decoder(_ToolHead)
_tool_decoder = msgspec.json.Decoder(FunctionTool)
_item_head = msgspec.json.Decoder(_ItemHead)
_item_decoders: dict[str | None, msgspec.json.Decoder[InputItem]] = {
    None: msgspec.json.Decoder(MessageItem),
    "message": msgspec.json.Decoder(MessageItem),
    "function_call": msgspec.json.Decoder(FunctionCallItem),
    "function_call_output": msgspec.json.Decoder(FunctionCallOutputItem),
    "reasoning": msgspec.json.Decoder(ReasoningItem),
}
_TOOL_CHOICES = ("auto", "none", "required")
#: The ``text.format`` types: only plain text is served (no structured outputs yet).
_TEXT_FORMATS = ("text",)


def parse_responses_request(body: bytes) -> ResponsesRequest:
    """Decode and validate a request body; raise :class:`InvalidRequestError` on any fault."""
    if not body.strip():
        raise InvalidRequestError(
            "The request body is empty: expected a JSON object with 'input'.", param=None
        )
    try:
        raw = _decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise _translate_decode_error(exc, body, prefix="") from exc
    _refuse_unsupported(raw)
    items = _parse_input(raw.input)
    tools = tuple(_parse_tool(index, tool) for index, tool in enumerate(raw.tools or ()))
    tool_choice, tool_function = _parse_tool_choice(raw.tool_choice)
    return ResponsesRequest(
        model=raw.model,
        input=items,
        instructions=_parse_instructions(raw.instructions),
        tools=tools,
        tool_choice=tool_choice,
        tool_choice_function=tool_function,
        parallel_tool_calls=raw.parallel_tool_calls is not False,
        max_output_tokens=raw.max_output_tokens,
        temperature=raw.temperature,
        top_p=raw.top_p,
        metadata=dict(raw.metadata or {}),
        store=raw.store is not False,
        stream=raw.stream is True,
        user=raw.user,
        background=raw.background is True,
        previous_response_id=raw.previous_response_id,
    )


def _unsupported(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code="unsupported_value")


def _refuse_unsupported(raw: _RawRequest) -> None:
    if raw.background and raw.store is False:
        raise InvalidRequestError(
            "Background responses ('background': true) are stored: they cannot be sent with "
            "'store': false.",
            param="background",
        )
    if raw.previous_response_id is not None and not raw.previous_response_id:
        raise InvalidRequestError(
            "Invalid value for 'previous_response_id': expected a response id ('resp_...').",
            param="previous_response_id",
        )
    if raw.conversation is not None:
        raise _unsupported(
            "'conversation' is not supported by this gateway: send the whole conversation in "
            "'input', or continue a session with the x-epiloop-session-key header.",
            "conversation",
        )
    if raw.prompt is not None:
        raise _unsupported(
            "Stored prompt templates ('prompt') are not supported by this gateway.", "prompt"
        )
    text_format = raw.text.format if raw.text is not None else None
    if text_format is not None and text_format.type not in _TEXT_FORMATS:
        raise _unsupported(
            f"Unsupported text format {text_format.type!r} at 'text.format.type': this gateway "
            "answers in plain text only ('text').",
            "text.format.type",
        )


def _parse_input(value: str | list[msgspec.Raw] | None) -> tuple[InputItem, ...]:
    if value is None:
        raise InvalidRequestError("Missing required parameter: 'input'.", param="input")
    if isinstance(value, str):
        return (MessageItem("user", value),)
    if not value:
        raise InvalidRequestError(
            "Invalid value for 'input': expected a string or at least one input item.",
            param="input",
        )
    return tuple(_parse_item(index, raw) for index, raw in enumerate(value))


def _parse_item(index: int, raw: msgspec.Raw) -> InputItem:
    prefix = f"input[{index}]"
    try:
        kind = _item_head.decode(raw).type
        decoder = _item_decoders.get(kind)
        if decoder is None:
            raise _unsupported(
                f"Unsupported input item type {kind!r} at '{prefix}.type': this gateway accepts "
                "'message', 'function_call', 'function_call_output' and 'reasoning' items.",
                f"{prefix}.type",
            )
        item = decoder.decode(raw)
    except DECODE_ERRORS as exc:
        raise _translate_decode_error(exc, bytes(raw), prefix=prefix) from exc
    if isinstance(item, MessageItem) and isinstance(item.content, list):
        _check_parts(item.content, f"{prefix}.content", role=item.role)
    elif isinstance(item, FunctionCallOutputItem) and isinstance(item.output, list):
        _check_parts(item.output, f"{prefix}.output", role="tool")
    return item


_ALLOWED_PARTS: dict[str, tuple[str, ...]] = {
    "assistant": ("input_text", "output_text"),
    "user": ("input_text", "input_image"),
}


def _check_parts(parts: list[ContentPart], param: str, *, role: str) -> None:
    allowed = _ALLOWED_PARTS.get(role, ("input_text",))
    for index, part in enumerate(parts):
        where = f"{param}[{index}]"
        if part.type == "input_image" and part.type in allowed:
            if part.image_url is None:
                detail = " (file ids are not supported)" if part.file_id is not None else ""
                raise InvalidRequestError(
                    f"Missing required parameter: '{where}.image_url'{detail}.",
                    param=f"{where}.image_url",
                )
            continue
        if part.type not in allowed:
            names = " and ".join(repr(name) for name in allowed)
            raise _unsupported(
                f"Unsupported content part type {part.type!r} at '{where}.type': this gateway "
                f"accepts only {names} parts here.",
                f"{where}.type",
            )
        if part.text is None:
            raise InvalidRequestError(
                f"Missing required parameter: '{where}.text'.", param=f"{where}.text"
            )


def _parse_instructions(value: str | list[msgspec.Raw] | None) -> str | None:
    if isinstance(value, list):
        raise _unsupported(
            "'instructions' must be a string here (input items as instructions are not supported).",
            "instructions",
        )
    return value


def _parse_tool(index: int, raw: msgspec.Raw) -> FunctionTool:
    prefix = f"tools[{index}]"
    try:
        kind = _tool_head.decode(raw).type
        if kind != "function":
            raise _unsupported(
                f"Unsupported tool type {kind!r} at '{prefix}.type': this gateway accepts only "
                "'function' tools (the client runs them).",
                f"{prefix}.type",
            )
        return _tool_decoder.decode(raw)
    except DECODE_ERRORS as exc:
        raise _translate_decode_error(exc, bytes(raw), prefix=prefix) from exc


def _parse_tool_choice(value: str | _ToolChoiceObject | None) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, str):
        if value not in _TOOL_CHOICES:
            raise InvalidRequestError(
                f"Invalid value for 'tool_choice': {value!r}; expected 'auto', 'none', "
                "'required' or a function object.",
                param="tool_choice",
            )
        return value, None
    if value.type != "function":
        raise _unsupported(
            f"Unsupported tool choice type {value.type!r} at 'tool_choice.type': this gateway "
            "accepts 'auto', 'none', 'required' or {'type': 'function', 'name': ...}.",
            "tool_choice.type",
        )
    if value.name is None:
        raise InvalidRequestError(
            "Missing required parameter: 'tool_choice.name'.", param="tool_choice.name"
        )
    return None, value.name


def _translate_decode_error(exc: Exception, body: bytes, *, prefix: str) -> InvalidRequestError:
    fault = decode_fault(exc, body)
    if fault is DecodeFault.SCHEMA:
        return _translate_validation_error(schema_violation(exc), prefix)
    if fault is DecodeFault.ENCODING:
        message = "The request body is not valid JSON (invalid UTF-8 in a string)."
    elif fault is DecodeFault.DEPTH:
        message = "The request body is nested too deeply."
    else:
        message = f"The request body is not valid JSON ({exc})."
    return InvalidRequestError(message, code="invalid_json")


def _translate_validation_error(violation: SchemaViolation, prefix: str) -> InvalidRequestError:
    detail, path = violation.detail, prefix + violation.path
    # msgspec names a dict's entry "[...]": the param is the dict (``metadata``).
    path = path.partition("[...]")[0].lstrip(".")
    if violation.missing_field is not None:
        field = violation.missing_field
        param = f"{path}.{field}" if path else field
        return InvalidRequestError(f"Missing required parameter: '{param}'.", param=param)
    if path == "":
        return InvalidRequestError(
            f"The request body must be a JSON object: {lower_first(detail)}.", param=None
        )
    if path.endswith(".role") and detail.startswith("Invalid value"):
        detail += "; expected one of 'user', 'assistant', 'system', 'developer'"
    return InvalidRequestError(f"Invalid value for '{path}': {lower_first(detail)}.", param=path)


def _text(content: str | list[ContentPart]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part.text or "" for part in content if part.type != "input_image")


def _image_parts(request: ResponsesRequest) -> list[tuple[str, ContentPart]]:
    """The request's ``input_image`` parts with their paths, in order."""
    found: list[tuple[str, ContentPart]] = []
    for index, item in enumerate(request.input):
        if isinstance(item, MessageItem) and isinstance(item.content, list):
            for part_index, part in enumerate(item.content):
                if part.type == "input_image" and part.image_url is not None:
                    found.append((f"input[{index}].content[{part_index}]", part))
    return found


def check_limits(
    request: ResponsesRequest,
    *,
    max_messages: int,
    max_content_chars: int,
    images: ImageLimits | None = None,
) -> None:
    """Refuse a request with more input items, more content, or more or larger images than the
    gateway accepts (the same limits as chat completions)."""
    budget = ImageBudget(images or ImageLimits())
    for param, part in _image_parts(request):
        assert part.image_url is not None
        budget.add(part.image_url, param=param)
    items = len(request.input) + (request.instructions is not None)
    if items > max_messages:
        raise InvalidRequestError(
            f"Too many input items: {items} (at most {max_messages}; gateway.http.maxMessages).",
            param="input",
            code="too_many_messages",
        )
    total = len(request.instructions or "")
    for item in request.input:
        if isinstance(item, MessageItem):
            total += len(_text(item.content))
        elif isinstance(item, FunctionCallItem):
            total += len(item.arguments)
        elif isinstance(item, FunctionCallOutputItem):
            total += len(_text(item.output))
        if total > max_content_chars:
            raise InvalidRequestError(
                f"The input holds more than {max_content_chars} characters of content "
                "(gateway.http.maxContentChars).",
                param="input",
                code="content_too_long",
            )


def to_messages(request: ResponsesRequest) -> tuple[neutral.Message, ...]:
    """The request's instructions and input items as neutral messages, in order.

    ``instructions`` is a system message before the input. Consecutive ``function_call`` items
    are the tool calls of one assistant message (of the assistant message right before them,
    if there is one); a ``function_call_output`` is a tool message.
    """
    messages: list[neutral.Message] = []
    if request.instructions is not None:
        messages.append(neutral.Message("system", request.instructions))
    calls: list[neutral.ToolCall] = []
    calls_owner: neutral.Message | None = None

    def flush() -> None:
        nonlocal calls_owner
        if not calls:
            return
        owner = calls_owner or neutral.Message("assistant", "")
        message = neutral.Message("assistant", owner.content, tool_calls=tuple(calls))
        if calls_owner is not None:
            messages[-1] = message
        else:
            messages.append(message)
        calls.clear()
        calls_owner = None

    images: dict[int, list[neutral.Image]] = {}
    for param, part in _image_parts(request):
        assert part.image_url is not None
        index = int(param[6 : param.index("]")])
        images.setdefault(index, []).append(
            read_image_url(part.image_url, part.detail, param=param)
        )
    for index, item in enumerate(request.input):
        if isinstance(item, FunctionCallItem):
            if not calls and messages and _is_plain_assistant(messages[-1]):
                calls_owner = messages[-1]
            calls.append(neutral.ToolCall(item.call_id, item.name, item.arguments))
            continue
        flush()
        if isinstance(item, MessageItem):
            pictures = tuple(images.get(index, ()))
            messages.append(neutral.Message(item.role, _text(item.content), images=pictures))
        elif isinstance(item, FunctionCallOutputItem):
            messages.append(neutral.Message("tool", _text(item.output), tool_call_id=item.call_id))
    flush()
    return tuple(messages)


def _is_plain_assistant(message: neutral.Message) -> bool:
    return message.role == "assistant" and not message.tool_calls


_EMPTY_SCHEMA: dict[str, object] = {"type": "object", "properties": {}}


def to_tool_specs(tools: tuple[FunctionTool, ...]) -> tuple[neutral.ToolSpec, ...]:
    """The request's function tools as specs offered to the model."""
    return tuple(
        neutral.ToolSpec(
            tool.name,
            tool.description or "",
            tool.parameters if tool.parameters is not None else _EMPTY_SCHEMA,
        )
        for tool in tools
    )


def chat_tool_choice(request: ResponsesRequest) -> str | Mapping[str, object] | None:
    """``tool_choice`` in the runtime's (chat completions') terms."""
    if request.tool_choice_function is not None:
        return {"type": "function", "function": {"name": request.tool_choice_function}}
    return request.tool_choice


def _listed_part(part: ContentPart) -> dict[str, object]:
    """A content part as ``input_items`` lists it. An image given inline (a ``data:`` URL) is
    listed without its bytes (``image_url`` null): they are not kept twice."""
    if part.type == "input_image":
        url = part.image_url
        return {
            "type": "input_image",
            "image_url": None if url is None or url.startswith("data:") else url,
            "file_id": part.file_id,
            "detail": part.detail or "auto",
        }
    listed: dict[str, object] = {"type": part.type, "text": part.text or ""}
    if part.type == "output_text":
        listed["annotations"] = []
    return listed


def input_items(request: ResponsesRequest, stem: str) -> list[dict[str, object]]:
    """The request's input items as ``GET /v1/responses/{id}/input_items`` lists them (in
    order, each with an id made of the response's ``stem``; reasoning items are not kept)."""
    listed: list[dict[str, object]] = []
    for index, item in enumerate(request.input):
        if isinstance(item, MessageItem):
            # An assistant message lists as the model's output (``output_text`` parts).
            assistant = item.role == "assistant"
            parts = (
                [ContentPart("output_text" if assistant else "input_text", item.content)]
                if isinstance(item.content, str)
                else item.content
            )
            content = [_listed_part(part) for part in parts]
            listed.append(
                {
                    "id": f"msg_{stem}_in{index}",
                    "type": "message",
                    "role": item.role,
                    "content": content,
                    "status": "completed",
                }
            )
        elif isinstance(item, FunctionCallItem):
            listed.append(
                {
                    "id": f"fc_{stem}_in{index}",
                    "type": "function_call",
                    "call_id": item.call_id,
                    "name": item.name,
                    "arguments": item.arguments,
                    "status": "completed",
                }
            )
        elif isinstance(item, FunctionCallOutputItem):
            listed.append(
                {
                    "id": f"fco_{stem}_in{index}",
                    "type": "function_call_output",
                    "call_id": item.call_id,
                    "output": _text(item.output),
                    "status": "completed",
                }
            )
    return listed
