"""An in-memory session store: sessions last as long as the process."""

from __future__ import annotations

import copy

import trio

from .store import Session, Turn

__all__ = ["MemorySessionStore"]


class MemorySessionStore:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    async def get(self, key: str) -> Session | None:
        await trio.lowlevel.checkpoint()
        session = self._sessions.get(key)
        return copy.deepcopy(session) if session is not None else None

    async def record_turn(self, key: str, turn: Turn) -> Session:
        await trio.lowlevel.checkpoint()
        session = self._sessions.get(key)
        if session is None:
            session = Session(
                key=key,
                agent_id=turn.agent_id,
                created_at=turn.at,
                updated_at=turn.at,
                model=turn.model,
                last_status=turn.status,
            )
            self._sessions[key] = session
        # Everything below is synchronous, so the turn lands whole.
        session.transcript.extend(turn.messages)
        session.transcript.append(turn.reply)
        session.updated_at = turn.at
        session.model = turn.model
        session.last_status = turn.status
        session.prompt_tokens += turn.prompt_tokens
        session.completion_tokens += turn.completion_tokens
        return copy.deepcopy(session)

    def __len__(self) -> int:
        return len(self._sessions)
