"""Tests for :mod:`trio_gateway.config.schema`: defaults, value constraints and cross-field rules.

Configs are built through :func:`~trio_gateway.config.parse_config`, the way the gateway builds
them, so every rule is checked together with the dotted path it is reported at.
"""

from __future__ import annotations

import msgspec
import pytest

from trio_gateway.config import AgentConfig, AuthConfig, Config, parse_config
from trio_gateway.config.schema import AGENT_ID_RE, EchoProviderConfig, check_config
from trio_gateway.errors import ConfigError


def config_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="test.json5")
    return info.value


# --- defaults ------------------------------------------------------------------------------------


def test_parse_config_empty_object_gives_defaults() -> None:
    config = parse_config("{}")

    assert config == Config()
    assert config.gateway.port == 18789
    assert config.gateway.bind == "loopback"
    assert config.gateway.auth == AuthConfig(mode="token", token=None, password=None)
    assert config.gateway.http.endpoints.chat_completions.enabled is False
    assert config.gateway.http.max_body_bytes == 32 * 1024 * 1024
    assert config.gateway.http.images.max_bytes == 10 * 1024 * 1024
    assert config.gateway.http.images.max_total_bytes == 20 * 1024 * 1024
    assert config.gateway.http.images.max_parts == 8
    assert config.gateway.http.images.fetch.enabled is False
    assert config.gateway.http.keep_alive_seconds == 15.0
    assert config.gateway.http.stream_buffer_events == 64
    assert config.gateway.shutdown_grace_seconds == 30.0
    assert config.models.providers == {"local": EchoProviderConfig(pace_ms=20.0)}
    assert config.agents.defaults.model == "local/echo"
    assert config.agents.defaults.timeout_seconds == 600.0
    assert config.agents.defaults.system_prompt is None
    assert config.agents.entries == [
        AgentConfig(id="main", default=True, system_prompt="You are a helpful assistant.")
    ]


def test_parse_config_partial_section_keeps_other_defaults() -> None:
    config = parse_config("{gateway: {port: 9000}}")

    assert config.gateway.port == 9000
    assert config.gateway.bind == "loopback"
    assert config.gateway.auth.mode == "token"
    assert config.agents == Config().agents


def test_parse_config_camel_case_keys() -> None:
    config = parse_config(
        """{
          gateway: {
            shutdownGraceSeconds: 5,
            http: {maxBodyBytes: 2048, keepAliveSeconds: 0.5, streamBufferEvents: 1,
                   endpoints: {chatCompletions: {enabled: true}}},
          },
          models: {providers: {fast: {api: "echo", paceMs: 0}}},
          agents: {
            defaults: {model: "fast/echo", timeoutSeconds: 30, systemPrompt: "Be terse."},
            list: [{id: "ops", name: "Ops", systemPrompt: "Ops.", model: "fast/x",
                    timeoutSeconds: 10}],
          },
        }"""
    )

    assert config.gateway.shutdown_grace_seconds == 5.0
    assert config.gateway.http.max_body_bytes == 2048
    assert config.gateway.http.keep_alive_seconds == 0.5
    assert config.gateway.http.stream_buffer_events == 1
    assert config.gateway.http.endpoints.chat_completions.enabled is True
    assert config.models.providers == {"fast": EchoProviderConfig(pace_ms=0.0)}
    assert config.agents.defaults.model == "fast/echo"
    assert config.agents.defaults.timeout_seconds == 30.0
    assert config.agents.defaults.system_prompt == "Be terse."
    assert config.agents.entries == [
        AgentConfig(
            id="ops",
            default=False,
            name="Ops",
            system_prompt="Ops.",
            model="fast/x",
            timeout_seconds=10.0,
        )
    ]


def test_parse_config_snake_case_keys_are_unknown() -> None:
    error = config_error("{gateway: {shutdown_grace_seconds: 5}}")

    assert error.path == "gateway.shutdown_grace_seconds"
    assert error.message == "unknown key; did you mean 'shutdownGraceSeconds'?"


