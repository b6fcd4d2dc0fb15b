"""Tests for :mod:`trio_gateway.wire.responses`: parsing a Responses request, with no event loop,
and a hypothesis fuzz of the parser (any JSON, a wrong value in any field)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.errors import InvalidRequestError
from trio_gateway.messages import Message, ToolCall, ToolSpec
from trio_gateway.wire.responses import (
    ResponsesRequest,
    chat_tool_choice,
    check_limits,
    parse_responses_request,
    to_messages,
    to_tool_specs,
)


def parse(body: object) -> ResponsesRequest:
    return parse_responses_request(json.dumps(body).encode())


def refusal(body: object) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        parse(body)
    return caught.value


def test_parse_string_input_is_one_user_message() -> None:
    request = parse({"model": "epiloop:main", "input": "hi", "instructions": "Be brief."})

    assert request.model == "epiloop:main"
    assert to_messages(request) == (Message("system", "Be brief."), Message("user", "hi"))
    assert request.stream is False
    assert request.store is True


def test_parse_defaults() -> None:
    request = parse({"input": "hi"})

    assert request.model == "epiloop"
    assert request.tools == ()
    assert request.tool_choice is None
    assert request.parallel_tool_calls is True
    assert request.metadata == {}


def test_parse_items_become_messages_with_tool_calls_and_results() -> None:
    request = parse(
        {
            "input": [
                {"role": "system", "content": "sys"},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "a"},
                        {"type": "input_text", "text": "b"},
                    ],
                },
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_1",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "checking", "annotations": []}],
                },
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "[]"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "two"}],
                },
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "c3", "name": "f", "arguments": "{}"},
            ]
        }
    )

    assert to_messages(request) == (
        Message("system", "sys"),
        Message("user", "a\nb"),
        Message(
            "assistant",
            "checking",
            tool_calls=(ToolCall("c1", "f", "{}"), ToolCall("c2", "g", "[]")),
        ),
        Message("tool", "one", tool_call_id="c1"),
        Message("tool", "two", tool_call_id="c2"),
        Message("assistant", "", tool_calls=(ToolCall("c3", "f", "{}"),)),
    )


def test_parse_function_tools_and_tool_choice() -> None:
    request = parse(
        {
            "input": "hi",
            "tools": [
                {
                    "type": "function",
                    "name": "f",
                    "description": "F.",
                    "parameters": {"type": "object"},
                },
                {"type": "function", "name": "g"},
            ],
            "tool_choice": {"type": "function", "name": "f"},
        }
    )

    assert to_tool_specs(request.tools) == (
        ToolSpec("f", "F.", {"type": "object"}),
        ToolSpec("g", "", {"type": "object", "properties": {}}),
    )
    assert chat_tool_choice(request) == {"type": "function", "function": {"name": "f"}}
    assert chat_tool_choice(parse({"input": "hi", "tool_choice": "required"})) == "required"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "x"}]}]},
            "input[0].content[0].type",
            "unsupported_value",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
            None,
        ),
        (
            {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input[0].content[0].type",
            "unsupported_value",
        ),
        (
            {
                "input": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {
                        "role": "user",
                        "content": [{"type": "input_text", "text": "c"}, {"type": "refusal"}],
                    },
                ]
            },
            "input[2].content[1].type",
            "unsupported_value",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
            "input[0].content[0].type",
            "unsupported_value",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
            None,
        ),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", "unsupported_value"),
        ({"input": [{"type": "web_search_call"}]}, "input[0].type", "unsupported_value"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", None),
        ({"input": [{"content": "x"}]}, "input[0].role", None),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]},
            "input[0].output",
            None,
        ),
        (
            {
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [{"type": "input_image"}],
                    }
                ]
            },
            "input[0].output[0].type",
            "unsupported_value",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
            "input[0].arguments",
            None,
        ),
        ({"input": [7]}, "input[0]", None),
        ({"input": []}, "input", None),
        ({}, "input", None),
        ({"input": 3}, "input", None),
        ({"input": "hi", "tools": [{"type": "file_search"}]}, "tools[0].type", "unsupported_value"),
        (
            {"input": "hi", "tools": [{"type": "function", "name": "bad name"}]},
            "tools[0].name",
            None,
        ),
        ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name", None),
        ({"input": "hi", "tool_choice": "sometimes"}, "tool_choice", None),
        (
            {"input": "hi", "tool_choice": {"type": "web_search"}},
            "tool_choice.type",
            "unsupported_value",
        ),
        ({"input": "hi", "tool_choice": {"type": "function"}}, "tool_choice.name", None),
        ({"input": "hi", "background": True, "store": False}, "background", None),
        ({"input": "hi", "previous_response_id": ""}, "previous_response_id", None),
        ({"input": "hi", "conversation": "conv_1"}, "conversation", "unsupported_value"),
        ({"input": "hi", "prompt": {"id": "p"}}, "prompt", "unsupported_value"),
        (
            {"input": "hi", "text": {"format": {"type": "json_schema"}}},
            "text.format.type",
            "unsupported_value",
        ),
        (
            {"input": "hi", "instructions": [{"role": "system", "content": "x"}]},
            "instructions",
            "unsupported_value",
        ),
        ({"input": "hi", "temperature": 3}, "temperature", None),
        ({"input": "hi", "top_p": "1"}, "top_p", None),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens", None),
        ({"input": "hi", "stream": "true"}, "stream", None),
        ({"input": "hi", "metadata": {"k": 1}}, "metadata", None),
        ({"input": "hi", "metadata": {"k": "v" * 513}}, "metadata", None),
        ({"input": "hi", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", None),
    ],
)
def test_parse_refuses_with_the_path(body: dict[str, Any], param: str, code: str | None) -> None:
    error = refusal(body)

    assert error.param == param, error.message
    assert f"'{param}'" in error.message
    if code is not None:
        assert error.code == code
    assert error.http_status == 400


def test_parse_accepts_background_and_previous_response_id() -> None:
    request = parse({"input": "hi", "background": True, "previous_response_id": "resp_1"})
    assert (request.background, request.store) == (True, True)
    assert request.previous_response_id == "resp_1"


def test_parse_accepts_background_false_and_ignores_unknown_fields() -> None:
    request = parse({"input": "hi", "background": False, "include": ["x"], "truncation": "auto"})

    assert to_messages(request) == (Message("user", "hi"),)


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"", None), (b"{", "invalid_json"), (b'{"input": "\xff"}', "invalid_json"), (b"[1]", None)],
)
def test_parse_refuses_bodies_that_are_not_a_json_object(body: bytes, code: str | None) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_responses_request(body)

    assert caught.value.code == code


def test_parse_refuses_invalid_utf8_inside_an_item() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_responses_request(b'{"input": [{"role": "user", "content": "\xff"}]}')

    assert caught.value.code == "invalid_json"


def test_check_limits_counts_items_and_content() -> None:
    request = parse({"input": [{"role": "user", "content": "abcd"}] * 3, "instructions": "xy"})

    check_limits(request, max_messages=4, max_content_chars=14)
    with pytest.raises(InvalidRequestError) as too_many:
        check_limits(request, max_messages=3, max_content_chars=100)
    with pytest.raises(InvalidRequestError) as too_long:
        check_limits(request, max_messages=4, max_content_chars=13)

    assert too_many.value.code == "too_many_messages"
    assert too_long.value.code == "content_too_long"


# --- fuzz ---------------------------------------------------------------------------------------

_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(
        (
            "",
            "message",
            "function_call",
            "function_call_output",
            "reasoning",
            "input_text",
            "output_text",
            "user",
            "assistant",
            "function",
            "auto",
            "epiloop:main",
        )
    )
    | st.text(max_size=20)
)
_json = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)

_SITES: tuple[tuple[str | int, ...], ...] = (
    ("model",),
    ("input",),
    ("input", 0),
    ("input", 0, "role"),
    ("input", 0, "content"),
    ("input", 0, "content", 0),
    ("input", 0, "content", 0, "type"),
    ("input", 0, "content", 0, "text"),
    ("input", 1),
    ("input", 1, "type"),
    ("input", 1, "call_id"),
    ("input", 1, "arguments"),
    ("input", 2, "output"),
    ("instructions",),
    ("tools",),
    ("tools", 0),
    ("tools", 0, "type"),
    ("tools", 0, "name"),
    ("tools", 0, "parameters"),
    ("tool_choice",),
    ("max_output_tokens",),
    ("temperature",),
    ("top_p",),
    ("metadata",),
    ("store",),
    ("stream",),
    ("user",),
    ("background",),
    ("text",),
)


def _base() -> dict[str, Any]:
    return {
        "model": "epiloop",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    }


def outcome(data: bytes) -> ResponsesRequest | InvalidRequestError:
    """The parsed request, or the refusal (any other exception fails the test)."""
    try:
        return parse_responses_request(data)
    except InvalidRequestError as error:
        return error


@settings(max_examples=300, deadline=None, database=None)
@given(site=st.sampled_from(_SITES), value=_json)
def test_parse_fuzz_a_wrong_value_anywhere_is_refused_naming_its_field(
    site: tuple[str | int, ...], value: object
) -> None:
    body = _base()
    target: Any = body
    for key in site[:-1]:
        target = target[key]
    target[site[-1]] = value
    result = outcome(json.dumps(body).encode())
    if isinstance(result, InvalidRequestError):
        assert result.http_status == 400
        top = str(site[0])
        param = result.param
        assert param is not None, result.message
        assert param == top or param.startswith((f"{top}[", f"{top}.")), (param, result.message)
    else:
        # Whatever was accepted translates into the runtime's terms.
        to_messages(result)
        to_tool_specs(result.tools)
        chat_tool_choice(result)


@settings(max_examples=300, deadline=None, database=None)
@given(body=_json | st.dictionaries(st.sampled_from(tuple(s[0] for s in _SITES)), _json))
def test_parse_fuzz_any_json_parses_or_is_a_400(body: object) -> None:
    result = outcome(json.dumps(body).encode())
    if isinstance(result, InvalidRequestError):
        assert result.http_status == 400
    else:
        to_messages(result)


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.binary(max_size=200))
def test_parse_fuzz_any_bytes_parse_or_are_a_400(data: bytes) -> None:
    result = outcome(data)
    if isinstance(result, InvalidRequestError):
        assert result.http_status == 400


def test_input_items_list_messages_calls_and_images_without_inline_bytes() -> None:
    from trio_gateway.wire.responses import input_items

    request = parse(
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "look"},
                        {"type": "input_image", "image_url": "https://example.com/a.png"},
                        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
                    ],
                },
                {"role": "assistant", "content": "seen"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "ok"},
            ]
        }
    )
    listed = input_items(request, "abc")
    assert [item["id"] for item in listed] == [
        "msg_abc_in0",
        "msg_abc_in1",
        "fc_abc_in2",
        "fco_abc_in3",
    ]
    first = listed[0]["content"]
    assert isinstance(first, list)
    assert first[1] == {
        "type": "input_image",
        "image_url": "https://example.com/a.png",
        "file_id": None,
        "detail": "auto",
    }
    assert first[2]["image_url"] is None  # inline bytes are not kept twice
    assert listed[1]["content"] == [{"type": "output_text", "text": "seen", "annotations": []}]
    assert listed[3]["output"] == "ok"
