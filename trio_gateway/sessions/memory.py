"""An in-memory session store: sessions last as long as the process."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import trio

from .store import UNFINISHED, LoggedEvent, Session, SessionInfo, StoredResponse, Turn

__all__ = ["MemorySessionStore"]


class MemorySessionStore:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        #: The runs whose turns each session holds (a turn is stored once).
        self._runs: dict[str, set[str]] = {}
        #: Stored responses and their event logs (by sequence number), by response id.
        self._responses: dict[str, StoredResponse] = {}
        self._events: dict[str, dict[int, LoggedEvent]] = {}

    async def get(self, key: str) -> Session | None:
        await trio.lowlevel.checkpoint()
        session = self._sessions.get(key)
        return copy.deepcopy(session) if session is not None else None

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
        session.transcript.extend(turn.entries)
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
        session.prompt_tokens = session.completion_tokens = session.message_count = 0
        return True

    async def delete(self, key: str) -> bool:
        await trio.lowlevel.checkpoint()
        self._runs.pop(key, None)
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