# --- AuthConfig.secret ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "secret"),
    [
        (AuthConfig(mode="token", token="t", password="p"), "t"),
        (AuthConfig(mode="password", token="t", password="p"), "p"),
        (AuthConfig(mode="none", token="t", password="p"), None),
        (AuthConfig(mode="token", token=None, password="p"), None),
        (AuthConfig(mode="token", token="", password="p"), None),
        (AuthConfig(mode="password", token="t", password=None), None),
        (AuthConfig(mode="password", token="t", password=""), None),
    ],
)
def test_auth_config_secret_follows_the_mode(auth: AuthConfig, secret: str | None) -> None:
    assert auth.secret == secret


# --- value constraints ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        pytest.param(
            '{gateway: {auth: {mode: "oauth"}}}',
            "gateway.auth.mode",
            'expected one of "none", "password", "token", got "oauth"',
            id="auth-mode",
        ),
        pytest.param(
            "{gateway: {port: 70000}}",
            "gateway.port",
            "expected `int` <= 65535 (got 70000)",
            id="port-high",
        ),
        pytest.param(
            "{gateway: {port: -1}}", "gateway.port", "expected `int` >= 0 (got -1)", id="port-low"
        ),
        pytest.param(
            '{gateway: {port: "80"}}', "gateway.port", 'expected int, got "80"', id="port-string"
        ),
        pytest.param(
            "{gateway: {port: 80.5}}", "gateway.port", "expected int, got 80.5", id="port-float"
        ),
        pytest.param(
            "{gateway: {port: true}}", "gateway.port", "expected int, got true", id="port-bool"
        ),
        pytest.param(
            '{gateway: {bind: ""}}',
            "gateway.bind",
            'expected `str` of length >= 1 (got "")',
            id="bind-empty",
        ),
        pytest.param(
            "{gateway: {http: {maxBodyBytes: 10}}}",
            "gateway.http.maxBodyBytes",
            "expected `int` >= 1024 (got 10)",
            id="max-body-small",
        ),
        pytest.param(
            "{gateway: {http: {keepAliveSeconds: 0}}}",
            "gateway.http.keepAliveSeconds",
            "expected `float` > 0.0 (got 0)",
            id="keep-alive-zero",
        ),
        pytest.param(
            "{gateway: {http: {streamBufferEvents: 0}}}",
            "gateway.http.streamBufferEvents",
            "expected `int` >= 1 (got 0)",
            id="buffer-zero",
        ),
        pytest.param(
            "{gateway: {auth: null}}",
            "gateway.auth",
            "expected object, got null",
            id="auth-null",
        ),
        pytest.param(
            "{agents: {defaults: {timeoutSeconds: 0}}}",
            "agents.defaults.timeoutSeconds",
            "expected `float` > 0.0 (got 0)",
            id="timeout-zero",
        ),
        pytest.param(
            "{agents: {list: {}}}", "agents.list", "expected array, got an object", id="list-object"
        ),
        pytest.param(
            '{agents: {list: [{id: "a", default: "yes"}]}}',
            "agents.list[0].default",
            'expected bool, got "yes"',
            id="agent-default-string",
        ),
        pytest.param(
            "{models: {providers: {local: {}}}}",
            "models.providers.local.api",
            "required key is missing",
            id="provider-api-missing",
        ),
        pytest.param(
            "{models: {providers: []}}",
            "models.providers",
            "expected object, got an array",
            id="providers-array",
        ),
    ],
)
def test_parse_config_rejects_bad_value(text: str, path: str, message: str) -> None:
    error = config_error(text)

    assert error.path == path
    assert error.message == message
    assert error.source == "test.json5"
    assert str(error) == f"test.json5: {path}: {message}"


@pytest.mark.parametrize(
    "agent_id",
    ["-lead", "_lead", "has space", "dot.ted", "ü", "", "a" * 65, "a/b", "a:b"],
)
def test_parse_config_rejects_invalid_agent_id(agent_id: str) -> None:
    error = config_error(f'{{agents: {{list: [{{id: "main"}}, {{id: "{agent_id}"}}]}}}}')

    assert error.path == "agents.list[1].id"
    assert error.message.startswith("expected 1-64 letters, digits, '_' or '-'")


def test_parse_config_rejects_agent_id_with_trailing_newline() -> None:
    # The pattern ends with ``$``, which also matches just before a final newline: "main\n"
    # would become an agent id (and a session key prefix) with a newline in it.
    error = config_error('{agents: {list: [{id: "main\\n"}]}}')

    assert error.path == "agents.list[0].id"


