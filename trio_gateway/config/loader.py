"""Finding, reading and validating the JSON5 config file, and the environment overrides.

The file is ``$EPILOOP_CONFIG_PATH``, else ``$EPILOOP_STATE_DIR/epiloop.json``, else
``~/.epiloop/epiloop.json``. When the default path does not exist the embedded default applies
(everything at its default: the offline ``echo`` provider, one ``main`` agent, the chat
completions endpoint off). A path named by ``EPILOOP_CONFIG_PATH`` must exist.

Errors name the file, the dotted key and, for a misspelled key, the closest valid one. json5 is
only ever used here: it is far too slow for the request path.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import json5
import msgspec
import msgspec.inspect as mi

from ..errors import ConfigError
from ..wire.decoding import SchemaViolation, lower_first, schema_violation
from .credentials import (
    DSN_ENV,
    DSN_KEY,
    SECRET_ENV,
    SecretField,
    with_auth_secrets,
    with_postgres_dsn,
)
from .schema import Config, check_config
from .syntax import find_syntax_error

__all__ = [
    "EMBEDDED_SOURCE",
    "LoadedConfig",
    "config_path",
    "load_config",
    "parse_config",
    "state_dir",
]

EMBEDDED_SOURCE = "<embedded default>"


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config and where it came from."""

    config: Config
    source: str
    #: For each secret that is set (``"token"``/``"password"`` of ``gateway.auth``, and
    #: ``"session.postgres.dsn"``): ``"config"`` or the env var name.
    secret_sources: Mapping[str, str]


