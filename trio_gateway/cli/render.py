"""Terminal rendering: a run as it streams (the answer on stdout, tools and reasoning on
stderr), JSON, tables, times, transcript lines and the gateway's status. Nothing here talks to
a gateway."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import click
import msgspec

from ..wire.control import (
    AGENT_EVENT_DATA,
    AgentEvent,
    DeltaData,
    StatusResult,
    ToolResultData,
    ToolStartData,
    TranscriptEntry,
)

#: Longest tool arguments shown in a ``[tool]`` line.
TOOL_ARGS_SHOWN = 80


def print_json(payload: object) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(payload), indent=2))


class Printer:
    """Renders a run as it happens: the answer on stdout, tools and reasoning on stderr."""

    def __init__(self, *, quiet: bool, reasoning: bool) -> None:
        self.quiet = quiet
        self.show_reasoning = reasoning
        self.mid_line = False
        #: A ``[tool]`` line starts on a line of its own on a terminal; the answer written to a
        #: file or pipe stays exactly the answer.
        self.shared_terminal = sys.stdout.isatty() and sys.stderr.isatty()
        self._tool_args: dict[str, str] = {}

    def text(self, delta: str) -> None:
        if self.quiet or not delta:
            return
        sys.stdout.write(delta)
        sys.stdout.flush()
        self.mid_line = not delta.endswith("\n")

    def reasoning(self, delta: str) -> None:
        if self.quiet or not self.show_reasoning:
            return
        click.echo(click.style(delta, dim=True), err=True, nl=False)

    def tool_started(self, call_id: str, arguments: str) -> None:
        self._tool_args[call_id] = arguments

    def tool_finished(self, call_id: str, name: str, ok: bool) -> None:
        if self.quiet:
            return
        arguments = self._tool_args.pop(call_id, "")
        if len(arguments) > TOOL_ARGS_SHOWN:
            arguments = arguments[: TOOL_ARGS_SHOWN - 1] + "…"
        if self.shared_terminal:
            self._break_line()
        click.echo(f"[tool] {name}({arguments}) → {'ok' if ok else 'error'}", err=True)

    def end(self) -> None:
        """Finish the answer's last line."""
        self._break_line()

    def _break_line(self) -> None:
        if self.mid_line:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.mid_line = False


def show_event(printer: Printer, payload: dict[str, object]) -> None:
    """Render an ``agent`` event's payload; one the CLI does not know is left out."""
    try:
        event = msgspec.convert(payload, AgentEvent)
        data = msgspec.convert(event.data, AGENT_EVENT_DATA[event.stream])
    except (msgspec.ValidationError, KeyError):
        return  # not one we know how to show
    if isinstance(data, DeltaData) and event.stream == "assistant":
        printer.text(data.delta)
    elif isinstance(data, DeltaData) and event.stream == "reasoning":
        printer.reasoning(data.delta)
    elif isinstance(data, ToolStartData):
        printer.tool_started(data.call_id, data.arguments)
    elif isinstance(data, ToolResultData):
        printer.tool_finished(data.call_id, data.name, data.ok)


def when(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def transcript_line(entry: TranscriptEntry) -> str:
    parts = [entry.content.replace("\\", "\\\\").replace("\n", "\\n")] if entry.content else []
    parts.extend(f"→ {call.name}({call.arguments})" for call in entry.tool_calls)
    line = f"{entry.role}: {' '.join(parts)}".rstrip()
    if entry.status != "completed":
        line += f" [{entry.status}]"
    return line


def show_status(view: StatusResult) -> None:
    """The admission counters on one line, then the runs in progress as a table."""
    counts = view.admission
    instance = f"instance {view.instance_id}, " if view.instance_id else ""
    click.echo(
        f"{instance}up {view.uptime_seconds:.0f}s; running {counts.running}, "
        f"queued {counts.queued}, "
        f"busy sessions {counts.busy_sessions}, waiting for a session "
        f"{counts.waiting_for_session}"
    )
    if not view.runs:
        click.echo("no runs in progress")
        return
    # The instance column only when it tells something: runs of several gateways (or queued).
    several = len({run.instance_id for run in view.runs}) > 1 or any(
        run.state != "running" for run in view.runs
    )
    rows = [
        ("RUN", *(("INSTANCE",) if several else ()), "AGENT", "SESSION", "AGE", "TEXT", "SOURCE")
    ]
    rows += [
        (
            run.run_id,
            *(
                (run.instance_id + ("" if run.state == "running" else f" ({run.state})"),)
                if several
                else ()
            ),
            run.agent_id,
            run.session_key,
            f"{run.age_seconds:.1f}s",
            f"{run.text_chars} chars"
            if run.deltas is None
            else f"{run.deltas} text deltas, {run.text_chars} chars",
            run.source,
        )
        for run in view.runs
    ]
    table(rows)