@pytest.mark.parametrize("agent_id", ["a", "Main", "0", "ops-2", "a_b", "x" * 64, "9lives"])
def test_parse_config_accepts_valid_agent_id(agent_id: str) -> None:
    config = parse_config(f'{{agents: {{list: [{{id: "{agent_id}"}}]}}}}')

    assert [agent.id for agent in config.agents.entries] == [agent_id]
    assert AGENT_ID_RE.match(agent_id)


# --- cross-field rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "duplicate_index", "first_index"),
    [
        (["main", "main"], 1, 0),
        (["Main", "ops", "MAIN"], 2, 0),
        (["a", "ops", "Ops"], 2, 1),
    ],
)
def test_parse_config_rejects_duplicate_agent_ids(
    ids: list[str], duplicate_index: int, first_index: int
) -> None:
    entries = ", ".join(f'{{id: "{agent_id}"}}' for agent_id in ids)

    error = config_error(f"{{agents: {{list: [{entries}]}}}}")

    assert error.path == f"agents.list[{duplicate_index}].id"
    assert error.message == (
        f"duplicate agent id {ids[duplicate_index]!r} (also agents.list[{first_index}])"
    )
    assert error.source == "test.json5"


def test_parse_config_rejects_two_default_agents() -> None:
    error = config_error(
        '{agents: {list: [{id: "a", default: true}, {id: "b"}, {id: "c", default: true}]}}'
    )

    assert error.path == "agents.list"
    assert error.message == "at most one agent may have default: true"


def test_parse_config_accepts_no_default_agent() -> None:
    config = parse_config('{agents: {list: [{id: "a"}, {id: "b"}]}}')

    assert [agent.default for agent in config.agents.entries] == [False, False]


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        pytest.param(
            '{agents: {list: [{id: "a", model: "remote/gpt"}]}}',
            "agents.list[0].model",
            "unknown provider 'remote' (configured under models.providers: local)",
            id="agent-unknown-provider",
        ),
        pytest.param(
            '{models: {providers: {b: {api: "echo"}, a: {api: "echo"}}},'
            ' agents: {defaults: {model: "a/x"}, list: [{id: "m"}, {id: "n", model: "c/x"}]}}',
            "agents.list[1].model",
            "unknown provider 'c' (configured under models.providers: a, b)",
            id="known-providers-sorted",
        ),
        pytest.param(
            '{agents: {defaults: {model: "remote/gpt"}}}',
            "agents.defaults.model",
            "unknown provider 'remote' (configured under models.providers: local)",
            id="defaults-unknown-provider",
        ),
        pytest.param(
            "{models: {providers: {}}}",
            "agents.defaults.model",
            "unknown provider 'local' (configured under models.providers: none)",
            id="no-providers",
        ),
        pytest.param(
            '{agents: {list: [{id: "a", model: "echo"}]}}',
            "agents.list[0].model",
            "expected \"<provider>/<model>\", got 'echo'",
            id="agent-model-no-slash",
        ),
        pytest.param(
            '{agents: {list: [{id: "a", model: "/echo"}]}}',
            "agents.list[0].model",
            "expected \"<provider>/<model>\", got '/echo'",
            id="agent-model-no-provider",
        ),
        pytest.param(
            '{agents: {list: [{id: "a", model: "local/"}]}}',
            "agents.list[0].model",
            "expected \"<provider>/<model>\", got 'local/'",
            id="agent-model-no-model",
        ),
        pytest.param(
            '{agents: {defaults: {model: "echo"}}}',
            "agents.defaults.model",
            "expected \"<provider>/<model>\", got 'echo'",
            id="defaults-model-no-slash",
        ),
    ],
)
def test_parse_config_rejects_bad_model_ref(text: str, path: str, message: str) -> None:
    error = config_error(text)

    assert error.path == path
    assert error.message == message
    assert str(error) == f"test.json5: {path}: {message}"


