"""An in-memory session store: sessions last as long as the process.

Images are kept once by their SHA-256 (:attr:`MemorySessionStore.images`), apart from the
transcripts, whose entries hold them without their bytes; an image no session holds any more is
dropped by the write that let go of it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence

import trio

from ..messages import Image
from .store import (
    UNFINISHED,
    LoggedEvent,
    Session,
    SessionInfo,
    StoredResponse,
    TranscriptEntry,
    Turn,
)

__all__ = ["MemorySessionStore"]


class MemorySessionStore:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        #: The runs whose turns each session holds (a turn is stored once).
        self._runs: dict[str, set[str]] = {}
        #: Stored responses and their event logs (by sequence number), by response id.
        self._responses: dict[str, StoredResponse] = {}
        self._events: dict[str, dict[int, LoggedEvent]] = {}
        #: Every image some session holds, by SHA-256, with its bytes (stored once).
        self.images: dict[str, Image] = {}
        #: The SHA-256 of the images each session's transcript holds.
        self._held: dict[str, set[str]] = {}

    async def get(self, key: str) -> Session | None:
        await trio.lowlevel.checkpoint()
        session = self._sessions.get(key)
        if session is None:
            return None
        copied = copy.deepcopy(session)
        copied.transcript = [self._with_bytes(entry) for entry in copied.transcript]
        return copied

    def _with_bytes(self, entry: TranscriptEntry) -> TranscriptEntry:
        if not entry.images:
            return entry
        images = tuple(
            image if image.url is not None else self.images[image.sha256] for image in entry.images
        )
        return dataclasses.replace(entry, images=images)

    def _without_bytes(self, entry: TranscriptEntry) -> TranscriptEntry:
        """``entry`` as the transcript keeps it: its images' bytes go to :attr:`images`."""
        if not entry.images:
            return entry
        for image in entry.images:
            if image.url is None:
                self.images.setdefault(image.sha256, dataclasses.replace(image, param=None))
        images = tuple(dataclasses.replace(image, data=None) for image in entry.images)
        return dataclasses.replace(entry, images=images)

    def _release_images(self, key: str, transcript: Iterable[TranscriptEntry]) -> None:
        """The session now holds the images of ``transcript``: drop those nobody holds."""
        before = self._held.pop(key, set())
        now = {i.sha256 for entry in transcript for i in entry.images if i.url is None}
        if now:
            self._held[key] = now
        for sha256 in before - now:
            if not any(sha256 in held for held in self._held.values()):
                self.images.pop(sha256, None)

    async def record_turn(self, key: str, turn: Turn) -> SessionInfo:
        await trio.lowlevel.checkpoint()
        # Everything below is synchronous, so the turn lands whole.
        session = self._sessions.get(key)
        runs = self._runs.setdefault(key, set())
        if session is not None and turn.run_id in runs:
            return _info(session)
        runs.add(turn.run_id)
        if session is None:
            session = Session(
                key=key,
                agent_id=turn.agent_id,
                created_at=turn.at,
                updated_at=turn.at,
                model=turn.model,
                last_status=turn.status,
                last_run_id=turn.run_id,
            )
            self._sessions[key] = session
        if turn.keep is not None:
            del session.transcript[turn.keep :]
        session.transcript.extend(self._without_bytes(entry) for entry in turn.entries)
        self._release_images(key, session.transcript)
        session.updated_at = turn.at
        session.model = turn.model
        session.last_status = turn.status
        session.last_run_id = turn.run_id
        session.prompt_tokens += turn.prompt_tokens
        session.completion_tokens += turn.completion_tokens
        session.message_count = len(session.transcript)
        return _info(session)

    async def list_sessions(
        self, *, agent_id: str | None = None, limit: int = 100
    ) -> list[SessionInfo]:
        await trio.lowlevel.checkpoint()
        sessions = [
            s
            for s in self._sessions.values()
            if agent_id is None or s.agent_id.lower() == agent_id.lower()
        ]
        sessions.sort(key=lambda s: s.updated_at, reverse=True)
        return [_info(s) for s in sessions[:limit]]

    async def reset(self, key: str) -> bool:
        await trio.lowlevel.checkpoint()
        session = self._sessions.get(key)
        if session is None:
            return False
        session.transcript.clear()
        self._release_images(key, ())
        session.prompt_tokens = session.completion_tokens = session.message_count = 0
        return True

    async def delete(self, key: str) -> bool:
        await trio.lowlevel.checkpoint()
        self._runs.pop(key, None)
        self._release_images(key, ())
        return self._sessions.pop(key, None) is not None

    async def save_response(
        self, response: StoredResponse, events: Sequence[LoggedEvent] = ()
    ) -> None:
        await trio.lowlevel.checkpoint()
        self._responses[response.id] = response
        log = self._events.setdefault(response.id, {})
        for event in events:
            log.setdefault(event.sequence, event)

    async def get_response(self, response_id: str) -> StoredResponse | None:
        await trio.lowlevel.checkpoint()
        return self._responses.get(response_id)

    async def response_events(
        self, response_id: str, *, after: int, limit: int
    ) -> list[LoggedEvent]:
        await trio.lowlevel.checkpoint()
        log = self._events.get(response_id, {})
        return [log[number] for number in sorted(log) if number > after][:limit]

    async def delete_response(self, response_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        self._events.pop(response_id, None)
        return self._responses.pop(response_id, None) is not None

    async def sweep_responses(self, now: float) -> int:
        await trio.lowlevel.checkpoint()
        expired = [
            response.id
            for response in self._responses.values()
            if response.expires_at is not None and response.expires_at <= now
        ]
        for response_id in expired:
            del self._responses[response_id]
            self._events.pop(response_id, None)
        return len(expired)

    async def unfinished_responses(self) -> list[StoredResponse]:
        await trio.lowlevel.checkpoint()
        return [r for r in self._responses.values() if r.status in UNFINISHED]

    async def probe(self) -> None:
        """Memory always answers."""
        await trio.lowlevel.checkpoint()

    def health(self) -> str | None:
        return None

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

    def __len__(self) -> int:
        return len(self._sessions)


def _info(session: Session) -> SessionInfo:
    fields = {f.name: getattr(session, f.name) for f in dataclasses.fields(SessionInfo)}
    return SessionInfo(**fields)
