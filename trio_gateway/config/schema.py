"""The typed configuration: msgspec structs whose encoded names are the JSON5 file's keys.

Every struct forbids unknown keys, so a misspelled key is an error rather than a silently ignored
setting. Rules a type cannot express (unique agent ids, a model that names a configured provider)
are checked by :func:`check_config`, which reports the dotted path of the offending key.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from ..errors import ConfigError

__all__ = [
    "AgentConfig",
    "AgentDefaults",
    "AgentsConfig",
    "AuthConfig",
    "ChatCompletionsEndpoint",
    "Config",
    "EndpointsConfig",
    "GatewayConfig",
    "HttpConfig",
    "ModelsConfig",
    "ProviderConfig",
    "check_config",
]

AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z"  # \Z: "$" would accept a trailing newline
AGENT_ID_RE = re.compile(AGENT_ID_PATTERN)


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """Common options of every config section."""


class ChatCompletionsEndpoint(_Section, frozen=True):
    enabled: bool = False


class EndpointsConfig(_Section, frozen=True):
    chat_completions: ChatCompletionsEndpoint = msgspec.field(
        default_factory=ChatCompletionsEndpoint
    )


class HttpConfig(_Section, frozen=True):
    endpoints: EndpointsConfig = msgspec.field(default_factory=EndpointsConfig)
    #: Largest accepted request body; a larger one gets 413.
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 4 * 1024 * 1024
    #: A ``: keep-alive`` SSE comment goes out after this long without any other event.
    keep_alive_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 15.0
    #: Events buffered between an agent run and a slow client before the run waits.
    stream_buffer_events: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 64


class AuthConfig(_Section, frozen=True):
    mode: Literal["token", "password", "none"] = "token"
    token: str | None = None
    password: str | None = None

    @property
    def secret(self) -> str | None:
        """The credential the current mode checks (``None`` in mode ``none`` or when unset)."""
        if self.mode == "token":
            return self.token or None
        if self.mode == "password":
            return self.password or None
        return None


class GatewayConfig(_Section, frozen=True):
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 18789
    #: ``"loopback"``, ``"lan"`` (all interfaces) or an explicit host address.
    bind: Annotated[str, msgspec.Meta(min_length=1)] = "loopback"
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    #: How long ``SIGTERM``/Ctrl-C lets in-flight requests finish before cancelling them.
    shutdown_grace_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0


class ProviderConfig(_Section, frozen=True):
    """A model provider. Only the offline ``echo`` provider exists so far."""

    api: Literal["echo"]
    #: Delay between two streamed words of the echo provider, in milliseconds.
    pace_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)] = 20.0


def _default_providers() -> dict[str, ProviderConfig]:
    return {"local": ProviderConfig(api="echo")}


class ModelsConfig(_Section, frozen=True):
    providers: dict[str, ProviderConfig] = msgspec.field(default_factory=_default_providers)


class AgentDefaults(_Section, frozen=True):
    #: ``"<provider>/<model>"``.
    model: str = "local/echo"
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 600.0
    system_prompt: str | None = None


class AgentConfig(_Section, frozen=True):
    id: Annotated[str, msgspec.Meta(pattern=AGENT_ID_PATTERN)]
    default: bool = False
    name: str | None = None
    system_prompt: str | None = None
    model: str | None = None
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] | None = None


def _default_agents() -> list[AgentConfig]:
    return [AgentConfig(id="main", default=True, system_prompt="You are a helpful assistant.")]


class AgentsConfig(_Section, frozen=True):
    defaults: AgentDefaults = msgspec.field(default_factory=AgentDefaults)
    #: ``agents.list`` in the file.
    entries: list[AgentConfig] = msgspec.field(default_factory=_default_agents, name="list")


class Config(_Section, frozen=True):
    """The whole configuration file."""

    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    models: ModelsConfig = msgspec.field(default_factory=ModelsConfig)
    agents: AgentsConfig = msgspec.field(default_factory=AgentsConfig)


def check_config(config: Config) -> None:
    """Check the cross-field rules; raise :class:`ConfigError` with the dotted path."""
    seen: dict[str, int] = {}
    defaults = 0
    for index, agent in enumerate(config.agents.entries):
        key = agent.id.lower()
        if key in seen:
            raise ConfigError(
                f"duplicate agent id {agent.id!r} (also agents.list[{seen[key]}])",
                path=f"agents.list[{index}].id",
            )
        seen[key] = index
        defaults += agent.default
        if agent.model is not None:
            _check_model_ref(config, agent.model, f"agents.list[{index}].model")
    if not config.agents.entries:
        raise ConfigError("at least one agent must be configured", path="agents.list")
    if defaults > 1:
        raise ConfigError("at most one agent may have default: true", path="agents.list")
    _check_model_ref(config, config.agents.defaults.model, "agents.defaults.model")
    auth = config.gateway.auth
    if auth.mode in ("token", "password") and getattr(auth, auth.mode) == "":
        raise ConfigError("must not be empty", path=f"gateway.auth.{auth.mode}")


def _check_model_ref(config: Config, ref: str, path: str) -> None:
    provider, sep, model = ref.partition("/")
    if not sep or not provider or not model:
        raise ConfigError(f'expected "<provider>/<model>", got {ref!r}', path=path)
    if provider not in config.models.providers:
        known = ", ".join(sorted(config.models.providers)) or "none"
        raise ConfigError(
            f"unknown provider {provider!r} (configured under models.providers: {known})",
            path=path,
        )
