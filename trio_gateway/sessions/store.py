"""The session store protocol and the records it keeps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = ["RunStatus", "Session", "SessionStore", "TranscriptEntry", "Turn"]

RunStatus = Literal["completed", "failed", "aborted"]


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One message of a session's transcript. ``status`` marks a partial assistant reply."""

    role: str
    content: str
    status: RunStatus = "completed"


@dataclass(frozen=True, slots=True)
class Turn:
    """What one run adds to a session: the new input messages and the reply (possibly partial)."""

    run_id: str
    agent_id: str
    model: str
    messages: Sequence[TranscriptEntry]
    reply: TranscriptEntry
    status: RunStatus
    prompt_tokens: int
    completion_tokens: int
    at: float


@dataclass
class Session:
    key: str
    agent_id: str
    created_at: float
    updated_at: float
    model: str
    last_status: RunStatus
    prompt_tokens: int = 0
    completion_tokens: int = 0
    transcript: list[TranscriptEntry] = field(default_factory=list)


class SessionStore(Protocol):
    """Where sessions live. ``record_turn`` is atomic: a turn is stored whole or not at all."""

    async def get(self, key: str) -> Session | None: ...

    async def record_turn(self, key: str, turn: Turn) -> Session: ...
