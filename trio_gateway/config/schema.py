"""The typed configuration: msgspec structs whose encoded names are the JSON5 file's keys.

Every struct forbids unknown keys, so a misspelled key is an error rather than a silently ignored
setting. Rules a type cannot express (unique agent ids, a model that names a configured provider)
are checked by :func:`check_config`, which reports the dotted path of the offending key.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

import msgspec

from ..errors import ConfigError

__all__ = [
    "DEFAULT_TOOL_ALLOW",
    "AgentConfig",
    "AgentDefaults",
    "AgentsConfig",
    "AnthropicProviderConfig",
    "AuthConfig",
    "ChatCompletionsEndpoint",
    "Config",
    "ControlUiConfig",
    "EchoProviderConfig",
    "EndpointsConfig",
    "ExecToolConfig",
    "FinishedRunsConfig",
    "GatewayConfig",
    "HttpConfig",
    "HttpFetchToolConfig",
    "ImageFetchConfig",
    "ImagesConfig",
    "LoggingConfig",
    "ModelEntry",
    "ModelsConfig",
    "OpenAIChatProviderConfig",
    "PostgresConfig",
    "ProviderConfig",
    "SessionConfig",
    "ToolPolicy",
    "ToolsConfig",
    "UpstreamProviderConfig",
    "WsConfig",
    "check_config",
]

AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z"  # \Z: "$" would accept a trailing newline
AGENT_ID_RE = re.compile(AGENT_ID_PATTERN)


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """Common options of every config section."""


class ChatCompletionsEndpoint(_Section, frozen=True):
    enabled: bool = False


class ResponsesEndpoint(_Section, frozen=True):
    enabled: bool = False
    #: How long a stored response (and its events) is kept after its run ends.
    retention_seconds: Annotated[float, msgspec.Meta(ge=1, le=7 * 86400)] = 600.0
    #: At most this many events of one run are kept (a resume past them is refused).
    max_events_per_run: Annotated[int, msgspec.Meta(ge=16, le=10_000_000)] = 100_000
    #: At most this many bytes of events of one run are kept (likewise).
    max_event_bytes_per_run: Annotated[int, msgspec.Meta(ge=65536, le=1 << 31)] = 16 * 1024 * 1024
    #: The event log is written at most this often per run (a batch), or when it holds
    #: ``flushEvents`` new events, and once at the end: never once per token.
    flush_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    flush_events: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 512
    #: How often a reader whose run is on another instance looks for new events.
    poll_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.25


class MetricsEndpoint(_Section, frozen=True):
    enabled: bool = True
    #: Ask for the gateway's bearer credential (turn off for a scraper on a private network).
    require_auth: bool = True


class EndpointsConfig(_Section, frozen=True):
    chat_completions: ChatCompletionsEndpoint = msgspec.field(
        default_factory=ChatCompletionsEndpoint
    )
    responses: ResponsesEndpoint = msgspec.field(default_factory=ResponsesEndpoint)
    metrics: MetricsEndpoint = msgspec.field(default_factory=MetricsEndpoint)


class ImageFetchConfig(_Section, frozen=True):
    """``gateway.http.images.fetch``: fetch remote image URLs in the gateway (off: pass them on
    to the upstream as URLs). Only hosts in ``tools.httpFetch.allowHosts``, within
    ``tools.httpFetch.timeoutSeconds`` and ``images.maxBytes``, never a loopback, private or
    otherwise non-public address."""

    enabled: bool = False


class ImagesConfig(_Section, frozen=True):
    """``gateway.http.images``: the images one request may carry."""

    #: Largest image (its decoded bytes); a larger one gets 413 ``image_too_large``.
    max_bytes: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)] = 10 * 1024 * 1024
    #: Most bytes of all the images of one request; more gets 413 ``images_too_large``.
    max_total_bytes: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)] = 20 * 1024 * 1024
    #: Most image parts in one request; more gets 400 ``too_many_images``.
    max_parts: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 8
    fetch: ImageFetchConfig = msgspec.field(default_factory=ImageFetchConfig)


class HttpConfig(_Section, frozen=True):
    endpoints: EndpointsConfig = msgspec.field(default_factory=EndpointsConfig)
    #: Largest accepted request body; a larger one gets 413. The default leaves room for the
    #: default image limits (20 MiB of images are about 27 MiB of base64).
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 32 * 1024 * 1024
    #: A ``: keep-alive`` SSE comment goes out after this long without any other event.
    keep_alive_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 15.0
    #: Events buffered between an agent run and a slow client before the run waits.
    stream_buffer_events: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 64
    #: A stream whose client reads nothing for this long is abandoned: its run is aborted.
    stream_stall_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    #: A request body must arrive within this long (slow senders get 408).
    body_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    #: Largest request head (request line and headers).
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 20)] = 16 * 1024
    #: Most messages in one chat request.
    max_messages: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000
    #: Most characters of message content in one chat request, all messages together.
    max_content_chars: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)] = 2_000_000
    #: Requests and WebSocket connections served at once; more get 503 at once.
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    images: ImagesConfig = msgspec.field(default_factory=ImagesConfig)


class AuthRateLimit(_Section, frozen=True):
    """Failed credential checks allowed per client address (a direct loopback peer is exempt,
    a forwarded loopback address is not)."""

    enabled: bool = True
    max_failures: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10
    window_seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 60.0


class AuthConfig(_Section, frozen=True):
    mode: Literal["token", "password", "none"] = "token"
    token: str | None = None
    password: str | None = None
    rate_limit: AuthRateLimit = msgspec.field(default_factory=AuthRateLimit)

    @property
    def secret(self) -> str | None:
        """The credential the current mode checks (``None`` in mode ``none`` or when unset)."""
        if self.mode == "token":
            return self.token or None
        if self.mode == "password":
            return self.password or None
        return None


class WsConfig(_Section, frozen=True):
    """The WebSocket control plane (see docs/control-protocol.md)."""

    #: A client must complete ``connect`` within this long.
    handshake_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0
    #: Largest frame accepted before the handshake.
    max_pre_auth_frame_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 20)] = 64 * 1024
    #: Largest frame accepted after the handshake.
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 1024 * 1024
    #: A ``tick`` event goes out this often.
    tick_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 15.0
    #: Frames queued for a client before it counts as too slow and is disconnected.
    send_queue_frames: Annotated[int, msgspec.Meta(ge=8, le=1 << 20)] = 1024
    #: Connections that may be waiting to authenticate at once; more get 503 at the upgrade.
    max_unauthenticated_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 256


class FinishedRunsConfig(_Section, frozen=True):
    """What the gateway keeps of finished runs for ``agent.wait`` and idempotent retries."""

    #: Most finished results kept (and idempotency keys remembered).
    max_count: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 1000
    #: Most bytes the kept results hold together (their text, mostly).
    max_bytes: Annotated[int, msgspec.Meta(ge=0, le=1 << 34)] = 16 * 1024 * 1024
    #: How long a finished result (and an idempotency key) is kept.
    keep_seconds: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 600.0


class LoggingConfig(_Section, frozen=True):
    """What ``epiloop gateway`` logs to stderr (``--log-format`` / ``--log-level`` win)."""

    #: ``"console"`` (one human-readable line per record) or ``"json"`` (one object per line).
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


#: Paths the gateway's own routes hold: the control UI's base path may not be one of them.
RESERVED_PATHS = ("/v1", "/ws", "/healthz", "/readyz", "/metrics")


class ControlUiConfig(_Section, frozen=True):
    """The control page in the browser (docs/control-ui.md)."""

    #: ``true``/``false``; unset: served to requests that reach a loopback address only (so on
    #: by default for a loopback bind, off for other interfaces).
    enabled: bool | None = None
    #: Where the page is served: starts and ends with ``/`` (read at start-up).
    base_path: str = "/"
    #: Browser origins (``scheme://host[:port]``) besides the page's own that may open the
    #: WebSocket control plane, e.g. the origin of a reverse proxy that rewrites ``Host``.
    allowed_origins: list[str] = msgspec.field(default_factory=list)


class GatewayConfig(_Section, frozen=True):
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 18789
    #: ``"loopback"``, ``"lan"`` (all interfaces) or an explicit host address.
    bind: Annotated[str, msgspec.Meta(min_length=1)] = "loopback"
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    ws: WsConfig = msgspec.field(default_factory=WsConfig)
    #: Proxies (addresses or CIDR networks) whose ``X-Forwarded-For`` names the client.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    #: How long ``SIGTERM``/Ctrl-C lets in-flight requests finish before cancelling them.
    shutdown_grace_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    finished_runs: FinishedRunsConfig = msgspec.field(default_factory=FinishedRunsConfig)
    #: This process's name in status, logs and the shared run registry; default
    #: ``<host name>-<pid>``.
    instance_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    control_ui: ControlUiConfig = msgspec.field(default_factory=ControlUiConfig)


InputKind = Literal["text", "image"]


class ModelEntry(_Section, frozen=True):
    """A model a provider serves, with what it accepts: ``{"id": "gpt-4o", "input": ["text",
    "image"]}``. A plain name in the list is text only."""

    id: Annotated[str, msgspec.Meta(min_length=1)]
    input: list[InputKind] = msgspec.field(default_factory=lambda: ["text"])


#: An entry of ``models.providers.<name>.models``: a plain name (text only) or an object.
ModelListEntry = str | ModelEntry


def _model_ids(models: list[ModelListEntry]) -> list[str]:
    return [entry if isinstance(entry, str) else entry.id for entry in models]


class EchoProviderConfig(_Section, frozen=True, tag="echo", tag_field="api"):
    """The offline provider: it answers with the last user message, word by word (and describes
    the images it received). It accepts images whatever its ``models`` say."""

    #: Delay between two streamed words, in milliseconds.
    pace_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)] = 20.0
    #: The model names it serves; empty: any.
    models: list[ModelListEntry] = msgspec.field(default_factory=list)

    @property
    def model_ids(self) -> list[str]:
        return _model_ids(self.models)

    def accepts_images(self, model: str) -> bool:
        return True


Seconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]


class _UpstreamProviderConfig(_Section, frozen=True):
    """Settings every HTTP upstream provider shares."""

    base_url: str = ""
    #: The API key (prefer ``apiKeyEnv``, so the secret stays out of the file).
    api_key: str | None = None
    #: The environment variable holding the API key, e.g. ``"OPENAI_API_KEY"``.
    api_key_env: str | None = None
    #: Extra request headers sent upstream.
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    #: The models it serves (names, or ``{"id", "input"}`` objects); empty: any, text only.
    models: list[ModelListEntry] = msgspec.field(default_factory=list)
    #: Deadline for opening the connection (each attempt).
    connect_timeout_seconds: Seconds = 10.0
    #: Deadline from sending the request to the first streamed token (each attempt).
    first_token_timeout_seconds: Seconds = 120.0
    #: Longest silence allowed between two streamed events once the answer started.
    idle_timeout_seconds: Seconds = 120.0
    #: Longest line, and most data in one event, of the upstream's event stream.
    max_event_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 1024 * 1024
    #: Retries of a retryable failure (429, 5xx, connection error) before the first token.
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    #: First retry delay; doubled at each retry, capped at ``retryMaxDelaySeconds``.
    retry_delay_seconds: Annotated[float, msgspec.Meta(ge=0, le=600)] = 0.5
    retry_max_delay_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 20.0

    @property
    def model_ids(self) -> list[str]:
        return _model_ids(self.models)

    def accepts_images(self, model: str) -> bool:
        """Whether ``model`` is listed with ``"image"`` among its ``input`` kinds."""
        return any(
            isinstance(entry, ModelEntry) and entry.id == model and "image" in entry.input
            for entry in self.models
        )


class OpenAIChatProviderConfig(
    _UpstreamProviderConfig, frozen=True, tag="openai-chat", tag_field="api"
):
    """Any OpenAI-compatible Chat Completions server (OpenAI, vLLM, Ollama, llama.cpp, ...)."""

    base_url: str = "https://api.openai.com/v1"


class AnthropicProviderConfig(
    _UpstreamProviderConfig, frozen=True, tag="anthropic-messages", tag_field="api"
):
    """Anthropic's Messages API."""

    base_url: str = "https://api.anthropic.com"
    anthropic_version: str = "2023-06-01"
    #: Anthropic requires ``max_tokens``; used when the request sets none.
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 4096


