"""Tests for :mod:`trio_gateway.wire.chat`: parsing and validating chat completion requests."""

from __future__ import annotations

import json

import pytest

from trio_gateway.errors import InvalidRequestError
from trio_gateway.wire.chat import (
    AssistantMessage,
    ChatRequest,
    ContentPart,
    DeveloperMessage,
    FunctionCall,
    FunctionDefinition,
    StreamOptions,
    SystemMessage,
    Tool,
    ToolCall,
    ToolMessage,
    UserMessage,
    message_text,
    parse_chat_request,
)

USER_HI: dict[str, object] = {"role": "user", "content": "hi"}


def body(**fields: object) -> bytes:
    """A request body with one user message, plus ``fields`` (which may replace ``messages``)."""
    request: dict[str, object] = {"messages": [USER_HI]}
    request.update(fields)
    return json.dumps(request).encode()


def parse_error(raw: bytes) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request(raw)
    return info.value


# --- valid requests ------------------------------------------------------------------------------


def test_parse_chat_request_minimal() -> None:
    request = parse_chat_request(b'{"messages":[{"role":"user","content":"hi"}]}')

    assert request == ChatRequest(messages=[UserMessage(content="hi")])
    assert request.model == "epiloop"
    assert not request.stream
    assert request.stream_options is None
    assert request.user is None
    assert request.token_limit is None
    assert request.include_usage is False
    assert request.tools is None


def test_parse_chat_request_default_model_is_epiloop() -> None:
    assert parse_chat_request(body()).model == "epiloop"
    assert parse_chat_request(body(model="epiloop:ops")).model == "epiloop:ops"


def test_parse_chat_request_every_role() -> None:
    messages = [
        {"role": "system", "content": "be brief", "name": "sys"},
        {"role": "developer", "content": "dev rules"},
        {"role": "user", "content": "what time is it?", "name": "alice"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "clock", "arguments": '{"tz": "UTC"}'},
                }
            ],
        },
        {"role": "tool", "content": "12:00", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "It is noon."},
    ]

    request = parse_chat_request(body(messages=messages))

    assert request.messages == [
        SystemMessage(content="be brief", name="sys"),
        DeveloperMessage(content="dev rules"),
        UserMessage(content="what time is it?", name="alice"),
        AssistantMessage(
            content=None,
            tool_calls=[ToolCall(id="call_1", function=FunctionCall("clock", '{"tz": "UTC"}'))],
        ),
        ToolMessage(content="12:00", tool_call_id="call_1"),
        AssistantMessage(content="It is noon."),
    ]
    tool_call_message = request.messages[3]
    assert isinstance(tool_call_message, AssistantMessage)
    assert tool_call_message.tool_calls is not None
    assert tool_call_message.tool_calls[0].type == "function"


def test_parse_chat_request_assistant_with_tool_calls_and_no_content_key() -> None:
    message = {
        "role": "assistant",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}],
    }

    request = parse_chat_request(body(messages=[USER_HI, message]))

    assert request.messages[1] == AssistantMessage(
        content=None, tool_calls=[ToolCall(id="c", function=FunctionCall("f", ""))]
    )


def test_parse_chat_request_content_as_array_of_text_parts() -> None:
    content = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]

    request = parse_chat_request(body(messages=[{"role": "user", "content": content}]))

    assert request.messages == [
        UserMessage(content=[ContentPart("text", "first"), ContentPart("text", "second")])
    ]


def test_parse_chat_request_ignores_unknown_top_level_fields() -> None:
    request = parse_chat_request(
        body(logit_bias={"50256": -100}, service_tier="auto", metadata={"a": "b"}, store=True)
    )

    assert request == ChatRequest(messages=[UserMessage(content="hi")])


def test_parse_chat_request_all_sampling_options() -> None:
    request = parse_chat_request(
        body(
            model="epiloop:main",
            stream=True,
            stream_options={"include_usage": True},
            user="alice",
            max_tokens=100,
            temperature=0,
            top_p=1,
            n=1,
            presence_penalty=-2,
            frequency_penalty=2,
            stop=["a", "b", "c", "d"],
            seed=7,
            tool_choice="auto",
        )
    )

    assert request.model == "epiloop:main"
    assert request.stream is True
    assert request.stream_options == StreamOptions(include_usage=True)
    assert request.user == "alice"
    assert request.max_tokens == 100
    assert request.temperature == 0.0
    assert request.top_p == 1.0
    assert request.n == 1
    assert request.presence_penalty == -2.0
    assert request.frequency_penalty == 2.0
    assert request.stop == ["a", "b", "c", "d"]
    assert request.seed == 7
    assert request.tool_choice == "auto"


def test_parse_chat_request_stop_as_string() -> None:
    assert parse_chat_request(body(stop="END")).stop == "END"