def test_parse_config_model_ref_may_contain_more_slashes() -> None:
    config = parse_config('{agents: {list: [{id: "a", model: "local/org/model-7b"}]}}')

    assert config.agents.entries[0].model == "local/org/model-7b"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{gateway: {auth: {token: ""}}}', "gateway.auth.token"),
        ('{gateway: {auth: {mode: "token", token: ""}}}', "gateway.auth.token"),
        ('{gateway: {auth: {mode: "password", password: ""}}}', "gateway.auth.password"),
    ],
)
def test_parse_config_rejects_empty_secret_of_the_mode(text: str, path: str) -> None:
    error = config_error(text)

    assert error.path == path
    assert error.message == "must not be empty"


@pytest.mark.parametrize(
    "text",
    [
        '{gateway: {auth: {mode: "password", password: "p", token: ""}}}',
        '{gateway: {auth: {mode: "none", token: "", password: ""}}}',
    ],
)
def test_parse_config_ignores_empty_secret_of_another_mode(text: str) -> None:
    parse_config(text)


def test_check_config_accepts_the_default_config() -> None:
    check_config(Config())


def test_check_config_error_has_no_source() -> None:
    agents = msgspec.structs.replace(
        Config().agents, entries=[AgentConfig(id="x"), AgentConfig(id="X")]
    )

    with pytest.raises(ConfigError) as info:
        check_config(Config(agents=agents))

    assert info.value.source is None
    assert info.value.path == "agents.list[1].id"
    assert str(info.value) == "agents.list[1].id: duplicate agent id 'X' (also agents.list[0])"


# --- gateway.controlUi ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        pytest.param(
            '{gateway: {controlUi: {basePath: "control"}}}',
            "gateway.controlUi.basePath",
            'expected a path that starts and ends with "/" (like "/" or "/control/"), '
            "got 'control'",
            id="relative",
        ),
        pytest.param(
            '{gateway: {controlUi: {basePath: "/control"}}}',
            "gateway.controlUi.basePath",
            'expected a path that starts and ends with "/" (like "/" or "/control/"), '
            "got '/control'",
            id="no-trailing-slash",
        ),
        pytest.param(
            '{gateway: {controlUi: {basePath: "/a/../v1/"}}}',
            "gateway.controlUi.basePath",
            'expected a path that starts and ends with "/" (like "/" or "/control/"), '
            "got '/a/../v1/'",
            id="dot-segments",
        ),
        pytest.param(
            '{gateway: {controlUi: {basePath: "/v1/ui/"}}}',
            "gateway.controlUi.basePath",
            "'/v1/ui/' is under /v1, which the gateway's own routes hold",
            id="under-v1",
        ),
        pytest.param(
            '{gateway: {controlUi: {basePath: "/ws/"}}}',
            "gateway.controlUi.basePath",
            "'/ws/' is under /ws, which the gateway's own routes hold",
            id="ws",
        ),
        pytest.param(
            '{gateway: {controlUi: {allowedOrigins: ["https://ok.example", "*"]}}}',
            "gateway.controlUi.allowedOrigins[1]",
            "expected an origin like \"https://gateway.example.com\", got '*'",
            id="wildcard-origin",
        ),
        pytest.param(
            '{gateway: {controlUi: {allowedOrigins: ["https://ops.example.com/path"]}}}',
            "gateway.controlUi.allowedOrigins[0]",
            'expected an origin like "https://gateway.example.com", '
            "got 'https://ops.example.com/path'",
            id="origin-with-path",
        ),
    ],
)
def test_parse_config_rejects_bad_control_ui(text: str, path: str, message: str) -> None:
    error = config_error(text)

    assert error.path == path
    assert error.message == message


def test_parse_config_control_ui_accepts_paths_and_origins() -> None:
    config = parse_config(
        '{gateway: {controlUi: {enabled: true, basePath: "/ops/ui/", '
        'allowedOrigins: ["https://ops.example.com", "http://[::1]:8080", "http://a.b:81"]}}}',
        source="test.json5",
    )
    ui = config.gateway.control_ui
    assert (ui.enabled, ui.base_path) == (True, "/ops/ui/")
    assert len(ui.allowed_origins) == 3
    default = parse_config("{}", source="test.json5").gateway.control_ui
    assert (default.enabled, default.base_path, default.allowed_origins) == (None, "/", [])
