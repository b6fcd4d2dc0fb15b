"""Decode faults classified the same way whatever msgspec's version (sans-IO)."""

from __future__ import annotations

import msgspec
import pytest

from trio_gateway.wire.decoding import (
    DECODE_ERRORS,
    DecodeFault,
    SchemaViolation,
    decode_fault,
    is_utf8,
    lower_first,
    schema_violation,
)


class _Frame(msgspec.Struct):
    id: str


def _fault(data: bytes) -> DecodeFault:
    with pytest.raises(DECODE_ERRORS) as caught:
        msgspec.json.decode(data, type=_Frame)
    return decode_fault(caught.value, data)


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (b'{"id": "\xff"}', DecodeFault.ENCODING),
        (b'{"id": "x", "other": "\xff"', DecodeFault.ENCODING),
        (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b', "id": "a"}', DecodeFault.DEPTH),
        (b'{"id": ', DecodeFault.SYNTAX),
        (b"nul", DecodeFault.SYNTAX),
        (b'{"id": 5}', DecodeFault.SCHEMA),
        (b"{}", DecodeFault.SCHEMA),
    ],
)
def test_decode_fault_classifies_what_msgspec_raises(data: bytes, fault: DecodeFault) -> None:
    assert _fault(data) is fault


# msgspec up to 0.22 raised UnicodeDecodeError for invalid UTF-8 inside a string; 0.23 raises
# DecodeError. Both forms must give the same answer, whichever version is installed.
@pytest.mark.parametrize(
    "exc",
    [
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        msgspec.DecodeError("Invalid UTF-8 encoded string"),
    ],
)
def test_decode_fault_invalid_utf8_is_an_encoding_fault_on_every_version(exc: Exception) -> None:
    assert decode_fault(exc, b'{"id": "\xff"}') is DecodeFault.ENCODING


def test_decode_fault_invalid_utf8_wins_over_a_later_fault() -> None:
    assert decode_fault(msgspec.DecodeError("truncated"), b'"\xff') is DecodeFault.ENCODING


def test_is_utf8() -> None:
    assert is_utf8("\xff")
    assert is_utf8(b"caf\xc3\xa9")
    assert not is_utf8(b"\xc3")
    assert not is_utf8(bytearray(b"\xff"))


class _Strict(msgspec.Struct, forbid_unknown_fields=True):
    items: list[_Frame]


@pytest.mark.parametrize(
    ("data", "violation"),
    [
        (
            b'{"items": [{"id": 1}]}',
            SchemaViolation("Expected `str`, got `int`", ".items[0].id", None, None),
        ),
        (
            b'{"items": [{}]}',
            SchemaViolation("Object missing required field `id`", ".items[0]", "id", None),
        ),
        (
            b'{"items": [], "extra": 1}',
            SchemaViolation("Object contains unknown field `extra`", "", None, "extra"),
        ),
        (b"[]", SchemaViolation("Expected `object`, got `array`", "", None, None)),
    ],
)
def test_schema_violation_takes_the_message_apart(data: bytes, violation: SchemaViolation) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(data, type=_Strict)
    assert schema_violation(caught.value) == violation


def test_lower_first_lowers_only_the_first_letter() -> None:
    assert lower_first("Expected `URL`") == "expected `URL`"
    assert lower_first("") == ""