ProviderConfig = EchoProviderConfig | OpenAIChatProviderConfig | AnthropicProviderConfig
#: The config of either HTTP provider (they share every connection setting).
UpstreamProviderConfig = OpenAIChatProviderConfig | AnthropicProviderConfig


def _default_providers() -> dict[str, ProviderConfig]:
    return {"local": EchoProviderConfig()}


class ModelsConfig(_Section, frozen=True):
    providers: dict[str, ProviderConfig] = msgspec.field(default_factory=_default_providers)


#: The built-in tools an agent may use unless its policy says otherwise. ``http_fetch`` and
#: ``exec`` reach outside the workspace: they are off unless a policy allows them.
DEFAULT_TOOL_ALLOW = ("current_time", "read_file", "list_files", "write_file")


class ToolPolicy(_Section, frozen=True):
    """Which tools an agent may use: names or ``*`` patterns; ``deny`` wins over ``allow``."""

    allow: list[str] | None = None
    deny: list[str] = msgspec.field(default_factory=list)


class AgentDefaults(_Section, frozen=True):
    #: ``"<provider>/<model>"``.
    model: str = "local/echo"
    #: Models tried in order when the model fails before its first token.
    fallbacks: list[str] = msgspec.field(default_factory=list)
    timeout_seconds: Seconds = 600.0
    system_prompt: str | None = None
    tools: ToolPolicy = msgspec.field(default_factory=ToolPolicy)
    #: Model calls a run may make to use tools before it is stopped.
    max_tool_iterations: Annotated[int, msgspec.Meta(ge=1, le=100)] = 8
    #: Characters of model output (text, reasoning, tool calls) one run may receive.
    max_output_chars: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 1_000_000
    #: Runs at once across the gateway; more wait in a queue of ``maxQueued``.
    max_concurrent: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 64
    max_queued: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 256
    #: Runs at once across every instance sharing the PostgreSQL store (``session.store:
    #: "postgres"``); ``None``: no cluster-wide cap, only each process's ``maxConcurrent``.
    cluster_max_concurrent: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    #: Where file and exec tools work; default: ``<state dir>/workspaces/<agent id>``.
    workspace: str | None = None


