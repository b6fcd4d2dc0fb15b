"""Changing one key of the config file's text (``epiloop config set`` / ``unset``). Pure: text in,
text out; the CLI reads the file, validates the result with the normal loader and writes it.

The edit touches only the text of that one member: a changed value is replaced where it stands,
a new key is added after the last member of the nearest existing object (on its own line, with
the same indentation, when the object spans lines), and an unset key is removed together with
its line. Comments and layout elsewhere stay as written. After each edit the result is parsed
again and compared with the intended data; should they ever differ, the file is rewritten as
plain JSON instead (``Edit.rewritten``), which loses its comments, and the CLI says so.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass

import json5

from ..errors import ConfigError
from .loader import dotted_path as _dotted
from .syntax import Member, Node, parse_tree

__all__ = ["Edit", "Segment", "parse_key_path", "parse_value", "set_key", "unset_key"]

Segment = str | int

_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_BARE_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


@dataclass(frozen=True, slots=True)
class Edit:
    """The new text; ``rewritten`` when it had to be written as plain JSON (comments lost)."""

    text: str
    rewritten: bool = False


def parse_key_path(path: str) -> list[Segment]:
    """``gateway.auth.rateLimit.maxFailures`` or ``agents.list[0].model`` → its segments."""
    segments: list[Segment] = []
    position = 0
    while position < len(path):
        if segments and path[position] == ".":
            position += 1
        match = _PATH_PART.match(path, position)
        if match is None or (match[1] is not None and segments and path[position - 1] != "."):
            raise ConfigError(
                "not a key path: use dotted keys with [n] for list items, like "
                "gateway.port or agents.list[0].model",
                path=path,
            )
        segments.append(match[1] if match[1] is not None else int(match[2]))
        position = match.end()
    if not segments or not isinstance(segments[0], str):
        raise ConfigError("not a key path: it must start with a key, like gateway.port", path=path)
    return segments


def parse_value(text: str) -> object:
    """A JSON5 value (``true``, ``18789``, ``"text"``, ``[1, 2]``, ``{a: 1}``), else the text
    itself as a string (``lan``, ``local/echo``)."""
    try:
        value: object = json5.loads(text)
    except ValueError:
        return text
    return value


def set_key(text: str, path: list[Segment], value: object) -> Edit:
    """``text`` with the key at ``path`` set to ``value`` (added if it is missing)."""
    raw = _load(text)
    node, depth = _deepest(parse_tree(text), path)
    expected = copy.deepcopy(raw)
    _assign(expected, path, value)
    if depth == len(path):
        edited = text[: node.start] + _render(value) + text[node.end :]
    else:
        if node.kind != "object":
            raise ConfigError(f"{_kind(node)} here holds no keys", path=_dotted(path[:depth]))
        rest = path[depth:]
        if not all(isinstance(segment, str) for segment in rest):
            raise ConfigError("no such list item", path=_dotted(path))
        nested: object = value
        for key in reversed(rest[1:]):
            nested = {key: nested}
        edited = _insert_member(text, node, f"{_key(str(rest[0]))}: {_render(nested)}")
    return _checked(edited, expected)


def unset_key(text: str, path: list[Segment]) -> Edit | None:
    """``text`` without the key at ``path``; ``None`` when it is not set."""
    raw = _load(text)
    if not isinstance(path[-1], str):
        raise ConfigError(
            "unset removes a key; to change a list, set the whole list", path=_dotted(path)
        )
    tree = parse_tree(text)
    parent, depth = _deepest(tree, path[:-1])
    if depth < len(path) - 1 or parent.kind != "object":
        return None
    members = [member for member in parent.members if member.key == path[-1]]
    if not members:
        return None
    expected = copy.deepcopy(raw)
    _delete(expected, path)
    edited = text
    for member in reversed(members):  # duplicates: json5 keeps the last; remove them all
        index = parent.members.index(member)
        edited = _remove_member(edited, parent, index)
    return _checked(edited, expected)


# -- the text edits ------------------------------------------------------------------------------


def _deepest(tree: Node, path: list[Segment]) -> tuple[Node, int]:
    """The node of the longest prefix of ``path`` present in the text, and that prefix's
    length."""
    node = tree
    for depth, segment in enumerate(path):
        if node.kind == "object" and isinstance(segment, str):
            found = [member for member in node.members if member.key == segment]
            if not found:
                return node, depth
            node = found[-1].value  # json5 keeps the last of duplicate keys
        elif node.kind == "array" and isinstance(segment, int):
            if segment >= len(node.items):
                raise ConfigError(
                    f"no such list item (the list has {len(node.items)})",
                    path=_dotted(path[: depth + 1]),
                )
            node = node.items[segment]
        else:
            raise ConfigError(f"{_kind(node)} here holds no keys", path=_dotted(path[:depth]))
    return node, len(path)


def _insert_member(text: str, node: Node, member: str) -> str:
    newline = "\r\n" if "\r\n" in text else "\n"  # the file's own line ending
    if not node.members:
        inside = text[node.start + 1 : node.end - 1]
        if "\n" in inside:
            inner = (_indent(text, node.start) or "") + "  "
            return f"{text[: node.start + 1]}{newline}{inner}{member},{text[node.start + 1 :]}"
        return f"{text[: node.start]}{{ {member} }}{text[node.end :]}"
    last = node.members[-1]
    indent = _indent(text, last.key_start)
    anchor = last.value.end if last.comma is None else last.comma + 1
    separator = "," if last.comma is None else ""
    line_break = _line_break(text, anchor, node.end - 1)
    if line_break is not None and indent is not None:
        trailing = "," if last.comma is not None else ""
        at = line_break + 1
        text = f"{text[:at]}{indent}{member}{trailing}{newline}{text[at:]}"
        return f"{text[:anchor]}{separator}{text[anchor:]}"
    return f"{text[:anchor]}{separator} {member}{'' if last.comma is None else ','}{text[anchor:]}"


def _remove_member(text: str, node: Node, index: int) -> str:
    member: Member = node.members[index]
    end = member.value.end if member.comma is None else member.comma + 1
    line_start = text.rfind("\n", 0, member.key_start) + 1
    rest_of_line = _line_break(text, end, len(text))
    own_line = (
        not text[line_start : member.key_start].strip()
        and rest_of_line is not None
        and not _has_code(text, end, rest_of_line)
    )
    if own_line:
        assert rest_of_line is not None
        return text[:line_start] + text[rest_of_line + 1 :]
    if member.comma is not None:
        return text[: member.key_start] + _skip_spaces(text, end)
    if index > 0:  # the last member, inline: take the comma before it
        previous = node.members[index - 1]
        assert previous.comma is not None
        return text[: previous.comma] + text[end:]
    return text[: member.key_start] + text[end:]


def _line_break(text: str, start: int, stop: int) -> int | None:
    """The first line break in the whitespace and comments between ``start`` and ``stop``."""
    position = start
    while position < stop:
        if text[position] == "\n":
            return position
        if text.startswith("//", position):
            newline = text.find("\n", position)
            return None if newline < 0 or newline >= stop else newline
        if text.startswith("/*", position):
            close = text.find("*/", position + 2)
            position = stop if close < 0 else close + 2
            continue
        position += 1
    return None


def _has_code(text: str, start: int, stop: int) -> bool:
    """Whether anything but whitespace and comments lies between ``start`` and ``stop``."""
    position = start
    while position < stop:
        if text.startswith("//", position):
            return False
        if text.startswith("/*", position):
            close = text.find("*/", position + 2)
            position = stop if close < 0 else close + 2
            continue
        if not text[position].isspace():
            return True
        position += 1
    return False


def _skip_spaces(text: str, position: int) -> str:
    rest = text[position:]
    return rest.lstrip(" \t")


def _indent(text: str, offset: int) -> str | None:
    """The whitespace before ``offset`` on its line, if only whitespace is there."""
    line_start = text.rfind("\n", 0, offset) + 1
    prefix = text[line_start:offset]
    return prefix if not prefix.strip() else None


def _render(value: object) -> str:
    """``value`` as JSON5 on one line, keys unquoted where they can be."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(str(k))}: {_render(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_render(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _kind(node: Node) -> str:
    return {"object": "an object", "array": "a list"}.get(node.kind, "a plain value")


