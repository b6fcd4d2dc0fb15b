"""Session rows as the durable stores keep them: the values in and out of a database row.

Owns what the SQLite and PostgreSQL stores share, so that it is written once: the text
encoding of strings that UTF-8 cannot encode (a lone surrogate, as ``surrogateescape``-decoded
tool output may contain: stored as the bytes of its ``surrogatepass`` encoding, decoded back on
read, so every string round-trips exactly, as in memory), the tool calls' JSON, and the rows
the stores' ``SELECT`` statements return, turned back into :class:`SessionInfo` and
:class:`TranscriptEntry`. Both stores select their columns in the orders
:data:`SESSION_FIELDS` and :data:`ENTRY_FIELDS` name.

Images: a transcript row's ``images`` column is JSON, the entry's image references in order
(``{"sha256", "type", "detail"}`` for stored bytes, ``{"url", "detail"}`` for a remote image);
the bytes live in the store's image table, once per SHA-256 (:func:`turn_images` gives a turn's
new ones). :func:`with_image_bytes` puts the bytes back into the entries read.

Pure functions; imports ``messages`` and ``sessions.store`` only (no database driver). A row
that does not decode raises :class:`DamagedRowError`, which each store translates into its
:class:`~trio_gateway.errors.SessionStoreError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

from ..messages import Image, ToolCall
from .store import Session, SessionInfo, TranscriptEntry, Turn

__all__ = [
    "ENTRY_FIELDS",
    "SESSION_FIELDS",
    "DamagedRowError",
    "decode_image_refs",
    "decode_tool_calls",
    "encode_image_refs",
    "encode_text",
    "encode_tool_calls",
    "entry_from_row",
    "image_hashes",
    "info_from_row",
    "session_of",
    "text_or_bytes",
    "text_value",
    "turn_bytes",
    "turn_images",
    "with_image_bytes",
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
ENTRY_FIELDS = (
    "role",
    "content",
    "status",
    "tool_calls",
    "tool_call_id",
    "name",
    "internal",
    "images",
)


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


def encode_image_refs(images: Sequence[Image]) -> str | None:
    """The entry's image references as JSON text (``None`` for none); ASCII, like tool calls."""
    if not images:
        return None
    refs: list[dict[str, str]] = []
    for image in images:
        ref = (
            {"url": image.url}
            if image.url is not None
            else {
                "sha256": image.sha256,
                "type": image.media_type,
            }
        )
        if image.detail is not None:
            ref["detail"] = image.detail
        refs.append(ref)
    return json.dumps(refs)


_DETAILS = ("auto", "low", "high")


def decode_image_refs(value: object) -> tuple[Image, ...]:
    """The references of :func:`encode_image_refs`, as images without their bytes."""
    if value is None:
        return ()
    try:
        decoded = json.loads(text_value(value))
    except ValueError as exc:
        raise DamagedRowError("malformed images in the session store") from exc
    images: list[Image] = []
    for ref in decoded if isinstance(decoded, list) else [None]:
        if not isinstance(ref, dict):
            raise DamagedRowError("malformed images in the session store")
        detail = ref.get("detail")
        if detail is not None and detail not in _DETAILS:
            raise DamagedRowError("malformed images in the session store")
        url, sha256, media_type = ref.get("url"), ref.get("sha256"), ref.get("type")
        if isinstance(url, str):
            images.append(Image(url=url, detail=detail))
        elif isinstance(sha256, str) and isinstance(media_type, str):
            images.append(Image(media_type, sha256, detail=detail))
        else:
            raise DamagedRowError("malformed images in the session store")
    return tuple(images)


def image_hashes(entries: Sequence[TranscriptEntry]) -> set[str]:
    """The SHA-256 of every stored image (not remote ones) ``entries`` reference."""
    return {image.sha256 for entry in entries for image in entry.images if image.url is None}


def turn_images(turn: Turn) -> dict[str, Image]:
    """The turn's images that carry bytes, once each, by SHA-256."""
    found: dict[str, Image] = {}
    for entry in turn.entries:
        for image in entry.images:
            if image.url is None and image.data is not None:
                found.setdefault(image.sha256, image)
    return found


def with_image_bytes(
    entries: list[TranscriptEntry], stored: Mapping[str, tuple[str, bytes]]
) -> list[TranscriptEntry]:
    """``entries`` with their images' bytes from ``stored`` (SHA-256 → type, bytes)."""
    filled: list[TranscriptEntry] = []
    for entry in entries:
        if entry.images:
            images = []
            for image in entry.images:
                if image.url is None:
                    found = stored.get(image.sha256)
                    if found is None:
                        raise DamagedRowError(
                            f"the image {image.sha256[:16]} is missing from the session store"
                        )
                    image = replace(image, data=bytes(found[1]))
                images.append(image)
            entry = replace(entry, images=tuple(images))
        filled.append(entry)
    return filled


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
    role, content, status, tool_calls, tool_call_id, name, internal, images = row
    return TranscriptEntry(
        role,  # type: ignore[arg-type]  # CHECK constraint: a Role
        text_value(content),
        status=status,  # type: ignore[arg-type]  # CHECK constraint: a RunStatus
        tool_calls=decode_tool_calls(tool_calls),
        tool_call_id=_optional_text(tool_call_id),
        name=_optional_text(name),
        internal=bool(internal),
        images=decode_image_refs(images),
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
    ) + sum(image.size + 128 for image in turn_images(turn).values())
