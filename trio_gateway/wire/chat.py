"""Parsing and validating an OpenAI ``POST /v1/chat/completions`` request body.

``parse_chat_request(body)`` turns raw bytes into a typed :class:`ChatRequest` or raises
:class:`~trio_gateway.errors.InvalidRequestError` whose ``param`` names the offending field, the
way OpenAI does. msgspec does the decoding and type checks in one pass (strictly: ``"true"`` is
not a boolean); the few rules a schema cannot say are checked afterwards. Unknown top-level fields
are ignored, as OpenAI-compatible servers do, so stock clients that send extra options still work.
``to_messages`` and ``to_tool_specs`` give the request's messages and tools as the neutral values
of :mod:`trio_gateway.messages`, which is what the runtime takes.

Content parts: ``text``, and ``image_url`` in user messages (``{"url", "detail"}``; a ``data:``
URL with base64 bytes or an ``https:`` URL, see :mod:`~trio_gateway.wire.images`).
:func:`check_limits` counts the images against ``gateway.http.images`` before anything is
decoded; :func:`to_messages` decodes and checks their bytes.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .. import messages as neutral
from ..errors import InvalidRequestError
from ..messages import Role as Role
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
    "AssistantMessage",
    "ChatRequest",
    "ContentPart",
    "DeveloperMessage",
    "FunctionCall",
    "FunctionDefinition",
    "ImageUrl",
    "Message",
    "StreamOptions",
    "SystemMessage",
    "Tool",
    "ToolCall",
    "ToolMessage",
    "UserMessage",
    "check_limits",
    "image_parts",
    "message_text",
    "parse_chat_request",
    "to_messages",
    "to_tool_specs",
]


class ImageUrl(msgspec.Struct, frozen=True):
    """An ``image_url`` part's image: a ``data:`` or ``https:`` URL, and OpenAI's ``detail``."""

    url: str
    detail: str | None = None


class ContentPart(msgspec.Struct, frozen=True):
    """One element of an array ``content``: ``{"type": "text", "text": ...}`` or, in a user
    message, ``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}``. (A bare
    string ``image_url``, as some clients send, is read as its ``url``.)"""

    type: str
    text: str | None = None
    image_url: ImageUrl | str | None = None

    @property
    def image(self) -> ImageUrl | None:
        value = self.image_url
        return ImageUrl(value) if isinstance(value, str) else value


Content = str | list[ContentPart]


class FunctionCall(msgspec.Struct, frozen=True):
    name: str
    arguments: str


class ToolCall(msgspec.Struct, frozen=True):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class SystemMessage(msgspec.Struct, frozen=True, tag="system", tag_field="role"):
    content: Content
    name: str | None = None


class DeveloperMessage(msgspec.Struct, frozen=True, tag="developer", tag_field="role"):
    content: Content
    name: str | None = None


class UserMessage(msgspec.Struct, frozen=True, tag="user", tag_field="role"):
    content: Content
    name: str | None = None


class AssistantMessage(msgspec.Struct, frozen=True, tag="assistant", tag_field="role"):
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(msgspec.Struct, frozen=True, tag="tool", tag_field="role"):
    content: Content
    tool_call_id: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class FunctionDefinition(msgspec.Struct, frozen=True):
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}\Z")]
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct, frozen=True):
    function: FunctionDefinition
    type: Literal["function"] = "function"


Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class ChatRequest(msgspec.Struct, frozen=True):
    """A validated chat completion request (only the fields the gateway acts on)."""

    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    model: str = "epiloop"
    #: ``null`` is accepted and means ``false``, as in the OpenAI API.
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    n: PositiveInt | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    seed: int | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, object] | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (the current name) or ``max_tokens`` (the legacy one)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


_decoder = msgspec.json.Decoder(ChatRequest)


def parse_chat_request(body: bytes) -> ChatRequest:
    """Decode and validate a request body; raise :class:`InvalidRequestError` on any fault."""
    if not body.strip():
        raise InvalidRequestError(
            "The request body is empty: expected a JSON object with 'messages'.", param=None
        )
    try:
        request = _decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise _translate_decode_error(exc, body) from exc
    _check_rules(request)
    return request


def _translate_decode_error(exc: Exception, body: bytes) -> InvalidRequestError:
    fault = decode_fault(exc, body)
    if fault is DecodeFault.SCHEMA:
        return _translate_validation_error(schema_violation(exc))
    if fault is DecodeFault.ENCODING:
        message = "The request body is not valid JSON (invalid UTF-8 in a string)."
    elif fault is DecodeFault.DEPTH:
        message = "The request body is nested too deeply."
    else:
        message = f"The request body is not valid JSON ({exc})."
    return InvalidRequestError(message, code="invalid_json")


def _translate_validation_error(violation: SchemaViolation) -> InvalidRequestError:
    detail, path = violation.detail, violation.path.lstrip(".")
    if violation.missing_field is not None:
        field = violation.missing_field
        param = f"{path}.{field}" if path else field
        return InvalidRequestError(f"Missing required parameter: '{param}'.", param=param)
    if path == "":
        # The whole body is of the wrong shape (an array, a string, ...).
        return InvalidRequestError(
            f"The request body must be a JSON object: {lower_first(detail)}.", param=None
        )
    if path.endswith(".role") and detail.startswith("Invalid value"):
        detail += "; expected one of 'system', 'developer', 'user', 'assistant', 'tool'"
    return InvalidRequestError(f"Invalid value for '{path}': {lower_first(detail)}.", param=path)


def _check_rules(request: ChatRequest) -> None:
    if request.stream_options is not None and not request.stream:
        raise InvalidRequestError(
            "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
        )
    if request.n is not None and request.n != 1:
        raise InvalidRequestError(
            "Only one choice is supported: 'n' must be 1.", param="n", code="unsupported_value"
        )
    for index, message in enumerate(request.messages):
        content = message.content
        if isinstance(content, list):
            for part_index, part in enumerate(content):
                param = f"messages[{index}].content[{part_index}]"
                if part.type == "image_url":
                    _check_image_part(message, part, param)
                    continue
                if part.type != "text":
                    raise InvalidRequestError(
                        f"Unsupported content part type {part.type!r} at '{param}.type': "
                        "this gateway accepts only 'text' and 'image_url' parts.",
                        param=f"{param}.type",
                        code="unsupported_value",
                    )
                if part.text is None:
                    raise InvalidRequestError(
                        f"Missing required parameter: '{param}.text'.", param=f"{param}.text"
                    )
        elif content is None and not (isinstance(message, AssistantMessage) and message.tool_calls):
            raise InvalidRequestError(
                f"Invalid value for 'messages[{index}].content': an assistant message without "
                "'tool_calls' must have content.",
                param=f"messages[{index}].content",
            )


def _check_image_part(message: Message, part: ContentPart, param: str) -> None:
    if not isinstance(message, UserMessage):
        raise InvalidRequestError(
            f"Unsupported content part type 'image_url' at '{param}.type': images are accepted "
            "in user messages only.",
            param=f"{param}.type",
            code="unsupported_value",
        )
    if part.image_url is None:
        raise InvalidRequestError(
            f"Missing required parameter: '{param}.image_url'.", param=f"{param}.image_url"
        )


def message_text(message: Message) -> str:
    """The message's text: a string content as is, text parts joined with newlines."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text or "" for part in content if part.type == "text")