class AgentConfig(_Section, frozen=True):
    id: Annotated[str, msgspec.Meta(pattern=AGENT_ID_PATTERN)]
    default: bool = False
    name: str | None = None
    system_prompt: str | None = None
    model: str | None = None
    fallbacks: list[str] | None = None
    timeout_seconds: Seconds | None = None
    tools: ToolPolicy | None = None
    max_tool_iterations: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    workspace: str | None = None


def _default_agents() -> list[AgentConfig]:
    return [AgentConfig(id="main", default=True, system_prompt="You are a helpful assistant.")]


class AgentsConfig(_Section, frozen=True):
    defaults: AgentDefaults = msgspec.field(default_factory=AgentDefaults)
    #: ``agents.list`` in the file.
    entries: list[AgentConfig] = msgspec.field(default_factory=_default_agents, name="list")


class PostgresConfig(_Section, frozen=True):
    """``session.postgres``: the shared database of the scale-out mode."""

    #: A libpq connection string or ``postgresql://`` URL; unset: ``$EPILOOP_POSTGRES_DSN``.
    dsn: str | None = None
    #: Connections each gateway process keeps to the database (at most).
    pool_size: Annotated[int, msgspec.Meta(ge=2, le=1000)] = 10
    #: How long a session's lane stays held by an instance that stopped renewing it (it died,
    #: or lost the database): the next run of the session waits at most this long.
    lease_seconds: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 10.0


