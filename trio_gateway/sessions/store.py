"""The session store protocol and the records it keeps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from ..messages import Image, Message, Role, ToolCall

__all__ = [
    "Fence",
    "RunStatus",
    "Session",
    "SessionInfo",
    "SessionStore",
    "TranscriptEntry",
    "Turn",
]

RunStatus = Literal["completed", "failed", "aborted"]


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One message of a session's transcript.

    ``status`` marks a partial assistant reply (``aborted``: the client went away; ``failed``:
    the run failed). ``internal`` marks the gateway's own tool traffic (assistant messages that
    call agent tools, and their results), which an OpenAI client never sees and never resends.
    ``images``: a user message's images, with their bytes. Every store keeps an image's bytes
    once, by content hash, outside the transcript rows; an entry references them, and
    :meth:`SessionStore.get` gives them back whole.
    """

    role: Role
    content: str
    status: RunStatus = "completed"
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    internal: bool = False
    images: tuple[Image, ...] = ()

    def to_message(self) -> Message:
        return Message(
            self.role,
            self.content,
            name=self.name,
            tool_call_id=self.tool_call_id,
            tool_calls=self.tool_calls,
            images=self.images,
        )

    @classmethod
    def of(
        cls, message: Message, *, status: RunStatus = "completed", internal: bool = False
    ) -> TranscriptEntry:
        return cls(
            message.role,
            message.content,
            status=status,
            tool_calls=message.tool_calls,
            tool_call_id=message.tool_call_id,
            name=message.name,
            internal=internal,
            images=tuple(replace(image, param=None) for image in message.images),
        )


@dataclass(frozen=True, slots=True)
class Fence:
    """The session lease a turn is written under (the shared PostgreSQL store only).

    ``epoch`` grows each time the session's lane changes hands; a turn whose fence is not the
    lane's current holder and epoch is refused (:class:`~trio_gateway.errors.LeaseLostError`),
    so a run that lost its lease (its instance paused or cut off past the lease period) can
    never write into a transcript another run has moved on. The single-process stores (memory,
    SQLite) keep their lanes in the process and ignore it."""

    holder: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Turn:
    """What one run adds to a session, written atomically.

    ``keep``: keep only the first ``keep`` stored entries before appending (the client re-based
    the conversation on an edited message); ``None`` keeps them all. ``entries`` are the turn's
    new input messages followed by everything the run produced (tool calls and results, the
    reply, possibly partial).
    """

    run_id: str
    agent_id: str
    model: str
    entries: Sequence[TranscriptEntry]
    status: RunStatus
    prompt_tokens: int
    completion_tokens: int
    at: float
    keep: int | None = None
    #: The lease the turn is written under (see :class:`Fence`); ``None``: no lease.
    fence: Fence | None = None


@dataclass
class SessionInfo:
    key: str
    agent_id: str
    created_at: float
    updated_at: float
    model: str
    last_status: RunStatus
    last_run_id: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    message_count: int = 0


@dataclass
class Session(SessionInfo):
    transcript: list[TranscriptEntry] = field(default_factory=list)


class SessionStore(Protocol):
    """Where sessions live. ``record_turn`` is atomic: a turn is stored whole or not at all.

    A session stores a run's turn once: recording a turn whose ``run_id`` the session already
    holds changes nothing and returns the session as it is (so a write is safe to retry). A
    reset keeps that memory; a delete forgets it with the session.

    Images are stored once by their SHA-256, however many entries and sessions hold them; an
    image no session's transcript holds any more (the last one deleted, reset or truncated
    past it) is removed in the same transaction.
    """

    async def get(self, key: str) -> Session | None: ...

    async def record_turn(self, key: str, turn: Turn) -> SessionInfo: ...

    async def list_sessions(
        self, *, agent_id: str | None = None, limit: int = 100
    ) -> list[SessionInfo]:
        """The most recently updated sessions first."""
        ...

    async def reset(self, key: str) -> bool:
        """Clear the transcript and totals, keep the session; ``False`` if there is none."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove the session, and the images no other session holds; ``False`` if there is
        none."""
        ...

    async def probe(self) -> None:
        """A real read and a real write; raises ``SessionStoreError`` if either fails."""
        ...

    def health(self) -> str | None:
        """``None`` while the store's last read and last write succeeded; else what failed."""
        ...

    async def aclose(self) -> None: ...


def visible(transcript: Sequence[TranscriptEntry]) -> list[int]:
    """Indexes of the entries an OpenAI client sees (and resends): all but ``internal`` ones."""
    return [index for index, entry in enumerate(transcript) if not entry.internal]