# -- the data the edit must produce --------------------------------------------------------------


def _load(text: str) -> object:
    try:
        raw: object = json5.loads(text)
    except ValueError as exc:
        raise ConfigError("the config file is not valid JSON5; fix it first") from exc
    return raw


def _assign(data: object, path: list[Segment], value: object) -> None:
    for depth, segment in enumerate(path[:-1]):
        data = _child(data, segment, path[: depth + 1], create=True)
    _store(data, path[-1], value, path)


def _delete(data: object, path: list[Segment]) -> None:
    for depth, segment in enumerate(path[:-1]):
        data = _child(data, segment, path[: depth + 1], create=False)
    assert isinstance(data, dict)
    del data[path[-1]]


def _child(data: object, segment: Segment, where: list[Segment], *, create: bool) -> object:
    if isinstance(data, dict) and isinstance(segment, str):
        if segment not in data and create:
            data[segment] = {}
        return data[segment]
    if isinstance(data, list) and isinstance(segment, int) and segment < len(data):
        return data[segment]
    raise ConfigError("no such key or list item", path=_dotted(where))


def _store(data: object, segment: Segment, value: object, path: list[Segment]) -> None:
    if isinstance(data, list) and isinstance(segment, int) and segment < len(data):
        data[segment] = value
        return
    if not (isinstance(data, dict) and isinstance(segment, str)):
        raise ConfigError("no such key or list item", path=_dotted(path))
    data[segment] = value


def _checked(edited: str, expected: object) -> Edit:
    try:
        same = json5.loads(edited) == expected
    except ValueError:
        same = False
    if same:
        return Edit(edited)
    return Edit(json.dumps(expected, indent=2, ensure_ascii=False) + "\n", rewritten=True)
