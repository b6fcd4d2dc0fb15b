"""The JSON5 syntax of the config file: tokens, where each value sits in the text, and where a
syntax error really is. Pure: text in, positions out; no I/O, no json5.

json5 (which the loader parses with) reports a syntax error at the furthest offset any of its
grammar's alternatives reached: often one character or one token past the mistake (``1.2.3``
at the ``3``, ``tru`` at the character after it, a missing comma at the next key). This module
reads the text once, left to right, and stops at the first token that cannot continue a valid
document: :func:`find_syntax_error` says where, as a line and column a person can find.

:func:`parse_tree` gives the position of every object member and array item, so ``epiloop
config set`` can replace one value and leave the rest of the file (comments included) as it was.

Positions are offsets into the text; lines and columns count from 1, columns in characters.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Member",
    "Node",
    "SyntaxIssue",
    "find_syntax_error",
    "line_column",
    "parse_tree",
    "skip_trivia",
]

_PUNCTUATION = frozenset("{}[]:,")
_LINE_ENDS = frozenset("\n\r\u2028\u2029")
_EXTRA_SPACE = frozenset("\t\n\r\v\f\u00a0\ufeff\u2028\u2029")
_NAME_START_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nl"})
_NAME_PART_CATEGORIES = _NAME_START_CATEGORIES | {"Mn", "Mc", "Nd", "Pc"}
_NUMBER = re.compile(
    r"[+-]?(?:Infinity|NaN|0[xX][0-9A-Fa-f]+"
    r"|(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
)
_HEX = frozenset("0123456789abcdefABCDEF")
_VALUE_NAMES = frozenset({"true", "false", "null", "Infinity", "NaN"})

TokenKind = Literal["punct", "string", "number", "name", "end", "invalid"]


@dataclass(frozen=True, slots=True)
class SyntaxIssue:
    """Where the text stops being JSON5, and why."""

    offset: int
    message: str

    def describe(self, text: str) -> str:
        line, column = line_column(text, self.offset)
        return f"line {line}, column {column}: {self.message}"


@dataclass(frozen=True, slots=True)
class _Token:
    """A token; for kind ``invalid``, ``end`` is where it goes wrong and ``text`` says how."""

    kind: TokenKind
    start: int
    end: int
    text: str


class _Invalid(Exception):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.issue = SyntaxIssue(offset, message)


@dataclass(slots=True)
class Node:
    """A value's extent (``end`` is exclusive) and, for an object or array, its parts."""

    start: int
    end: int
    kind: Literal["object", "array", "scalar"]
    members: list[Member] = field(default_factory=list)
    items: list[Node] = field(default_factory=list)


@dataclass(slots=True)
class Member:
    """One ``key: value`` of an object; ``comma`` is the offset of its trailing comma, if any."""

    key: str
    key_start: int
    value: Node
    comma: int | None = None


def line_column(text: str, offset: int) -> tuple[int, int]:
    """The 1-based line and column of ``offset`` (lines end at ``\\n``)."""
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def find_syntax_error(text: str) -> SyntaxIssue | None:
    """The first place where ``text`` is not a JSON5 document, or ``None`` if it is one."""
    try:
        parse_tree(text)
    except _Invalid as exc:
        return exc.issue
    return None


def parse_tree(text: str) -> Node:
    """The tree of value positions of a JSON5 document; raises on a syntax error."""
    return _Parser(text).document()


def is_space(char: str) -> bool:
    return char == " " or char in _EXTRA_SPACE or unicodedata.category(char) == "Zs"


def skip_trivia(text: str, offset: int) -> int:
    """The offset of the first character at or after ``offset`` that is not whitespace or part
    of a comment."""
    end = len(text)
    while offset < end:
        char = text[offset]
        if is_space(char):
            offset += 1
        elif text.startswith("//", offset):
            offset += 2
            while offset < end and text[offset] not in _LINE_ENDS:
                offset += 1
        elif text.startswith("/*", offset):
            close = text.find("*/", offset + 2)
            if close < 0:
                raise _Invalid(offset, 'this comment is never closed with "*/"')
            offset = close + 2
        else:
            break
    return offset


def _is_name_start(char: str) -> bool:
    return char in "$_\\" or unicodedata.category(char) in _NAME_START_CATEGORIES


def _is_name_part(char: str) -> bool:
    return (
        _is_name_start(char)
        or char in "\u200c\u200d"
        or unicodedata.category(char) in _NAME_PART_CATEGORIES
    )


