"""The session store protocol and the records it keeps: sessions (transcripts and totals) and
stored responses (a Responses API response or a resumable chat completion stream, with its
numbered event log, kept for a while after its run ends so that a client can poll it or resume
its stream on any instance that shares the store)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from ..messages import Image, Message, Role, ToolCall

__all__ = [
    "UNFINISHED",
    "Fence",
    "LoggedEvent",
    "RunStatus",
    "Session",
    "SessionInfo",
    "SessionStore",
    "StoredResponse",
    "StoredResponseStatus",
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


StoredResponseStatus = Literal[
    "queued", "in_progress", "completed", "incomplete", "failed", "cancelled"
]

#: The statuses of a stored response whose run has not ended (yet, or ever: see ``orphans``).
UNFINISHED: frozenset[str] = frozenset({"queued", "in_progress"})


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A stored response: what ``GET /v1/responses/{id}`` answers and what resuming its stream
    needs. Its events are kept apart (:class:`LoggedEvent`), appended in batches.

    ``body`` is the response object (JSON) as it stood at the last write; ``input`` the
    request's input items (JSON array). ``session_key`` and ``session_position`` (the number of
    transcript entries once the run's turn was stored) let ``previous_response_id`` continue
    the conversation right after this response. ``expires_at`` is set when the run ends (its
    end plus the retention); a sweep then deletes it.
    """

    id: str
    #: ``"response"`` (the Responses API) or ``"chat"`` (a resumable chat completion stream).
    kind: str
    agent_id: str
    run_id: str
    status: StoredResponseStatus
    #: The gateway instance that runs it (``gateway.instanceId``).
    instance_id: str
    created_at: float
    body: bytes
    input: bytes = b"[]"
    session_key: str | None = None
    session_position: int | None = None
    ended_at: float | None = None
    expires_at: float | None = None
    #: How many events the log holds with this record (their numbers are 0 to n - 1).
    event_count: int = 0
    #: The run was stopped because it produced more events than its log keeps.
    events_truncated: bool = False


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One event of a stored response: its sequence number (0, 1, 2... with no gap) and its
    bytes as sent on the wire (a framed SSE event)."""

    sequence: int
    data: bytes


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

    async def save_response(
        self, response: StoredResponse, events: Sequence[LoggedEvent] = ()
    ) -> None:
        """Store (or replace) ``response`` and append ``events`` to its log, in one write. An
        event whose sequence number the log already holds is ignored (a retried batch)."""
        ...

    async def get_response(self, response_id: str) -> StoredResponse | None:
        """The stored response ``response_id`` (expired or not: the caller checks)."""
        ...

    async def response_events(
        self, response_id: str, *, after: int, limit: int
    ) -> list[LoggedEvent]:
        """At most ``limit`` events of the response's log with a sequence number above
        ``after`` (``-1``: from the start), in order."""
        ...

    async def delete_response(self, response_id: str) -> bool:
        """Remove a stored response and its events; ``False`` if there is none."""
        ...

    async def sweep_responses(self, now: float) -> int:
        """Delete the responses whose ``expires_at`` is past ``now``; return how many."""
        ...

    async def unfinished_responses(self) -> list[StoredResponse]:
        """The stored responses whose status is ``queued`` or ``in_progress``."""
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
