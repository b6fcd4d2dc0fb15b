"""Tests for :mod:`trio_gateway.config.syntax`: where a JSON5 syntax error really is, and the
positions of values that ``epiloop config set`` edits."""

from __future__ import annotations

import random
import re

import json5
import pytest

from trio_gateway.config import parse_config, starter_config
from trio_gateway.config.syntax import find_syntax_error, line_column, parse_tree
from trio_gateway.errors import ConfigError

SOURCE = "/etc/epiloop/epiloop.json"


def json5_error(text: str) -> str | None:
    """What json5 says about ``text``, or ``None`` if it parses."""
    try:
        json5.loads(text)
    except ValueError as exc:
        return str(exc)
    return None


def error_at(text: str) -> tuple[int, int, str]:
    issue = find_syntax_error(text)
    assert issue is not None
    return (*line_column(text, issue.offset), issue.message)


# The error shapes people make, with where the mistake is (line, column).
SHAPES = [
    # A missing comma belongs right after the value before it, not at the next key.
    pytest.param(
        "{\n  a: 1\n  b: 2\n}\n",
        2,
        7,
        'missing "," (before "b" at line 3, column 3)',
        id="missing-comma",
    ),
    pytest.param(
        "{\n  a: 1   // one\n  b: 2\n}\n", 2, 7, 'missing ","', id="missing-comma-before-comment"
    ),
    pytest.param(
        '{\n  a: "x"\n  "b": 2\n}\n',
        2,
        9,
        'missing "," (before a string',
        id="missing-comma-quoted-key",
    ),
    pytest.param("{\n  a: [1\n    2],\n}\n", 2, 8, 'missing ","', id="missing-comma-in-array"),
    pytest.param(
        "{\n  a: {x: 1}\n  b: 2\n}\n", 2, 12, 'missing ","', id="missing-comma-after-object"
    ),
    # The file ends inside an object: the end of the last line, naming the open brace.
    pytest.param(
        "{\n  a: 1,\n  b: {c: 2\n}\n",
        4,
        2,
        'the "{" at line 1, column 1 is not closed',
        id="unclosed-brace",
    ),
    pytest.param(
        "{\n  a: 1,\n",
        2,
        8,
        'the "{" at line 1, column 1 is not closed',
        id="unclosed-brace-after-comma",
    ),
    pytest.param(
        "{\n  list: [1, 2\n",
        2,
        14,
        'the "[" at line 2, column 9 is not closed',
        id="unclosed-bracket",
    ),
    # A bad token at the end of a line: the token itself, not the line break after it.
    pytest.param("{\n  a: tru\n}\n", 2, 6, 'expected a value, found "tru"', id="bad-word-at-eol"),
    pytest.param("{\n  a: 1,\n  b: nul\n}\n", 3, 6, 'found "nul"', id="bad-word-at-eol-line-3"),
    pytest.param("{\n  a: 1;\n}\n", 2, 7, 'unexpected character ";"', id="semicolon-at-eol"),
    pytest.param("{\n  a: 1.2.3\n}\n", 2, 6, 'invalid number "1.2.3"', id="bad-number-at-eol"),
    pytest.param(
        "{\n  port: 18789abc,\n}\n", 2, 9, 'invalid number "18789abc"', id="number-then-letters"
    ),
    pytest.param(
        '{\n  a: "text\n}\n',
        2,
        6,
        'not closed with " before the end of the line',
        id="unterminated-string",
    ),
    pytest.param(
        "{\n  a: 1 /* note\n}\n", 2, 8, 'never closed with "*/"', id="unterminated-comment"
    ),
    # Errors on the first line.
    pytest.param(
        "{ a: 1 b: 2 }",
        1,
        7,
        'missing "," (before "b" at line 1, column 8)',
        id="first-line-missing-comma",
    ),
    pytest.param("{a: tru}", 1, 5, 'found "tru"', id="first-line-bad-word"),
    pytest.param("x{ a: 1 }", 1, 1, 'expected a value, found "x"', id="first-line-first-character"),
    pytest.param("{a-b: 1}", 1, 3, 'unexpected character "-"', id="first-line-bad-key"),
    pytest.param(
        "{a 1}", 1, 4, 'expected ":" after the key "a", found "1"', id="first-line-missing-colon"
    ),
    pytest.param(
        "{a: 1,,}", 1, 7, 'expected a key or "}", found ","', id="first-line-double-comma"
    ),
    pytest.param(
        "{a: 1}}",
        1,
        7,
        'unexpected "}" after the end of the top-level value',
        id="first-line-extra-brace",
    ),
    pytest.param("", 1, 1, "the file holds no value", id="empty"),
    pytest.param("\ufeff{\n\ta: @\n}", 2, 5, 'unexpected character "@"', id="tab-and-bom"),
    pytest.param("{\r\n  a: 1\r\n  b: 2\r\n}\r\n", 2, 7, 'missing ","', id="crlf"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"), SHAPES)
def test_find_syntax_error_points_at_the_mistake(
    text: str, line: int, column: int, message: str
) -> None:
    assert json5_error(text) is not None  # json5 refuses it too
    found_line, found_column, found_message = error_at(text)
    assert (found_line, found_column) == (line, column), found_message
    assert message in found_message


@pytest.mark.parametrize(("text", "line", "column", "message"), SHAPES)
def test_parse_config_syntax_error_names_line_and_column(
    text: str, line: int, column: int, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source=SOURCE)
    error = info.value
    assert error.message.startswith(f"not valid JSON5: line {line}, column {column}: ")
    assert message in error.message
    assert "\n" not in str(error)
    assert isinstance(error.__cause__, ValueError)


def _valid_texts() -> list[str]:
    return [
        starter_config(token="t-0123456789"),
        "{a: 1, 'b': \"2\", c: [1, 2,], d: {}, e: [], f: +Infinity, g: -NaN, h: 0x1F, i: .5,}",
        "// leading\n/* block\n comment */ {\n  \\u0061b: 'it\\'s',\n  \"x\\ny\": \"line \\\n"
        ' continued", $k_1: 1e-3, é: null, k2: true, // trailing\n}\n',
        '{a: "\u2028"} // a comment ending at U+2028\u2028',
    ]


@pytest.mark.parametrize("text", _valid_texts())
def test_find_syntax_error_accepts_what_json5_accepts(text: str) -> None:
    json5.loads(text)
    assert find_syntax_error(text) is None


def test_find_syntax_error_agrees_with_json5_and_is_never_later() -> None:
    """Mutations of valid configs: the same verdict as json5, at or before json5's position."""
    rng = random.Random(12)
    pieces = [*"{}[]:,\"'/*\n ab1.-+xe\\", "//", "/*", "*/", "0x", "\u2028", "\t", "\\u0041"]
    valid = _valid_texts()
    for _ in range(300):
        text = rng.choice(valid)
        at = rng.randrange(len(text))
        cut = rng.choice((0, 1))
        text = text[:at] + rng.choice(("", *pieces)) + text[at + cut :]
        refusal = json5_error(text)
        issue = find_syntax_error(text)
        if refusal is None:
            assert issue is None, text
            continue
        assert issue is not None, (text, refusal)
        reported = re.match(r"<string>:(\d+) .* at column (\d+)$", refusal, re.DOTALL)
        if reported is not None:
            json5_at = (int(reported[1]), int(reported[2]))
            assert line_column(text, issue.offset) <= json5_at, (text, refusal, issue)


def test_parse_tree_positions_of_members_and_items() -> None:
    text = "{\n  a: 1, // one\n  'b': [true, {c: \"x\"}],\n}"
    tree = parse_tree(text)
    assert tree.kind == "object"
    assert (tree.start, tree.end) == (0, len(text))
    a, b = tree.members
    assert (a.key, text[a.key_start], text[a.value.start : a.value.end]) == ("a", "a", "1")
    assert a.comma is not None
    assert text[a.comma] == ","
    assert b.key == "b"
    assert text[b.value.start : b.value.end] == '[true, {c: "x"}]'
    first, second = b.value.items
    assert text[first.start : first.end] == "true"
    assert second.members[0].key == "c"
    assert text[b.comma or 0] == ","