# --- properties ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"max_tokens": 10}, 10),
        ({"max_completion_tokens": 20}, 20),
        ({"max_tokens": 10, "max_completion_tokens": 20}, 20),
        ({"max_tokens": 30, "max_completion_tokens": 5}, 5),
    ],
)
def test_chat_request_token_limit_prefers_max_completion_tokens(
    fields: dict[str, object], expected: int | None
) -> None:
    assert parse_chat_request(body(**fields)).token_limit == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, False),
        ({"stream": True}, False),
        ({"stream": True, "stream_options": {}}, False),
        ({"stream": True, "stream_options": {"include_usage": False}}, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True),
    ],
)
def test_chat_request_include_usage(fields: dict[str, object], expected: bool) -> None:
    assert parse_chat_request(body(**fields)).include_usage is expected


# --- message_text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (UserMessage(content="plain"), "plain"),
        (UserMessage(content=""), ""),
        (SystemMessage(content=[ContentPart("text", "a"), ContentPart("text", "b")]), "a\nb"),
        (UserMessage(content=[ContentPart("text", "only")]), "only"),
        (UserMessage(content=[]), ""),
        (AssistantMessage(content=None), ""),
        (AssistantMessage(content="said"), "said"),
        (
            ToolMessage(
                content=[ContentPart("text", "x"), ContentPart("text", "")], tool_call_id="c"
            ),
            "x\n",
        ),
    ],
)
def test_message_text(
    message: UserMessage | SystemMessage | AssistantMessage | ToolMessage, expected: str
) -> None:
    assert message_text(message) == expected


def test_message_text_of_parsed_parts() -> None:
    content = [{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}]
    request = parse_chat_request(body(messages=[{"role": "user", "content": content}]))

    assert message_text(request.messages[0]) == "line 1\nline 2"


# --- whole-body errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"   ", b"\r\n\t "])
def test_parse_chat_request_rejects_empty_body(raw: bytes) -> None:
    error = parse_error(raw)

    assert error.param is None
    assert error.code is None
    assert error.http_status == 400
    assert error.error_type == "invalid_request_error"
    assert "empty" in error.message
    assert "'messages'" in error.message


@pytest.mark.parametrize("raw", [b"{not json", b'{"messages": [', b"\xff\xfe", b"nul"])
def test_parse_chat_request_rejects_non_json(raw: bytes) -> None:
    error = parse_error(raw)

    assert error.param is None
    assert error.code == "invalid_json"
    assert error.message.startswith("The request body is not valid JSON (")


@pytest.mark.parametrize(
    ("raw", "got"),
    [(b"[]", "array"), (b'[{"messages": []}]', "array"), (b'"hello"', "str"), (b"42", "int")],
)
def test_parse_chat_request_rejects_non_object_body(raw: bytes, got: str) -> None:
    error = parse_error(raw)

    assert error.param is None
    assert error.code is None
    assert error.message == (
        f"The request body must be a JSON object: expected `object`, got `{got}`."
    )


# --- field errors --------------------------------------------------------------------------------

