"""Tests for :mod:`trio_gateway.tools.builtin.clock`: the ``current_time`` tool."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import trio

from trio_gateway.errors import ToolError
from trio_gateway.tools import CurrentTimeTool, ToolContext

NOW = datetime(2025, 1, 15, 12, 30, 5, 123456, tzinfo=UTC)


@pytest.fixture
def tool() -> CurrentTimeTool:
    return CurrentTimeTool(now=lambda: NOW)


async def test_current_time_in_an_iana_zone(tool: CurrentTimeTool, context: ToolContext) -> None:
    with trio.fail_after(5):
        result = await tool.call('{"timezone": "Europe/Paris"}', context)
    assert result == "2025-01-15T13:30:05+01:00 (Europe/Paris, Wednesday)"


async def test_current_time_in_utc(tool: CurrentTimeTool, context: ToolContext) -> None:
    with trio.fail_after(5):
        assert await tool.call('{"timezone": "UTC"}', context) == (
            "2025-01-15T12:30:05+00:00 (UTC, Wednesday)"
        )
        assert await tool.call('{"timezone": "America/New_York"}', context) == (
            "2025-01-15T07:30:05-05:00 (America/New_York, Wednesday)"
        )


async def test_current_time_defaults_to_local_time(
    tool: CurrentTimeTool, context: ToolContext
) -> None:
    with trio.fail_after(5):
        for arguments in ("", "{}", '{"timezone": null}'):
            result = await tool.call(arguments, context)
            stamp = datetime.fromisoformat(result.split(" ")[0])
            assert stamp == NOW.replace(microsecond=0)
            assert stamp.utcoffset() == NOW.astimezone().utcoffset()


async def test_current_time_uses_the_real_clock_by_default(context: ToolContext) -> None:
    with trio.fail_after(5):
        result = await CurrentTimeTool().call('{"timezone": "UTC"}', context)
    stamp = datetime.fromisoformat(result.split(" ")[0])
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 5


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Europe", "../../etc/passwd", "/etc/x"])
async def test_current_time_unknown_zone_is_a_tool_error(
    tool: CurrentTimeTool, context: ToolContext, zone: str
) -> None:
    with trio.fail_after(5), pytest.raises(ToolError, match="unknown time zone"):
        await tool.call(f'{{"timezone": "{zone}"}}', context)


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ('{"timezone": ""}', "length >= 1"),
        ('{"timezone": 1}', "Expected `str | null`, got `int`"),
        ('{"tz": "UTC"}', "unknown field `tz`"),
        ('{"timezone": "UTC"', "not valid JSON"),
    ],
)
async def test_current_time_invalid_arguments_are_a_tool_error(
    tool: CurrentTimeTool, context: ToolContext, arguments: str, complaint: str
) -> None:
    with trio.fail_after(5), pytest.raises(ToolError, match="current_time") as caught:
        await tool.call(arguments, context)
    assert complaint in caught.value.message
