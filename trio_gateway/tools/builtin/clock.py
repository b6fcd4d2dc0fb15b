"""The ``current_time`` tool: the current date and time, in ISO 8601."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import trio

from ...errors import ToolError
from ..base import Arguments, StructTool, ToolContext

__all__ = ["CurrentTimeArguments", "CurrentTimeTool"]


class CurrentTimeArguments(Arguments, frozen=True):
    timezone: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=64,
                description=(
                    'An IANA time zone such as "Europe/Paris" or "UTC". '
                    "Default: the gateway's local time zone."
                ),
            ),
        ]
        | None
    ) = None


def _zone(name: str) -> tzinfo:
    if name.upper() in ("UTC", "Z"):  # works without the system's time zone database
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ToolError(
            f"unknown time zone {name!r}; use an IANA name such as 'UTC', 'Europe/Paris' or "
            "'America/New_York'"
        ) from exc


class CurrentTimeTool(StructTool[CurrentTimeArguments]):
    """``current_time``: now, as an ISO 8601 timestamp with its UTC offset.

    ``now`` returns the current time as an aware datetime; tests pass a fixed clock.
    """

    def __init__(self, now: Callable[[], datetime] | None = None) -> None:
        super().__init__(
            name="current_time",
            description=(
                "Get the current date and time as an ISO 8601 timestamp with its UTC offset, "
                "followed by the time zone name and the weekday."
            ),
            arguments=CurrentTimeArguments,
        )
        self._now = now or (lambda: datetime.now(UTC))

    async def run(self, arguments: CurrentTimeArguments, context: ToolContext) -> str:
        if arguments.timezone is None:
            moment = self._now().astimezone()
            label = moment.tzname() or "local time"
        else:
            # Loading a zone reads the time zone database: keep it off the event loop.
            zone = await trio.to_thread.run_sync(_zone, arguments.timezone)
            moment = self._now().astimezone(zone)
            label = arguments.timezone
        return f"{moment.isoformat(timespec='seconds')} ({label}, {moment:%A})"