FIELD_ERRORS = [
    pytest.param(b"{}", "messages", None, id="missing-messages"),
    pytest.param(body(messages=[]), "messages", None, id="empty-messages"),
    pytest.param(body(messages=None), "messages", None, id="null-messages"),
    pytest.param(body(messages="hi"), "messages", None, id="messages-not-array"),
    pytest.param(body(messages=["hi"]), "messages[0]", None, id="message-not-object"),
    pytest.param(body(messages=[USER_HI, 5]), "messages[1]", None, id="second-message-number"),
    pytest.param(
        body(messages=[{"role": "bot", "content": "x"}]),
        "messages[0].role",
        None,
        id="unknown-role",
    ),
    pytest.param(body(messages=[{"content": "x"}]), "messages[0].role", None, id="missing-role"),
    pytest.param(
        body(messages=[{"role": "user"}]), "messages[0].content", None, id="missing-content"
    ),
    pytest.param(
        body(messages=[{"role": "system"}]), "messages[0].content", None, id="system-no-content"
    ),
    pytest.param(
        body(messages=[{"role": "user", "content": 5}]),
        "messages[0].content",
        None,
        id="content-number",
    ),
    pytest.param(
        body(messages=[{"role": "user", "content": None}]),
        "messages[0].content",
        None,
        id="user-content-null",
    ),
    pytest.param(
        body(messages=[{"role": "user", "content": {"type": "text", "text": "x"}}]),
        "messages[0].content",
        None,
        id="content-object",
    ),
    pytest.param(
        body(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
        "messages[0].content[0].type",
        "unsupported_value",
        id="audio-part",
    ),
    pytest.param(
        body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        "messages[0].content[0].image_url.url",
        None,
        id="image-part-without-url",
    ),
    pytest.param(
        body(
            messages=[
                {
                    "role": "system",
                    "content": [{"type": "image_url", "image_url": {"url": "https://a.example/x"}}],
                }
            ]
        ),
        "messages[0].content[0].type",
        "unsupported_value",
        id="image-part-in-system-message",
    ),
    pytest.param(
        body(
            messages=[
                USER_HI,
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "file"}]},
            ]
        ),
        "messages[1].content[1].type",
        "unsupported_value",
        id="second-part-not-text",
    ),
    pytest.param(
        body(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        "messages[0].content[0].text",
        None,
        id="part-without-text",
    ),
    pytest.param(
        body(messages=[{"role": "user", "content": [{"type": "text", "text": None}]}]),
        "messages[0].content[0].text",
        None,
        id="part-text-null",
    ),
    pytest.param(
        body(messages=[{"role": "user", "content": [{"text": "x"}]}]),
        "messages[0].content[0].type",
        None,
        id="part-without-type",
    ),
    pytest.param(
        body(messages=[{"role": "user", "content": ["x"]}]),
        "messages[0].content[0]",
        None,
        id="part-not-object",
    ),
    pytest.param(
        body(messages=[{"role": "tool", "content": "x"}]),
        "messages[0].tool_call_id",
        None,
        id="tool-without-call-id",
    ),
    pytest.param(
        body(messages=[{"role": "assistant"}]),
        "messages[0].content",
        None,
        id="assistant-nothing",
    ),
    pytest.param(
        body(messages=[{"role": "assistant", "content": None}]),
        "messages[0].content",
        None,
        id="assistant-null-content",
    ),
    pytest.param(
        body(messages=[USER_HI, {"role": "assistant", "content": None, "tool_calls": []}]),
        "messages[1].content",
        None,
        id="assistant-empty-tool-calls",
    ),
    pytest.param(
        body(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]),
        "messages[0].tool_calls[0].function",
        None,
        id="tool-call-without-function",
    ),
    pytest.param(body(stream="true"), "stream", None, id="stream-string"),
    pytest.param(body(stream=1), "stream", None, id="stream-int"),
    pytest.param(body(model=5), "model", None, id="model-number"),
    pytest.param(body(temperature=3), "temperature", None, id="temperature-high"),
    pytest.param(body(temperature=-1), "temperature", None, id="temperature-negative"),
    pytest.param(body(temperature="1"), "temperature", None, id="temperature-string"),
    pytest.param(body(top_p=1.5), "top_p", None, id="top-p-high"),
    pytest.param(body(top_p=-0.1), "top_p", None, id="top-p-negative"),
    pytest.param(body(n=2), "n", "unsupported_value", id="n-two"),
    pytest.param(body(n=0), "n", None, id="n-zero"),
    pytest.param(body(max_tokens=0), "max_tokens", None, id="max-tokens-zero"),
    pytest.param(body(max_tokens=-5), "max_tokens", None, id="max-tokens-negative"),
    pytest.param(body(max_tokens=1.5), "max_tokens", None, id="max-tokens-float"),
    pytest.param(
        body(max_completion_tokens=0), "max_completion_tokens", None, id="max-completion-zero"
    ),
    pytest.param(body(presence_penalty=2.5), "presence_penalty", None, id="presence-high"),
    pytest.param(body(presence_penalty=-3), "presence_penalty", None, id="presence-low"),
    pytest.param(body(frequency_penalty=2.01), "frequency_penalty", None, id="frequency-high"),
    pytest.param(body(stop=["a", "b", "c", "d", "e"]), "stop", None, id="stop-five"),
    pytest.param(body(stop=5), "stop", None, id="stop-number"),
    pytest.param(body(stop=["a", 1]), "stop[1]", None, id="stop-list-number"),
    pytest.param(
        body(stream_options={"include_usage": True}), "stream_options", None, id="options-no-stream"
    ),
    pytest.param(
        body(stream=False, stream_options={"include_usage": True}),
        "stream_options",
        None,
        id="options-stream-false",
    ),
    pytest.param(
        body(stream=True, stream_options={"include_usage": "yes"}),
        "stream_options.include_usage",
        None,
        id="include-usage-string",
    ),
    pytest.param(body(user=5), "user", None, id="user-number"),
    pytest.param(
        body(tools=[{"type": "function", "function": {"name": "bad name"}}]),
        "tools[0].function.name",
        None,
        id="tool-name-space",
    ),
    pytest.param(
        body(tools=[{"type": "function", "function": {"name": ""}}]),
        "tools[0].function.name",
        None,
        id="tool-name-empty",
    ),
    pytest.param(
        body(tools=[{"type": "function", "function": {"name": "x" * 65}}]),
        "tools[0].function.name",
        None,
        id="tool-name-too-long",
    ),
    pytest.param(
        body(tools=[{"type": "function", "function": {}}]),
        "tools[0].function.name",
        None,
        id="tool-name-missing",
    ),
    pytest.param(
        body(tools=[{"type": "retrieval", "function": {"name": "f"}}]),
        "tools[0].type",
        None,
        id="tool-type-unknown",
    ),
    pytest.param(
        body(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
        "tools[0].function.parameters",
        None,
        id="tool-parameters-array",
    ),
]