class SessionConfig(_Section, frozen=True):
    #: ``"sqlite"`` (durable, in the state directory), ``"memory"`` (lost on exit) or
    #: ``"postgres"`` (shared by every gateway instance: the scale-out mode).
    store: Literal["sqlite", "memory", "postgres"] = "sqlite"
    postgres: PostgresConfig = msgspec.field(default_factory=PostgresConfig)
    #: The SQLite file; default ``<state dir>/sessions.sqlite``.
    path: str | None = None
    #: Record stateless requests too (off: one-off calls leave no sessions behind).
    persist_stateless: bool = False
    #: How long a request waits for its session's previous run before a 409 ``session_busy``.
    queue_timeout_seconds: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 30.0
    #: ``/readyz`` probes the store with a real read and write at most this often.
    probe_interval_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 5.0
    #: The SQLite WAL is checkpointed and truncated at most this often (on the next write).
    wal_checkpoint_seconds: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 30.0
    #: The SQLite database may not grow past this; ``None``: as far as the disk allows.
    max_bytes: Annotated[int, msgspec.Meta(ge=1 << 20)] | None = None
    #: Most bytes of distinct images one session may hold (every store); a request that would
    #: pass it gets 413 ``session_images_too_large``.
    max_image_bytes: Annotated[int, msgspec.Meta(ge=0, le=1 << 40)] = 64 * 1024 * 1024
    #: Most distinct images one session may hold.
    max_images: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 64


