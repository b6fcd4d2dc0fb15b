"""Tests for :mod:`trio_gateway.tools.base`: declarative arguments and the call deadline."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest
import trio
from trio.testing import MockClock

from trio_gateway.config.schema import ToolsConfig
from trio_gateway.errors import ToolError
from trio_gateway.tools import (
    Arguments,
    StructTool,
    ToolContext,
    arguments_schema,
    call_tool,
    default_registry,
    parse_arguments,
    truncate_result,
)
from trio_gateway.tools.builtin.files import ReadFileTool


class Point(Arguments, frozen=True):
    x: int
    y: int


class Shape(Arguments, frozen=True):
    """Not shown to the model: the tool description says what the tool does."""

    name: Annotated[str, msgspec.Meta(min_length=1, description="The shape's name.")]
    corners: list[Point] = msgspec.field(default_factory=list)
    closed: bool = True


class ShapeTool(StructTool[Shape]):
    def __init__(self) -> None:
        super().__init__(name="draw", description="Draw a shape.", arguments=Shape)

    async def run(self, arguments: Shape, context: ToolContext) -> str:
        return f"{arguments.name}: {len(arguments.corners)} corners"


class SleepArguments(Arguments, frozen=True):
    seconds: float


class SleepTool(StructTool[SleepArguments]):
    def __init__(self) -> None:
        super().__init__(name="sleep", description="Sleep.", arguments=SleepArguments)
        self.cancelled = False

    async def run(self, arguments: SleepArguments, context: ToolContext) -> str:
        try:
            await trio.sleep(arguments.seconds)
        except trio.Cancelled:
            self.cancelled = True
            raise
        return "slept"


def test_arguments_schema_inlines_the_struct_as_an_object_schema() -> None:
    schema = arguments_schema(Shape)
    assert schema["type"] == "object"
    assert schema["required"] == ["name"]
    assert schema["additionalProperties"] is False
    assert "title" not in schema
    assert "description" not in schema
    properties = schema["properties"]
    assert isinstance(properties, dict)
    assert properties["name"] == {
        "type": "string",
        "minLength": 1,
        "description": "The shape's name.",
    }
    assert properties["closed"] == {"type": "boolean", "default": True}
    # Nested structs stay under $defs, which the references still reach.
    assert properties["corners"] == {
        "type": "array",
        "items": {"$ref": "#/$defs/Point"},
        "default": [],
    }
    definitions = schema["$defs"]
    assert isinstance(definitions, dict)
    assert set(definitions) == {"Point"}


def test_arguments_schema_of_a_struct_without_nested_structs_has_no_defs() -> None:
    assert "$defs" not in arguments_schema(Point)


def test_struct_tool_spec_carries_the_derived_schema() -> None:
    tool = ShapeTool()
    assert tool.spec.name == "draw"
    assert tool.spec.description == "Draw a shape."
    assert tool.spec.parameters == arguments_schema(Shape)
    assert repr(tool) == "<ShapeTool draw>"


def test_parse_arguments_decodes_into_the_struct() -> None:
    parsed = parse_arguments(Shape, '{"name": "square", "corners": [{"x": 0, "y": 1}]}', tool="d")
    assert parsed == Shape(name="square", corners=[Point(0, 1)])


def test_parse_arguments_reads_empty_text_as_an_empty_object() -> None:
    class Nothing(Arguments, frozen=True):
        flag: bool = False

    assert parse_arguments(Nothing, "", tool="t") == Nothing()
    assert parse_arguments(Nothing, "  \n", tool="t") == Nothing()


def test_parse_arguments_invalid_json_is_a_tool_error_with_the_expected_call() -> None:
    with pytest.raises(ToolError) as caught:
        parse_arguments(Shape, '{"name": "sq', tool="draw")
    assert "not valid JSON" in caught.value.message
    assert "draw(name: string, corners?: array, closed?: boolean)" in caught.value.message


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("{}", "missing required field `name`"),
        ('{"name": 3}', "Expected `str`, got `int` - at `$.name`"),
        ('{"name": ""}', "length >= 1 - at `$.name`"),
        ('{"name": "a", "colour": "red"}', "unknown field `colour`"),
        ('{"name": "a", "corners": [{"x": 1}]}', "missing required field `y` - at `$.corners[0]`"),
        ("[1, 2]", "Expected `object`, got `array`"),
        ("null", "Expected `object`, got `null`"),
    ],
)
def test_parse_arguments_schema_violation_is_a_tool_error_naming_the_field(
    text: str, complaint: str
) -> None:
    with pytest.raises(ToolError) as caught:
        parse_arguments(Shape, text, tool="draw")
    assert caught.value.message.startswith("invalid arguments for draw: ")
    assert complaint in caught.value.message
    assert "expected draw(name: string" in caught.value.message


async def test_struct_tool_call_validates_then_runs(context: ToolContext) -> None:
    tool = ShapeTool()
    with trio.fail_after(5):
        assert await tool.call('{"name": "tri", "corners": [], "closed": false}', context) == (
            "tri: 0 corners"
        )
        with pytest.raises(ToolError, match="invalid arguments for draw"):
            await tool.call('{"name": 1}', context)


def test_built_in_schemas_are_closed_objects() -> None:
    for tool in default_registry():
        parameters = tool.spec.parameters
        assert parameters["type"] == "object", tool.spec.name
        assert parameters["additionalProperties"] is False, tool.spec.name
        assert tool.spec.description, tool.spec.name


async def test_call_tool_returns_the_result(context: ToolContext) -> None:
    with trio.fail_after(5):
        assert await call_tool(SleepTool(), '{"seconds": 0}', context) == "slept"


async def test_call_tool_deadline_stops_the_tool_and_is_a_tool_error(
    context: ToolContext, autojump_clock: MockClock
) -> None:
    tool = SleepTool()
    context = replace(context, config=ToolsConfig(timeout_seconds=3))
    with (
        trio.fail_after(60),
        pytest.raises(ToolError, match=r"within 3 s \(tools.timeoutSeconds\)"),
    ):
        await call_tool(tool, '{"seconds": 10}', context)
    assert tool.cancelled


async def test_call_tool_passes_tool_errors_through(context: ToolContext) -> None:
    with trio.fail_after(5), pytest.raises(ToolError, match="invalid arguments for sleep"):
        await call_tool(SleepTool(), "{}", context)


async def test_call_tool_caller_cancellation_propagates(context: ToolContext) -> None:
    tool = SleepTool()
    with trio.fail_after(5):
        with trio.move_on_after(0.05) as scope:
            await call_tool(tool, '{"seconds": 30}', context)
    assert scope.cancelled_caught
    assert tool.cancelled


def test_truncate_result_keeps_a_result_within_the_limit() -> None:
    assert truncate_result("x" * 2048, 2048) == "x" * 2048
    assert truncate_result("", 2048) == ""


def test_truncate_result_cuts_a_longer_one_with_a_note() -> None:
    result = truncate_result("ab" * 3000, 2048)
    kept, note = result.split("\n", 1)
    assert kept == "ab" * 1024
    assert note == (
        "[truncated by the gateway: showed the first 2048 of 6000 characters; "
        "ask for less at a time]"
    )


async def test_call_tool_truncates_a_result_over_max_result_chars(
    context: ToolContext, workspace: Path
) -> None:
    await trio.Path(workspace).mkdir()
    await trio.Path(workspace / "big.txt").write_text("0123456789" * 1000)
    context = replace(context, config=ToolsConfig(max_result_chars=4096))
    with trio.fail_after(5):
        result = await call_tool(
            ReadFileTool(), '{"path": "big.txt", "max_bytes": 100000}', context
        )
    assert result.startswith("0123456789" * 409 + "012345\n[truncated by the gateway:")
    assert "the first 4096 of 10000 characters" in result
    assert len(result) < 4096 + 200


class _AnyValue(Arguments, frozen=True):
    value: Any = None


def test_parse_arguments_nested_too_deeply_is_a_tool_error() -> None:
    # A field that takes any JSON lets a model's arguments nest deeper than the interpreter's
    # stack: the model is told so, instead of the run failing.
    deep = '{"value": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(ToolError, match="not valid JSON \\(nested too deeply\\)"):
        parse_arguments(_AnyValue, deep, tool="d")