def _show(char: str) -> str:
    return json.dumps(char)


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.offset = 0

    def next(self) -> _Token:
        """The next token; one that is malformed comes back as kind ``invalid``, so the parser
        can first say whether anything was expected there at all."""
        start = skip_trivia(self.text, self.offset)
        try:
            return self._next(start)
        except _Invalid as exc:
            self.offset = len(self.text)  # nothing after a malformed token is read
            return _Token("invalid", start, exc.issue.offset, exc.issue.message)

    def _next(self, start: int) -> _Token:
        text = self.text
        self.offset = start
        if start >= len(text):
            return _Token("end", start, start, "")
        char = text[start]
        if char in _PUNCTUATION:
            self.offset = start + 1
            return _Token("punct", start, start + 1, char)
        if char in "\"'":
            end = self._string_end(start)
        elif char.isdigit() or char in "+-.":
            end = self._number_end(start)
            kind: TokenKind = "number"
            self.offset = end
            return _Token(kind, start, end, text[start:end])
        elif _is_name_start(char):
            end = start
            while end < len(text) and _is_name_part(text[end]):
                if text[end] == "\\":
                    digits = text[end + 2 : end + 6]
                    if (
                        text[end + 1 : end + 2] != "u"
                        or len(digits) != 4
                        or not set(digits) <= _HEX
                    ):
                        raise _Invalid(end, "invalid escape in a key: only \\uXXXX is allowed")
                    end += 6
                else:
                    end += 1
            self.offset = end
            return _Token("name", start, end, text[start:end])
        else:
            raise _Invalid(start, f"unexpected character {_show(char)}")
        self.offset = end
        return _Token("string", start, end, text[start:end])

    def _string_end(self, start: int) -> int:
        text, quote = self.text, self.text[start]
        offset = start + 1
        while offset < len(text):
            char = text[offset]
            if char == quote:
                return offset + 1
            if char in "\n\r":
                raise _Invalid(
                    start, f"this string is not closed with {quote} before the end of the line"
                )
            if char == "\\":
                offset = self._escape_end(offset)
                continue
            offset += 1
        raise _Invalid(start, f"this string is not closed with {quote}")

    def _escape_end(self, backslash: int) -> int:
        text = self.text
        kind = text[backslash + 1 : backslash + 2]
        width = {"x": 2, "u": 4}.get(kind)
        if width is not None:
            digits = text[backslash + 2 : backslash + 2 + width]
            if len(digits) != width or not set(digits) <= _HEX:
                raise _Invalid(backslash, f"invalid escape: \\{kind} needs {width} hex digits")
            return backslash + 2 + width
        if kind.isdigit() and (kind != "0" or text[backslash + 2 : backslash + 3].isdigit()):
            raise _Invalid(backslash, f"invalid escape \\{kind} (only \\0 is a digit escape)")
        if text.startswith("\r\n", backslash + 1):
            return backslash + 3
        return backslash + 2  # any other character, a line break included, escapes itself

    def _number_end(self, start: int) -> int:
        text = self.text
        match = _NUMBER.match(text, start)
        if match is None:
            raise _Invalid(start, f"unexpected character {_show(text[start])}")
        end = match.end()
        if end < len(text) and (_is_name_part(text[end]) or text[end] == "."):
            word = end
            while word < len(text) and (_is_name_part(text[word]) or text[word] in ".+-"):
                word += 1
            raise _Invalid(start, f"invalid number {_show(text[start:word])}")
        return end


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the file"
    if token.kind == "invalid":
        return f"a malformed token ({token.text})"
    if token.kind == "string":
        return "a string"
    shown = token.text if len(token.text) <= 24 else token.text[:21] + "..."
    return _show(shown)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.lexer = _Lexer(text)
        self.token = self.lexer.next()
        #: End offset of the last token consumed: where a missing comma belongs.
        self.previous_end = 0

    def advance(self) -> _Token:
        token = self.token
        self.previous_end = token.end
        self.token = self.lexer.next()
        return token

    def document(self) -> Node:
        if self.token.kind == "end":
            raise _Invalid(self.token.start, "the file holds no value (expected an object)")
        node = self.value([])
        trailing = self.current()  # (a method: the value's tokens moved self.token on)
        if trailing.kind != "end":
            raise _Invalid(
                trailing.start,
                f"unexpected {_describe(trailing)} after the end of the top-level value",
            )
        return node

    def current(self) -> _Token:
        return self.token

    def value(self, open_brackets: list[int]) -> Node:
        token = self.token
        if token.kind == "punct" and token.text == "{":
            return self.object(open_brackets)
        if token.kind == "punct" and token.text == "[":
            return self.array(open_brackets)
        if token.kind in ("string", "number") or (
            token.kind == "name" and token.text in _VALUE_NAMES
        ):
            self.advance()
            return Node(token.start, token.end, "scalar")
        if token.kind == "invalid":
            raise _Invalid(token.end, token.text)
        raise self.unexpected(token, "a value", open_brackets)

    def unexpected(self, token: _Token, expected: str, open_brackets: list[int]) -> _Invalid:
        if token.kind == "invalid" and token.end == token.start:
            return _Invalid(token.end, token.text)  # a stray character: say which
        if token.kind == "end":
            if open_brackets:
                opened = open_brackets[-1]
                line, column = line_column(self.text, opened)
                return _Invalid(
                    self.previous_end,
                    f"the file ends, but the {_show(self.text[opened])} at line {line}, column "
                    f"{column} is not closed",
                )
            return _Invalid(self.previous_end, f"the file ends where {expected} should follow")
        return _Invalid(token.start, f"expected {expected}, found {_describe(token)}")

    def missing_comma(self, closing: str, open_brackets: list[int]) -> _Invalid:
        """After an item: a token that could start another item means a comma is missing."""
        token = self.token
        if token.kind == "invalid" and token.end == token.start:
            return _Invalid(token.end, token.text)  # a stray character: say which
        starts_item = token.kind in ("string", "number", "name", "invalid") or (
            token.kind == "punct" and token.text in ("{", "[")
        )
        if token.kind != "end" and starts_item:
            line, column = line_column(self.text, token.start)
            return _Invalid(
                self.previous_end,
                f'missing "," (before {_describe(token)} at line {line}, column {column})',
            )
        return self.unexpected(token, f'"," or "{closing}"', open_brackets)

    def object(self, open_brackets: list[int]) -> Node:
        start = self.advance().start
        brackets = [*open_brackets, start]
        node = Node(start, start, "object")
        while not (self.token.kind == "punct" and self.token.text == "}"):
            key_token = self.token
            if key_token.kind == "string":
                key = _string_value(key_token.text)
            elif key_token.kind == "name":
                key = _name_value(key_token.text)
            elif key_token.kind == "invalid":
                raise _Invalid(key_token.end, key_token.text)
            else:
                raise self.unexpected(key_token, 'a key or "}"', brackets)
            self.advance()
            if not (self.token.kind == "punct" and self.token.text == ":"):
                raise self.unexpected(self.token, f'":" after the key {json.dumps(key)}', brackets)
            self.advance()
            member = Member(key, key_token.start, self.value(brackets))
            node.members.append(member)
            if self.token.kind == "punct" and self.token.text == ",":
                member.comma = self.advance().start
                continue
            if not (self.token.kind == "punct" and self.token.text == "}"):
                raise self.missing_comma("}", brackets)
        node.end = self.advance().end
        return node

    def array(self, open_brackets: list[int]) -> Node:
        start = self.advance().start
        brackets = [*open_brackets, start]
        node = Node(start, start, "array")
        while not (self.token.kind == "punct" and self.token.text == "]"):
            if self.token.kind == "end":
                raise self.unexpected(self.token, 'a value or "]"', brackets)
            node.items.append(self.value(brackets))
            if self.token.kind == "punct" and self.token.text == ",":
                self.advance()
                continue
            if not (self.token.kind == "punct" and self.token.text == "]"):
                raise self.missing_comma("]", brackets)
        node.end = self.advance().end
        return node


def _string_value(literal: str) -> str:
    """The value of a string key. Keys in a config are plain; escapes other than the JSON ones
    (rare in keys) are kept as written, which only affects finding that key for an edit."""
    body = literal[1:-1]
    if literal[0] == "'":
        body = body.replace('\\"', '"').replace('"', '\\"').replace("\\'", "'")
    try:
        value = json.loads(f'"{body}"')
    except ValueError:
        return body
    return value if isinstance(value, str) else body


def _name_value(name: str) -> str:
    if "\\" not in name:
        return name
    return re.sub(r"\\u([0-9A-Fa-f]{4})", lambda m: chr(int(m[1], 16)), name)