@pytest.mark.parametrize(("raw", "param", "code"), FIELD_ERRORS)
def test_parse_chat_request_rejects_bad_field(raw: bytes, param: str, code: str | None) -> None:
    error = parse_error(raw)

    assert error.param == param
    assert error.code == code
    assert f"'{param}" in error.message
    assert error.http_status == 400
    assert error.error_type == "invalid_request_error"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{}", "Missing required parameter: 'messages'."),
        (body(messages=[]), "Invalid value for 'messages': expected `array` of length >= 1."),
        (
            body(messages=[{"role": "user"}]),
            "Missing required parameter: 'messages[0].content'.",
        ),
        (body(stream="true"), "Invalid value for 'stream': expected `bool | null`, got `str`."),
        (body(temperature=3), "Invalid value for 'temperature': expected `float` <= 2.0."),
        (body(n=2), "Only one choice is supported: 'n' must be 1."),
        (
            body(stream_options={"include_usage": True}),
            "'stream_options' is only allowed when 'stream' is true.",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
            "Missing required parameter: 'messages[0].content[0].image_url'.",
        ),
        (
            body(messages=[{"role": "user", "content": [{"type": "file"}]}]),
            "Unsupported content part type 'file' at 'messages[0].content[0].type': "
            "this gateway accepts only 'text' and 'image_url' parts.",
        ),
        (
            body(messages=[{"role": "assistant"}]),
            "Invalid value for 'messages[0].content': an assistant message without "
            "'tool_calls' must have content.",
        ),
    ],
)
def test_parse_chat_request_error_messages(raw: bytes, message: str) -> None:
    assert parse_error(raw).message == message


def test_parse_chat_request_unknown_role_lists_the_roles() -> None:
    error = parse_error(body(messages=[{"role": "bot", "content": "x"}]))

    assert "'bot'" in error.message
    assert "expected one of 'system', 'developer', 'user', 'assistant', 'tool'" in error.message


def test_parse_chat_request_stream_options_with_stream_true() -> None:
    request = parse_chat_request(body(stream=True, stream_options={"include_usage": True}))

    assert request.stream is True
    assert request.include_usage is True


def test_parse_chat_request_stream_options_null_without_stream() -> None:
    request = parse_chat_request(body(stream_options=None))

    assert request.stream_options is None
    assert request.include_usage is False


# --- tools ---------------------------------------------------------------------------------------


def test_parse_chat_request_tool_definitions() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather-v2",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": True,
            },
        },
        {"function": {"name": "n" * 64}},
    ]

    request = parse_chat_request(body(tools=tools, tool_choice={"type": "function"}))

    assert request.tools == [
        Tool(
            function=FunctionDefinition(
                name="get_weather-v2",
                description="Weather for a city",
                parameters={"type": "object", "properties": {"city": {"type": "string"}}},
                strict=True,
            )
        ),
        Tool(function=FunctionDefinition(name="n" * 64)),
    ]
    assert request.tool_choice == {"type": "function"}


@pytest.mark.parametrize("name", ["get weather", "naïve", "a.b", "x" * 65, "", "a/b", "f\tg"])
def test_parse_chat_request_rejects_invalid_function_name(name: str) -> None:
    error = parse_error(body(tools=[{"type": "function", "function": {"name": name}}]))

    assert error.param == "tools[0].function.name"
    assert "'tools[0].function.name'" in error.message


def test_parse_chat_request_rejects_function_name_with_trailing_newline() -> None:
    # The pattern ends with ``$``, which also matches just before a final newline.
    error = parse_error(body(tools=[{"type": "function", "function": {"name": "get_weather\n"}}]))

    assert error.param == "tools[0].function.name"


def test_parse_chat_request_stream_null_means_not_streaming() -> None:
    request = parse_chat_request(body(stream=None))

    assert request.stream is None
    assert not request.stream


def test_parse_chat_request_invalid_utf8_inside_a_string_is_invalid_json() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request(b'{"messages": [{"role": "user", "content": "\xff"}]}')
    assert caught.value.code == "invalid_json"
    assert caught.value.message == (
        "The request body is not valid JSON (invalid UTF-8 in a string)."
    )


def test_parse_chat_request_survives_deep_nesting() -> None:
    deep = b'{"messages": [{"role": "user", "content": "x"}], "tool_choice": {"a": '
    deep += b"[" * 100_000 + b"]" * 100_000 + b"}}"
    with pytest.raises(InvalidRequestError):
        parse_chat_request(deep)
