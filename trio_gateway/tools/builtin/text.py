"""Turning bytes a tool read into text for the model."""

from __future__ import annotations

import codecs

__all__ = ["decode_text"]


def decode_text(data: bytes, *, complete: bool, encoding: str | None = None) -> str:
    """``data`` as text, undecodable bytes replaced.

    ``encoding`` defaults to UTF-8 (also when Python does not know it). When ``complete`` is
    false, ``data`` was cut off, and a character left incomplete at the end is dropped rather
    than shown as a replacement character.
    """
    try:
        factory = codecs.getincrementaldecoder(encoding or "utf-8")
    except LookupError:
        factory = codecs.getincrementaldecoder("utf-8")
    return factory(errors="replace").decode(data, final=complete)