def image_parts(request: ChatRequest) -> list[tuple[str, ImageUrl]]:
    """The request's ``image_url`` parts, with their paths, in order."""
    found: list[tuple[str, ImageUrl]] = []
    for index, message in enumerate(request.messages):
        if isinstance(message, UserMessage) and isinstance(message.content, list):
            for part_index, part in enumerate(message.content):
                image = part.image if part.type == "image_url" else None
                if image is not None:
                    found.append((f"messages[{index}].content[{part_index}]", image))
    return found


def check_limits(
    request: ChatRequest,
    *,
    max_messages: int,
    max_content_chars: int,
    images: ImageLimits | None = None,
) -> None:
    """Refuse a request with more messages, more content, or more or larger images than the
    gateway accepts (``images``: the defaults of :class:`ImageLimits` when ``None``)."""
    budget = ImageBudget(images or ImageLimits())
    for param, image in image_parts(request):
        budget.add(image.url, param=param)
    if len(request.messages) > max_messages:
        raise InvalidRequestError(
            f"Too many messages: {len(request.messages)} (at most {max_messages}; "
            "gateway.http.maxMessages).",
            param="messages",
            code="too_many_messages",
        )
    total = 0
    for message in request.messages:
        total += len(message_text(message))
        if total > max_content_chars:
            raise InvalidRequestError(
                f"The messages hold more than {max_content_chars} characters of content "
                "(gateway.http.maxContentChars).",
                param="messages",
                code="content_too_long",
            )


_ROLES: dict[type, Role] = {
    SystemMessage: "system",
    DeveloperMessage: "developer",
    UserMessage: "user",
    AssistantMessage: "assistant",
    ToolMessage: "tool",
}

_EMPTY_SCHEMA: dict[str, object] = {"type": "object", "properties": {}}


def to_messages(messages: list[Message]) -> tuple[neutral.Message, ...]:
    """The request's messages as neutral :class:`~trio_gateway.messages.Message` values, their
    images decoded and checked (call :func:`check_limits` first: it bounds their sizes)."""
    return tuple([_to_message(index, message) for index, message in enumerate(messages)])


def _images(index: int, message: UserMessage) -> tuple[neutral.Image, ...]:
    if not isinstance(message.content, list):
        return ()
    images = []
    for part_index, part in enumerate(message.content):
        image = part.image if part.type == "image_url" else None
        if image is not None:
            param = f"messages[{index}].content[{part_index}]"
            images.append(read_image_url(image.url, image.detail, param=param))
    return tuple(images)


def _to_message(index: int, message: Message) -> neutral.Message:
    text = message_text(message)
    if isinstance(message, UserMessage):
        return neutral.Message("user", text, name=message.name, images=_images(index, message))
    if isinstance(message, ToolMessage):
        return neutral.Message("tool", text, tool_call_id=message.tool_call_id)
    if isinstance(message, AssistantMessage) and message.tool_calls:
        calls = tuple(
            neutral.ToolCall(call.id, call.function.name, call.function.arguments)
            for call in message.tool_calls
        )
        return neutral.Message("assistant", text, name=message.name, tool_calls=calls)
    return neutral.Message(_ROLES[type(message)], text, name=message.name)


def to_tool_specs(tools: list[Tool] | None) -> tuple[neutral.ToolSpec, ...]:
    """The request's ``tools`` as specs offered to the model."""
    return tuple(
        neutral.ToolSpec(
            tool.function.name,
            tool.function.description or "",
            tool.function.parameters if tool.function.parameters is not None else _EMPTY_SCHEMA,
        )
        for tool in tools or ()
    )
