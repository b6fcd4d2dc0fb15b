"""Tests for :mod:`trio_gateway.tools.builtin.text`."""

from __future__ import annotations

from trio_gateway.tools.builtin.text import decode_text


def test_decode_text_replaces_bad_bytes() -> None:
    assert decode_text(b"a\xffb", complete=True) == "a\ufffdb"


def test_decode_text_drops_a_character_cut_off_at_the_end() -> None:
    cut = "hé".encode()[:2]
    assert decode_text(cut, complete=False) == "h"
    assert decode_text(cut, complete=True) == "h\ufffd"


def test_decode_text_uses_the_given_encoding_or_falls_back_to_utf8() -> None:
    assert decode_text(b"caf\xe9", complete=True, encoding="iso-8859-1") == "café"
    assert decode_text("é".encode(), complete=True, encoding="no-such-codec") == "é"
