"""Stored responses as table rows, for the SQL stores (SQLite and PostgreSQL alike).

Owns the column order of the ``responses`` tables (:data:`RESPONSE_COLUMNS`), the values bound
for a :class:`~trio_gateway.sessions.store.StoredResponse` and the record read back from a row.
Ids, keys and statuses are gateway-made ASCII text; ``body`` and ``input`` are bytes (JSON).
Plain functions; imports ``sessions.store`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

from .store import StoredResponse, StoredResponseStatus

__all__ = ["RESPONSE_COLUMNS", "response_from_row", "response_values"]

RESPONSE_COLUMNS: tuple[str, ...] = (
    "id",
    "kind",
    "agent_id",
    "run_id",
    "status",
    "instance_id",
    "created_at",
    "body",
    "input",
    "session_key",
    "session_position",
    "ended_at",
    "expires_at",
    "event_count",
    "events_truncated",
)

_STATUSES: dict[str, StoredResponseStatus] = {
    "queued": "queued",
    "in_progress": "in_progress",
    "completed": "completed",
    "incomplete": "incomplete",
    "failed": "failed",
    "cancelled": "cancelled",
}


def response_values(response: StoredResponse) -> tuple[object, ...]:
    """The values of :data:`RESPONSE_COLUMNS` for ``response``, in order."""
    return (
        response.id,
        response.kind,
        response.agent_id,
        response.run_id,
        response.status,
        response.instance_id,
        response.created_at,
        response.body,
        response.input,
        response.session_key,
        response.session_position,
        response.ended_at,
        response.expires_at,
        response.event_count,
        response.events_truncated,
    )


def response_from_row(row: Sequence[object]) -> StoredResponse:
    """The record of a row read with :data:`RESPONSE_COLUMNS`."""
    (
        response_id,
        kind,
        agent_id,
        run_id,
        status,
        instance_id,
        created_at,
        body,
        input_items,
        session_key,
        session_position,
        ended_at,
        expires_at,
        event_count,
        truncated,
    ) = row
    assert isinstance(created_at, float | int)
    assert ended_at is None or isinstance(ended_at, float | int)
    assert expires_at is None or isinstance(expires_at, float | int)
    assert session_position is None or isinstance(session_position, int)
    assert isinstance(event_count, int)
    return StoredResponse(
        id=str(response_id),
        kind=str(kind),
        agent_id=str(agent_id),
        run_id=str(run_id),
        status=_STATUSES[str(status)],
        instance_id=str(instance_id),
        created_at=float(created_at),
        body=bytes(body),  # type: ignore[call-overload]  # a BLOB / bytea: bytes or memoryview
        input=bytes(input_items),  # type: ignore[call-overload]  # likewise
        session_key=None if session_key is None else str(session_key),
        session_position=session_position,
        ended_at=None if ended_at is None else float(ended_at),
        expires_at=None if expires_at is None else float(expires_at),
        event_count=event_count,
        events_truncated=bool(truncated),
    )
