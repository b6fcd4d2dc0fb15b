"""Session rows as the durable stores keep them: the values in and out of a database row.

Owns what the SQLite and PostgreSQL stores share, so that it is written once: the text
encoding of strings that UTF-8 cannot encode (a lone surrogate, as ``surrogateescape``-decoded
tool output may contain: stored as the bytes of its ``surrogatepass`` encoding, decoded back on
read, so every string round-trips exactly, as in memory), the tool calls' JSON, and the rows
the stores' ``SELECT`` statements return, turned back into :class:`SessionInfo` and
:class:`TranscriptEntry`. Both stores select their columns in the orders
:data:`SESSION_FIELDS` and :data:`ENTRY_FIELDS` name.

Pure functions; imports ``messages`` and ``sessions.store`` only (no database driver). A row
that does not decode raises :class:`DamagedRowError`, which each store translates into its
:class:`~trio_gateway.errors.SessionStoreError`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TypeVar

from ..messages import ToolCall
from .store import Session, SessionInfo, TranscriptEntry, Turn

__all__ = [
    "ENTRY_FIELDS",
    "SESSION_FIELDS",
    "DamagedRowError",
    "decode_tool_calls",
    "encode_text",
    "encode_tool_calls",
    "entry_from_row",
    "info_from_row",
    "session_of",
    "text_or_bytes",
    "text_value",
    "turn_bytes",
]

T = TypeVar("T")

#: The columns of a session row, in the order :func:`info_from_row` reads them.
SESSION_FIELDS = (
    "key",
    "agent_id",
    "created_at",
    "updated_at",
    "model",
    "last_status",
    "last_run_id",
    "prompt_tokens",
    "completion_tokens",
    "message_count",
)

#: The columns of a transcript row, in the order :func:`entry_from_row` reads them.
ENTRY_FIELDS = ("role", "content", "status", "tool_calls", "tool_call_id", "name", "internal")


class DamagedRowError(ValueError):
    """A stored value is not what the schema promises (the data was damaged)."""


def encode_text(text: str) -> bytes:
    """``text`` as bytes: UTF-8, with lone surrogates kept (``surrogatepass``)."""
    return text.encode("utf-8", "surrogatepass")


def text_or_bytes(text: str) -> str | bytes:
    """``text`` itself, or its :func:`encode_text` bytes if UTF-8 cannot encode it."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return encode_text(text)
    return text


def text_value(value: object) -> str:
    """A stored string back: text as is, bytes decoded as :func:`encode_text` made them."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode("utf-8", "surrogatepass")
    raise DamagedRowError(f"expected text in the session store, found {type(value).__name__}")


def _optional_text(value: object) -> str | None:
    return None if value is None else text_value(value)


def _typed(value: object, kind: type[T]) -> T:
    if not isinstance(value, kind):
        raise DamagedRowError(f"expected {kind.__name__} in the session store, found {value!r}")
    return value


def _number(value: object) -> float:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return _typed(value, float)


def encode_tool_calls(calls: Sequence[ToolCall]) -> str | None:
    """The calls as JSON text (``None`` for none). ``ensure_ascii`` (the default) escapes lone
    surrogates and NUL, so the JSON is plain ASCII that any text column can hold."""
    if not calls:
        return None
    return json.dumps([{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls])


def decode_tool_calls(value: object) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    try:
        decoded = json.loads(text_value(value))
    except ValueError as exc:
        raise DamagedRowError("malformed tool_calls in the session store") from exc
    calls: list[ToolCall] = []
    if isinstance(decoded, list):
        for item in decoded:
            fields = item if isinstance(item, dict) else {}
            values = [fields.get(name) for name in ("id", "name", "arguments")]
            if not all(isinstance(field, str) for field in values):
                break
            calls.append(ToolCall(*(str(field) for field in values)))
        else:
            return tuple(calls)
    raise DamagedRowError("malformed tool_calls in the session store")


def info_from_row(row: Sequence[object]) -> SessionInfo:
    """A row of :data:`SESSION_FIELDS` as a :class:`SessionInfo`."""
    key, agent_id, created_at, updated_at, model, status, run_id, prompt, completion, count = row
    return SessionInfo(
        key=text_value(key),
        agent_id=text_value(agent_id),
        created_at=_number(created_at),
        updated_at=_number(updated_at),
        model=text_value(model),
        last_status=status,  # type: ignore[arg-type]  # CHECK constraint: a RunStatus
        last_run_id=text_value(run_id),
        prompt_tokens=_typed(prompt, int),
        completion_tokens=_typed(completion, int),
        message_count=_typed(count, int),
    )


def entry_from_row(row: Sequence[object]) -> TranscriptEntry:
    """A row of :data:`ENTRY_FIELDS` as a :class:`TranscriptEntry`."""
    role, content, status, tool_calls, tool_call_id, name, internal = row
    return TranscriptEntry(
        role,  # type: ignore[arg-type]  # CHECK constraint: a Role
        text_value(content),
        status=status,  # type: ignore[arg-type]  # CHECK constraint: a RunStatus
        tool_calls=decode_tool_calls(tool_calls),
        tool_call_id=_optional_text(tool_call_id),
        name=_optional_text(name),
        internal=bool(internal),
    )


def session_of(info: SessionInfo, transcript: list[TranscriptEntry]) -> Session:
    """The whole session: ``info`` and its transcript."""
    return Session(
        key=info.key,
        agent_id=info.agent_id,
        created_at=info.created_at,
        updated_at=info.updated_at,
        model=info.model,
        last_status=info.last_status,
        last_run_id=info.last_run_id,
        prompt_tokens=info.prompt_tokens,
        completion_tokens=info.completion_tokens,
        message_count=info.message_count,
        transcript=transcript,
    )


def turn_bytes(turn: Turn) -> int:
    """About how many bytes ``turn`` adds to the store."""
    return sum(
        len(entry.content) + sum(len(call.arguments) + 64 for call in entry.tool_calls) + 64
        for entry in turn.entries
    )
