"""What went wrong when msgspec could not decode JSON, the same whatever msgspec's version.

msgspec reports a fault in ways that changed between releases:

- syntax and schema faults raise ``msgspec.DecodeError`` (``ValidationError`` is a subclass);
- nesting deeper than the interpreter stack raises ``RecursionError``;
- invalid UTF-8 inside a string raised ``UnicodeDecodeError`` up to 0.22 and raises
  ``msgspec.DecodeError`` from 0.23 on. A lazily skipped field is not checked at all in 0.23,
  so a second, narrower decode of the same bytes may succeed where the first one failed.

Every decode path catches :data:`DECODE_ERRORS` and asks :func:`decode_fault` what happened, so
the answer a client sees does not depend on the installed msgspec. A schema fault's message
("Expected `int`, got `str` - at `$.messages[0].n`") is taken apart once, by
:func:`schema_violation`, for every caller that words its own message (the chat request parser,
the config loader). Sans-IO: imports msgspec only.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import msgspec

__all__ = [
    "DECODE_ERRORS",
    "DecodeFault",
    "SchemaViolation",
    "decode_fault",
    "is_utf8",
    "lower_first",
    "schema_violation",
]

#: Everything ``msgspec.json.decode`` raises for bad input, on every supported msgspec version.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    msgspec.DecodeError,
    RecursionError,
    UnicodeDecodeError,
)


class DecodeFault(enum.Enum):
    """The kind of fault, from the most basic (the bytes are not text) to the most specific."""

    ENCODING = "not UTF-8"
    DEPTH = "nested too deeply"
    SYNTAX = "not valid JSON"
    SCHEMA = "not of the expected shape"


def is_utf8(data: str | bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is text: a ``str``, or bytes that decode as UTF-8."""
    if isinstance(data, str):
        return True
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode_fault(exc: BaseException, data: str | bytes | bytearray | memoryview) -> DecodeFault:
    """Classify ``exc``, raised while decoding ``data``. Call it on the error path only.

    Invalid UTF-8 wins over every other fault: msgspec may notice it late, or (for a skipped
    field) not at all, and which one it reports first has changed between releases.
    """
    if isinstance(exc, UnicodeDecodeError) or not is_utf8(data):
        return DecodeFault.ENCODING
    if isinstance(exc, RecursionError):
        return DecodeFault.DEPTH
    if isinstance(exc, msgspec.ValidationError):
        return DecodeFault.SCHEMA
    return DecodeFault.SYNTAX


_LOCATION = re.compile(r"^(?P<detail>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")


@dataclass(frozen=True, slots=True)
class SchemaViolation:
    """A ``msgspec.ValidationError`` taken apart: what is wrong, and where."""

    #: msgspec's sentence without the location, e.g. ``"Expected `int`, got `str`"``.
    detail: str
    #: msgspec's location after the ``$``, e.g. ``".messages[0].role"``; ``""`` at the top.
    path: str
    #: The name of the required field that is absent, if that is the fault.
    missing_field: str | None
    #: The name of the field the schema does not know, if that is the fault.
    unknown_field: str | None


def schema_violation(exc: BaseException) -> SchemaViolation:
    """Take apart the message of ``exc``, a ``msgspec.ValidationError``."""
    match = _LOCATION.match(str(exc))
    assert match is not None  # the pattern matches any string
    detail = match["detail"]
    missing = _MISSING.match(detail)
    unknown = _UNKNOWN.match(detail)
    return SchemaViolation(
        detail=detail,
        path=match["path"] or "",
        missing_field=missing["field"] if missing else None,
        unknown_field=unknown["field"] if unknown else None,
    )


def lower_first(text: str) -> str:
    """``text`` with its first letter in lower case, to follow a colon in a longer message."""
    return text[:1].lower() + text[1:]