class HttpFetchToolConfig(_Section, frozen=True):
    #: Hosts ``http_fetch`` may reach (``*.example.com`` patterns); empty: none.
    allow_hosts: list[str] = msgspec.field(default_factory=list)
    max_bytes: Annotated[int, msgspec.Meta(ge=1, le=64 * 1024 * 1024)] = 1024 * 1024
    timeout_seconds: Seconds = 20.0


class ExecToolConfig(_Section, frozen=True):
    timeout_seconds: Seconds = 60.0
    max_output_bytes: Annotated[int, msgspec.Meta(ge=1, le=64 * 1024 * 1024)] = 64 * 1024


class ToolsConfig(_Section, frozen=True):
    #: Deadline of one tool call (a tool's own deadline may be shorter).
    timeout_seconds: Seconds = 120.0
    #: A tool result longer than this many characters is cut, with a note to the model.
    max_result_chars: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 128 * 1024
    #: Tool calls (agent and client tools) one model answer may make.
    max_calls_per_turn: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 32
    #: Characters of arguments one tool call may have.
    max_argument_chars: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 256 * 1024
    http_fetch: HttpFetchToolConfig = msgspec.field(default_factory=HttpFetchToolConfig)
    exec: ExecToolConfig = msgspec.field(default_factory=ExecToolConfig)


class Config(_Section, frozen=True):
    """The whole configuration file."""

    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    models: ModelsConfig = msgspec.field(default_factory=ModelsConfig)
    agents: AgentsConfig = msgspec.field(default_factory=AgentsConfig)
    session: SessionConfig = msgspec.field(default_factory=SessionConfig)
    tools: ToolsConfig = msgspec.field(default_factory=ToolsConfig)


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
        for position, ref in enumerate(agent.fallbacks or ()):
            _check_model_ref(config, ref, f"agents.list[{index}].fallbacks[{position}]")
    if not config.agents.entries:
        raise ConfigError("at least one agent must be configured", path="agents.list")
    if defaults > 1:
        raise ConfigError("at most one agent may have default: true", path="agents.list")
    _check_model_ref(config, config.agents.defaults.model, "agents.defaults.model")
    for position, ref in enumerate(config.agents.defaults.fallbacks):
        _check_model_ref(config, ref, f"agents.defaults.fallbacks[{position}]")
    for name, provider in config.models.providers.items():
        if isinstance(provider, EchoProviderConfig):
            continue
        if not provider.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"expected an http:// or https:// URL, got {provider.base_url!r}",
                path=f"models.providers.{name}.baseUrl",
            )
    for index, proxy in enumerate(config.gateway.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"expected an IP address or CIDR network, got {proxy!r}",
                path=f"gateway.trustedProxies[{index}]",
            ) from None
    auth = config.gateway.auth
    if auth.mode in ("token", "password") and getattr(auth, auth.mode) == "":
        raise ConfigError("must not be empty", path=f"gateway.auth.{auth.mode}")
    _check_control_ui(config.gateway.control_ui)


_BASE_PATH_RE = re.compile(r"\A/(?:[A-Za-z0-9._~-]+/)*\Z")
_ORIGIN_RE = re.compile(
    r"\Ahttps?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?\Z|\Ahttps?://\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?\Z"
)


def _check_control_ui(ui: ControlUiConfig) -> None:
    path = ui.base_path
    if not _BASE_PATH_RE.match(path) or "/./" in path or "/../" in path:
        raise ConfigError(
            f'expected a path that starts and ends with "/" (like "/" or "/control/"), '
            f"got {path!r}",
            path="gateway.controlUi.basePath",
        )
    taken = next((p for p in RESERVED_PATHS if (path + "/").startswith(p + "/")), None)
    if taken is not None:
        raise ConfigError(
            f"{path!r} is under {taken}, which the gateway's own routes hold",
            path="gateway.controlUi.basePath",
        )
    for index, origin in enumerate(ui.allowed_origins):
        if not _ORIGIN_RE.match(origin):
            raise ConfigError(
                f'expected an origin like "https://gateway.example.com", got {origin!r}',
                path=f"gateway.controlUi.allowedOrigins[{index}]",
            )


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
    served = config.models.providers[provider].model_ids
    if served and model not in served:
        raise ConfigError(
            f"provider {provider!r} does not list model {model!r} (its models: "
            f"{', '.join(served)})",
            path=path,
        )
