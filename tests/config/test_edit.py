"""Tests for :mod:`trio_gateway.config.edit`: one key changed in the text, the rest kept."""

from __future__ import annotations

import json5
import pytest

from trio_gateway.config import parse_config, starter_config
from trio_gateway.config.edit import parse_key_path, parse_value, set_key, unset_key
from trio_gateway.errors import ConfigError

STARTER = starter_config(token="t-0123456789", port=18789)


def comments(text: str) -> list[str]:
    return [line.split("//", 1)[1] for line in text.splitlines() if "//" in line]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("18789", 18789),
        ("-1.5", -1.5),
        ('"text"', "text"),
        ("'x'", "x"),
        ("null", None),
        ("[1, 'a']", [1, "a"]),
        ("{a: 1}", {"a": 1}),
        ("lan", "lan"),
        ("local/echo", "local/echo"),
        ("", ""),
        ("two words", "two words"),
    ],
)
def test_parse_value_json5_else_a_plain_string(text: str, expected: object) -> None:
    assert parse_value(text) == expected


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("gateway.port", ["gateway", "port"]),
        ("agents.list[0].model", ["agents", "list", 0, "model"]),
        ("models.providers.my-llm.baseUrl", ["models", "providers", "my-llm", "baseUrl"]),
    ],
)
def test_parse_key_path(path: str, segments: list[object]) -> None:
    assert parse_key_path(path) == segments


@pytest.mark.parametrize("path", ["", ".a", "a..b", "a.", "[0]", "a[x]", "a[0]b", "a]"])
def test_parse_key_path_refuses_malformed_paths(path: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_key_path(path)
    assert info.value.path == path
    assert "gateway.port" in info.value.message  # the hint shows the form


def test_set_key_replaces_a_value_in_place_keeping_every_comment() -> None:
    edit = set_key(STARTER, ["gateway", "bind"], "lan")
    assert not edit.rewritten
    assert comments(edit.text) == comments(STARTER)
    assert 'bind: "lan",            // "loopback" | "lan"' in edit.text
    assert edit.text.replace('"lan"', '"loopback"', 1) == STARTER
    assert parse_config(edit.text).gateway.bind == "lan"


def test_set_key_adds_a_missing_key_on_its_own_line_with_the_same_indentation() -> None:
    edit = set_key(STARTER, ["gateway", "auth", "rateLimit", "maxFailures"], 5)
    assert not edit.rewritten
    assert comments(edit.text) == comments(STARTER)
    lines = edit.text.splitlines()
    token_line = lines.index('      token: "t-0123456789",')
    assert lines[token_line + 1] == "      rateLimit: { maxFailures: 5 },"
    assert parse_config(edit.text).gateway.auth.rate_limit.max_failures == 5


def test_set_key_adds_a_key_to_a_one_line_object_and_a_list_item() -> None:
    edit = set_key(STARTER, ["agents", "list", 0, "model"], "local/echo")
    assert '{ id: "main", default: true, systemPrompt: "You are a helpful assistant.", ' in (
        edit.text
    )
    assert 'model: "local/echo" },' in edit.text
    assert parse_config(edit.text).agents.entries[0].model == "local/echo"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", "{ a: 1 }"),
        ("{\n}\n", "{\n  a: 1,\n}\n"),
        ("{b: 2}", "{b: 2, a: 1}"),
        ("{b: 2,}", "{b: 2, a: 1,}"),
        ("{\n  b: 2 // two\n}\n", "{\n  b: 2, // two\n  a: 1\n}\n"),
        ("{\n  b: 2, // two\n}\n", "{\n  b: 2, // two\n  a: 1,\n}\n"),
        ("{\n  b: 2 /* two\n  lines */\n}\n", "{\n  b: 2, /* two\n  lines */\n  a: 1\n}\n"),
        ("{'a': 0, /* keep */ b: 2}", "{'a': 1, /* keep */ b: 2}"),
        ("{a: 0, a: 5}", "{a: 0, a: 1}"),  # duplicates: json5 keeps the last
        ("{\r\n  b: 2,\r\n}\r\n", "{\r\n  b: 2,\r\n  a: 1,\r\n}\r\n"),  # CRLF kept
        ("{\r\n}", "{\r\n  a: 1,\r\n}"),
    ],
)
def test_set_key_text_shapes(text: str, expected: str) -> None:
    edit = set_key(text, ["a"], 1)
    assert (edit.text, edit.rewritten) == (expected, False)
    assert json5.loads(edit.text)["a"] == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{\n  a: 1, // one\n  b: 2, // two\n}\n", "{\n  b: 2, // two\n}\n"),
        ("{\n  b: 2,\n  // about a\n  a: 1\n}\n", "{\n  b: 2,\n  // about a\n}\n"),
        ("{\n  a: {\n    x: 1,\n  },\n  b: 2,\n}\n", "{\n  b: 2,\n}\n"),
        ("{a: 1, b: 2}", "{b: 2}"),
        ("{b: 2, a: 1}", "{b: 2}"),
        ("{b: 2, a: 1, c: 3}", "{b: 2, c: 3}"),
        ("{a: 1}", "{}"),
        ("{a: 1, b: 2, a: 3}", "{b: 2}"),
        ("{\r\n  b: 2,\r\n  a: 1,\r\n}\r\n", "{\r\n  b: 2,\r\n}\r\n"),
    ],
)
def test_unset_key_text_shapes(text: str, expected: str) -> None:
    edit = unset_key(text, ["a"])
    assert edit is not None
    assert (edit.text, edit.rewritten) == (expected, False)
    assert "a" not in json5.loads(edit.text)


def test_unset_key_removes_the_line_and_keeps_other_comments() -> None:
    edit = unset_key(STARTER, ["gateway", "bind"])
    assert edit is not None
    assert "bind" not in edit.text
    kept = [comment for comment in comments(STARTER) if 'loopback" | "lan"' not in comment]
    assert comments(edit.text) == kept
    assert parse_config(edit.text).gateway.bind == "loopback"  # the default again


def test_unset_key_of_a_missing_key_changes_nothing() -> None:
    assert unset_key(STARTER, ["gateway", "trustedProxies"]) is None
    assert unset_key(STARTER, ["session", "store"]) is None


@pytest.mark.parametrize(
    ("path", "where", "message"),
    [
        (["gateway", "port", "x"], "gateway.port", "holds no keys"),
        (["agents", "list", 3, "id"], "agents.list[3]", "no such list item (the list has 1)"),
        (["agents", "list", "x"], "agents.list", "holds no keys"),
    ],
)
def test_set_key_refuses_paths_through_values(
    path: list[str | int], where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        set_key(STARTER, path, 1)
    assert info.value.path == where
    assert message in info.value.message


def test_set_key_on_an_invalid_file_asks_to_fix_it_first() -> None:
    with pytest.raises(ConfigError, match="fix it first"):
        set_key("{a: 1", ["a"], 2)