def state_dir(env: Mapping[str, str] = os.environ) -> Path:
    """The state directory: ``$EPILOOP_STATE_DIR`` or ``~/.epiloop``."""
    configured = env.get("EPILOOP_STATE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".epiloop"


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    """The config file path (which need not exist)."""
    configured = env.get("EPILOOP_CONFIG_PATH")
    if configured:
        return Path(configured).expanduser()
    return state_dir(env) / "epiloop.json"


def load_config(path: Path | None = None, env: Mapping[str, str] = os.environ) -> LoadedConfig:
    """Load, validate and apply environment overrides. Raises :class:`ConfigError`."""
    explicit = path is not None or bool(env.get("EPILOOP_CONFIG_PATH"))
    file = path if path is not None else config_path(env)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        if explicit:
            raise ConfigError("config file not found", source=str(file)) from exc
        return _apply_env(Config(), EMBEDDED_SOURCE, env)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file ({exc})", source=str(file)) from exc
    return _apply_env(parse_config(text, source=str(file)), str(file), env)


def parse_config(text: str, *, source: str = "<string>") -> Config:
    """Parse JSON5 text into a validated :class:`Config`."""
    try:
        raw: object = json5.loads(text)
    except ValueError as exc:
        raise ConfigError(f"not valid JSON5: {_syntax_detail(text, exc)}", source=source) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be an object, got {_json_type(raw)}", source=source)
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise _translate(schema_violation(exc), raw, source) from exc
    try:
        check_config(config)
    except ConfigError as exc:
        exc.source = source
        raise
    return config


def _syntax_detail(text: str, exc: ValueError) -> str:
    """Where the syntax error is: json5 reports the furthest offset its grammar reached, often a
    token past the mistake, so the position comes from our own left-to-right reading."""
    issue = find_syntax_error(text)
    if issue is not None:
        return issue.describe(text)
    # json5 refused something our reading accepts: its own words, on one line, then.
    return str(exc).replace("<string>:", "line ").encode("unicode_escape").decode("ascii")


def _apply_env(config: Config, source: str, env: Mapping[str, str]) -> LoadedConfig:
    """Fill unset secrets from the environment (a secret in the config file wins)."""
    auth = config.gateway.auth
    sources: dict[str, str] = {}
    updates: dict[SecretField, str] = {}
    for field, variable in SECRET_ENV.items():
        if getattr(auth, field):
            sources[field] = "config"
        elif env.get(variable):
            updates[field] = env[variable]
            sources[field] = variable
    config = with_auth_secrets(config, updates)
    if config.session.postgres.dsn:
        sources[DSN_KEY] = "config"
    elif env.get(DSN_ENV):
        config = with_postgres_dsn(config, env[DSN_ENV])
        sources[DSN_KEY] = DSN_ENV
    return LoadedConfig(config=config, source=source, secret_sources=sources)


_TYPE = re.compile(r"^Expected `(?P<expected>[^`]+)`, got `[^`]+`$")
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_ANY_KEY = "[...]"


def _translate(violation: SchemaViolation, raw: object, source: str) -> ConfigError:
    detail = violation.detail
    segments = _resolve_dict_keys(_segments(violation.path), raw)
    dotted = dotted_path(segments)
    if (name := violation.unknown_field) is not None:
        key = f"{dotted}.{name}" if dotted else name
        message = "unknown key"
        close = difflib.get_close_matches(name, _keys_at(segments, raw), n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
        return ConfigError(message, source=source, path=key)
    if (name := violation.missing_field) is not None:
        return ConfigError(
            "required key is missing", source=source, path=f"{dotted}.{name}" if dotted else name
        )
    if expected := _TYPE.match(detail):
        got = _value_at(raw, segments)
        return ConfigError(
            f"expected {expected['expected']}, got {_render(got)}", source=source, path=dotted
        )
    got = _value_at(raw, segments)
    if "matching regex" in detail and segments and segments[-1] == "id":
        return ConfigError(
            "expected 1-64 letters, digits, '_' or '-', starting with a letter or digit, "
            f"got {_render(got)}",
            source=source,
            path=dotted,
        )
    tags = _tags_at(segments)
    if tags:
        allowed = ", ".join(_render(tag) for tag in tags)
        return ConfigError(
            f"expected one of {allowed}, got {_render(got)}", source=source, path=dotted
        )
    choices = _type_at(segments, raw)
    if isinstance(choices, mi.LiteralType):
        allowed = ", ".join(_render(value) for value in choices.values)
        return ConfigError(
            f"expected one of {allowed}, got {_render(got)}", source=source, path=dotted
        )
    return ConfigError(f"{lower_first(detail)} (got {_render(got)})", source=source, path=dotted)


def _segments(path: str) -> list[str | int]:
    return [
        name if name else _ANY_KEY if index == "..." else int(index)
        for name, index in _SEGMENT.findall(path)
    ]


def _resolve_dict_keys(segments: list[str | int], raw: object) -> list[str | int]:
    """msgspec reports a dict value's position as ``[...]``: find which key it was.

    The culprit is the first entry that still fails when the dict holds that entry alone.
    """
    resolved: list[str | int] = []
    for segment in segments:
        if segment == _ANY_KEY:
            container = _value_at(raw, resolved)
            if isinstance(container, dict):
                for key in container:
                    try:
                        msgspec.convert(_replaced(raw, resolved, {key: container[key]}), Config)
                    except msgspec.ValidationError:
                        segment = str(key)
                        break
        resolved.append(segment)
    return resolved


def _replaced(raw: object, segments: list[str | int], value: object) -> object:
    """A copy of ``raw`` with the value at ``segments`` replaced by ``value``."""
    if not segments:
        return value
    head, rest = segments[0], segments[1:]
    if isinstance(raw, dict) and isinstance(head, str):
        return {**raw, head: _replaced(raw[head], rest, value)}
    if isinstance(raw, list) and isinstance(head, int):
        copy = list(raw)
        copy[head] = _replaced(raw[head], rest, value)
        return copy
    return raw


def dotted_path(segments: Sequence[str | int]) -> str:
    """``['agents', 'list', 0, 'model']`` as ``agents.list[0].model``."""
    out = ""
    for segment in segments:
        if isinstance(segment, int):
            out += f"[{segment}]"
        else:
            out += f".{segment}" if out else segment
    return out


def _value_at(raw: object, segments: list[str | int]) -> object:
    value = raw
    for segment in segments:
        if isinstance(value, list) and isinstance(segment, int) and segment < len(value):
            value = value[segment]
            continue
        if not (isinstance(value, dict) and segment in value):
            return None
        value = value[segment]
    return value


def _type_at(segments: list[str | int], raw: object = None) -> mi.Type | None:
    """The schema type found by following ``segments`` from :class:`Config`.

    ``raw`` (the parsed file) picks the member of a tagged union, such as a provider's ``api``.
    """
    info = _declared_type_at(segments, raw)
    return None if info is None else _unwrap(info, _value_at(raw, segments))


def _declared_type_at(segments: list[str | int], raw: object = None) -> mi.Type | None:
    """Like :func:`_type_at`, but a union at the end is returned as the union."""
    info: mi.Type = mi.type_info(Config)
    for depth, segment in enumerate(segments):
        info = _unwrap(info, _value_at(raw, segments[:depth]))
        if isinstance(segment, int) and isinstance(info, mi.ListType):
            info = info.item_type
        elif isinstance(info, mi.DictType):
            info = info.value_type
        elif isinstance(segment, str) and isinstance(info, mi.StructType):
            by_name = {field.encode_name: field.type for field in info.fields}
            if segment not in by_name:
                return None
            info = by_name[segment]
        else:
            return None
    return info


def _keys_at(segments: list[str | int], raw: object) -> list[str]:
    """The valid keys of the struct at ``segments`` (for "did you mean" suggestions)."""
    info = _type_at(segments, raw)
    if isinstance(info, mi.StructType):
        return [field.encode_name for field in info.fields]
    return []


def _unwrap(info: mi.Type, value: object = None) -> mi.Type:
    """The member of a union that applies: a tagged struct matching ``value``'s tag, else the
    first member that is not ``None``."""
    if not isinstance(info, mi.UnionType):
        return info
    members = [member for member in info.types if not isinstance(member, mi.NoneType)]
    for member in members:
        if (
            isinstance(member, mi.StructType)
            and member.tag_field is not None
            and isinstance(value, dict)
            and value.get(member.tag_field) == member.tag
        ):
            return member
    return members[0] if members else info


def _tags_at(segments: list[str | int]) -> list[str]:
    """The allowed values when ``segments`` ends at the tag field of a tagged union."""
    if not segments:
        return []
    union = _declared_type_at(segments[:-1])
    if not isinstance(union, mi.UnionType):
        return []
    return [
        str(member.tag)
        for member in union.types
        if isinstance(member, mi.StructType) and member.tag_field == segments[-1]
    ]


def _render(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        # JSON5 allows these; JSON (and so msgspec) would render them as null.
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    return msgspec.json.encode(value).decode()


def _json_type(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
