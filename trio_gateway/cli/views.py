"""The parts of the control plane's payloads the CLI reads (agent events and results,
sessions and transcripts, status), as structs that tolerate fields they do not know."""

from __future__ import annotations

import msgspec


class EventView(msgspec.Struct, frozen=True):
    """The part of an ``agent`` event payload the CLI renders."""

    stream: str
    data: dict[str, object] = msgspec.field(default_factory=dict)


class ErrorView(msgspec.Struct, frozen=True):
    code: str | None = None
    message: str = ""


class ResultView(msgspec.Struct, frozen=True):
    """The part of a run's final result the CLI reads."""

    status: str
    error: ErrorView | None = None


class SessionView(msgspec.Struct, frozen=True, rename="camel"):
    key: str
    agent_id: str = "?"
    updated_at: float | None = None
    last_status: str | None = None
    message_count: int = 0


class ToolCallView(msgspec.Struct, frozen=True):
    name: str = "?"
    arguments: str = ""


class EntryView(msgspec.Struct, frozen=True, rename="camel"):
    role: str
    content: str = ""
    status: str = "completed"
    tool_calls: list[ToolCallView] = msgspec.field(default_factory=list)
    internal: bool = False


class RunView(msgspec.Struct, frozen=True, rename="camel"):
    run_id: str
    agent_id: str = "?"
    session_key: str = "?"
    age_seconds: float = 0.0
    text_chars: int = 0
    deltas: int = 0
    source: str = "?"


class AdmissionView(msgspec.Struct, frozen=True, rename="camel"):
    running: int = 0
    queued: int = 0
    busy_sessions: int = 0
    waiting_for_session: int = 0


class StatusView(msgspec.Struct, frozen=True, rename="camel"):
    uptime_seconds: float = 0.0
    runs: list[RunView] = msgspec.field(default_factory=list)
    admission: AdmissionView = msgspec.field(default_factory=AdmissionView)
