"""The starter config ``epiloop config init`` writes; the redacted view ``config show`` prints."""

from __future__ import annotations

import msgspec

from .schema import Config

__all__ = ["REDACTED", "redacted", "starter_config"]

REDACTED = "<redacted>"


def starter_config(*, token: str, port: int = 18789) -> str:
    """A commented JSON5 config: token auth with ``token``, the chat completions endpoint on."""
    token_json = msgspec.json.encode(token).decode()
    return f"""\
// Epiloop Gateway configuration (JSON5: comments and trailing commas are fine).
// Reference: docs/configuration.md
{{
  gateway: {{
    port: {port},
    bind: "loopback",            // "loopback" | "lan" | an explicit host address
    auth: {{
      mode: "token",             // "token" | "password" | "none" (loopback only)
      token: {token_json},
    }},
    http: {{
      endpoints: {{ chatCompletions: {{ enabled: true }} }},
    }},
  }},
  models: {{
    // The embedded offline provider: it streams your last message back word by word.
    providers: {{ local: {{ api: "echo", paceMs: 20 }} }},
  }},
  agents: {{
    defaults: {{ model: "local/echo", timeoutSeconds: 600 }},
    list: [
      {{ id: "main", default: true, systemPrompt: "You are a helpful assistant." }},
    ],
  }},
}}
"""


def redacted(config: Config) -> dict[str, object]:
    """The config as plain JSON data, with every secret replaced by :data:`REDACTED`."""
    data = msgspec.to_builtins(config)
    assert isinstance(data, dict)
    auth = data["gateway"]["auth"]
    for key in ("token", "password"):
        if auth.get(key) is not None:
            auth[key] = REDACTED
    for provider in data["models"]["providers"].values():
        if provider.get("apiKey") is not None:
            provider["apiKey"] = REDACTED
        base_url = provider.get("baseUrl")
        if isinstance(base_url, str):
            provider["baseUrl"] = _without_userinfo(base_url)
        # Headers often carry credentials (Authorization, x-api-key): show only their names.
        for name in provider.get("headers", {}):
            provider["headers"][name] = REDACTED
    postgres = data["session"]["postgres"]
    if postgres.get("dsn") is not None:
        postgres["dsn"] = _dsn_without_secrets(postgres["dsn"])
    return data


def _dsn_without_secrets(dsn: str) -> str:
    """The connection string with its password (and other secret parameters) redacted.

    psycopg parses connection strings exactly as libpq does, so its parser finds the secrets
    (``pg.redact_dsn``); it is imported here only when a DSN is set, so the config works
    without the ``postgres`` extra. Without psycopg the whole string is redacted."""
    try:
        from ..pg.database import redact_dsn
    except ImportError:
        return REDACTED
    return redact_dsn(dsn)


def _without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` part replaced by the redaction marker."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    host = authority.rpartition("@")[2]
    return f"{scheme}://{REDACTED}@{host}{slash}{path}"
