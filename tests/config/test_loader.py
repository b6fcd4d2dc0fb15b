"""Tests for :mod:`trio_gateway.config.loader` (and the starter config / redacted view).

``load_config`` always gets an explicit ``env`` mapping and paths under ``tmp_path``: these tests
never read the real environment or home directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trio_gateway.config import (
    EMBEDDED_SOURCE,
    AgentConfig,
    Config,
    config_path,
    load_config,
    parse_config,
    redacted,
    starter_config,
    state_dir,
)
from trio_gateway.config.schema import EchoProviderConfig
from trio_gateway.config.starter import REDACTED
from trio_gateway.errors import ConfigError

SOURCE = "/etc/epiloop/epiloop.json"


def config_error(text: str, source: str = SOURCE) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source=source)
    return info.value


# --- the starter config --------------------------------------------------------------------------


def test_parse_config_starter_config() -> None:
    config = parse_config(starter_config(token="s3cret-token"), source="starter.json")

    assert config.gateway.port == 18789
    assert config.gateway.bind == "loopback"
    assert config.gateway.auth.mode == "token"
    assert config.gateway.auth.token == "s3cret-token"
    assert config.gateway.auth.password is None
    assert config.gateway.auth.secret == "s3cret-token"
    assert config.gateway.http.endpoints.chat_completions.enabled is True
    assert config.models.providers == {"local": EchoProviderConfig(pace_ms=20.0)}
    assert config.agents.defaults.model == "local/echo"
    assert config.agents.defaults.timeout_seconds == 600.0
    assert config.agents.entries == [
        AgentConfig(id="main", default=True, system_prompt="You are a helpful assistant.")
    ]


@pytest.mark.parametrize("token", ['with "quotes"', "back\\slash", "ünï😀", "// not a comment"])
def test_starter_config_escapes_the_token(token: str) -> None:
    config = parse_config(starter_config(token=token, port=8080))

    assert config.gateway.auth.token == token
    assert config.gateway.port == 8080


# --- JSON5 ---------------------------------------------------------------------------------------


def test_parse_config_json5_features() -> None:
    text = """
    // a line comment
    {
      /* a block
         comment */
      gateway: {
        port: 0x1F90,          // hex
        bind: 'lan',           // single quotes
        auth: {mode: "none",},  // trailing comma in an object
      },
      agents: {
        list: [
          {id: "a", default: true},
          {id: "b", timeoutSeconds: .5, },
        ],                     // trailing comma in an array
      },
    }
    """

    config = parse_config(text)

    assert config.gateway.port == 8080
    assert config.gateway.bind == "lan"
    assert config.gateway.auth.mode == "none"
    assert [agent.id for agent in config.agents.entries] == ["a", "b"]
    assert config.agents.entries[1].timeout_seconds == 0.5


def test_parse_config_plain_json() -> None:
    config = parse_config('{"gateway": {"port": 1234, "auth": {"token": "t"}}}')

    assert config.gateway.port == 1234
    assert config.gateway.auth.token == "t"


@pytest.mark.parametrize("text", ["{", "{a: 1,,}", "{gateway: }", "", "// only a comment", "{a b}"])
def test_parse_config_rejects_malformed_json5(text: str) -> None:
    error = config_error(text)

    assert error.path is None
    assert error.source == SOURCE
    assert error.message.startswith("not valid JSON5: ")
    assert str(error).startswith(f"{SOURCE}: not valid JSON5: ")
    assert isinstance(error.__cause__, ValueError)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("[]", "an array"),
        ("[{gateway: {}}]", "an array"),
        ('"config"', "a string"),
        ("42", "a number"),
        ("1.5", "a number"),
        ("true", "a boolean"),
        ("null", "null"),
    ],
)
def test_parse_config_rejects_non_object_top_level(text: str, kind: str) -> None:
    error = config_error(text)

    assert error.path is None
    assert error.message == f"the top level must be an object, got {kind}"
    assert str(error) == f"{SOURCE}: the top level must be an object, got {kind}"


def test_parse_config_default_source_name() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[]")

    assert info.value.source == "<string>"


# --- error messages: dotted paths ----------------------------------------------------------------


def test_parse_config_type_error_message_format() -> None:
    error = config_error('{gateway: {http: {endpoints: {chatCompletions: {enabled: "yes"}}}}}')

    assert error.source == SOURCE
    assert error.path == "gateway.http.endpoints.chatCompletions.enabled"
    assert error.message == 'expected bool, got "yes"'
    assert str(error) == (
        f'{SOURCE}: gateway.http.endpoints.chatCompletions.enabled: expected bool, got "yes"'
    )


def test_parse_config_error_inside_a_list() -> None:
    error = config_error('{agents: {list: [{id: "a"}, {id: 5}]}}')

    assert error.path == "agents.list[1].id"
    assert error.message == "expected str, got 5"
    assert str(error) == f"{SOURCE}: agents.list[1].id: expected str, got 5"


def test_parse_config_missing_key_inside_a_list() -> None:
    error = config_error('{agents: {list: [{id: "a"}, {name: "no id"}]}}')

    assert error.path == "agents.list[1].id"
    assert error.message == "required key is missing"


def test_parse_config_error_inside_a_dict_valued_section() -> None:
    error = config_error('{models: {providers: {local: {api: "echo"}, x: {api: "openai"}}}}')

    assert error.path == "models.providers.x.api"
    assert (
        error.message == 'expected one of "echo", "openai-chat", "anthropic-messages", got "openai"'
    )
    allowed = '"echo", "openai-chat", "anthropic-messages"'
    assert (
        str(error) == f'{SOURCE}: models.providers.x.api: expected one of {allowed}, got "openai"'
    )


def test_parse_config_error_inside_a_dict_value_names_the_right_key() -> None:
    error = config_error(
        '{models: {providers: {a: {api: "echo"}, b: {api: "echo", paceMs: -1}, c: {api: "echo"}}}}'
    )

    assert error.path == "models.providers.b.paceMs"
    assert error.message == "expected `float` >= 0.0 (got -1)"


def test_parse_config_dict_value_of_the_wrong_type() -> None:
    error = config_error("{models: {providers: {x: 5}}}")

    assert error.path == "models.providers.x"
    assert error.message == "expected object, got 5"


@pytest.mark.parametrize(
    ("text", "got"),
    [
        pytest.param("{gateway: {port: Infinity}}", "Infinity", id="infinity"),
        pytest.param("{gateway: {port: -Infinity}}", "-Infinity", id="minus-infinity"),
        pytest.param("{gateway: {http: {keepAliveSeconds: NaN}}}", "NaN", id="nan"),
    ],
)
def test_parse_config_error_renders_non_finite_numbers(text: str, got: str) -> None:
    # JSON5 allows Infinity and NaN; the message must show what the file says, not "null".
    error = config_error(text)

    assert got in error.message
    assert "null" not in error.message


# --- error messages: unknown keys ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "suggestion"),
    [
        (
            "{gateway: {http: {endpoints: {chatCompletions: {enabeld: true}}}}}",
            "gateway.http.endpoints.chatCompletions.enabeld",
            "enabled",
        ),
        ('{agents: {list: [{id: "a", modle: "local/echo"}]}}', "agents.list[0].modle", "model"),
        ('{agents: {list: [{id: "a"}, {id: "b", modle: "x"}]}}', "agents.list[1].modle", "model"),
        ('{gateway: {auth: {tokne: "x"}}}', "gateway.auth.tokne", "token"),
        ("{gatway: {}}", "gatway", "gateway"),
        ("{gateway: {prot: 1}}", "gateway.prot", "port"),
        (
            '{models: {providers: {x: {api: "echo", pacems: 3}}}}',
            "models.providers.x.pacems",
            "paceMs",
        ),
        ("{agents: {defualts: {}}}", "agents.defualts", "defaults"),
    ],
)
def test_parse_config_unknown_key_suggests_the_closest(
    text: str, path: str, suggestion: str
) -> None:
    error = config_error(text)

    assert error.path == path
    assert error.message == f"unknown key; did you mean {suggestion!r}?"
    assert str(error) == f"{SOURCE}: {path}: unknown key; did you mean {suggestion!r}?"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("{zzzz: 1}", "zzzz"),
        ("{gateway: {qqqqqqq: 1}}", "gateway.qqqqqqq"),
        ('{agents: {list: [{id: "a", xyzzy: 1}]}}', "agents.list[0].xyzzy"),
        ('{models: {providers: {x: {api: "echo", wxyz: 1}}}}', "models.providers.x.wxyz"),
    ],
)
def test_parse_config_unknown_key_without_close_match(text: str, path: str) -> None:
    error = config_error(text)

    assert error.path == path
    assert error.message == "unknown key"
    assert "did you mean" not in str(error)
    assert str(error) == f"{SOURCE}: {path}: unknown key"


# --- load_config ---------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_state_dir_and_config_path_from_env(tmp_path: Path) -> None:
    env = {"EPILOOP_STATE_DIR": str(tmp_path / "state")}

    assert state_dir(env) == tmp_path / "state"
    assert config_path(env) == tmp_path / "state" / "epiloop.json"


def test_config_path_prefers_epiloop_config_path(tmp_path: Path) -> None:
    env = {
        "EPILOOP_STATE_DIR": str(tmp_path / "state"),
        "EPILOOP_CONFIG_PATH": str(tmp_path / "elsewhere.json5"),
    }

    assert config_path(env) == tmp_path / "elsewhere.json5"


def test_load_config_missing_default_path_uses_the_embedded_default(tmp_path: Path) -> None:
    loaded = load_config(env={"EPILOOP_STATE_DIR": str(tmp_path)})

    assert loaded.source == EMBEDDED_SOURCE
    assert loaded.config == Config()
    assert loaded.secret_sources == {}


def test_load_config_reads_the_state_dir_file(tmp_path: Path) -> None:
    path = write(tmp_path / "epiloop.json", "{gateway: {port: 4242}} // JSON5")

    loaded = load_config(env={"EPILOOP_STATE_DIR": str(tmp_path)})

    assert loaded.source == str(path)
    assert loaded.config.gateway.port == 4242


def test_load_config_state_dir_changes_the_default_path(tmp_path: Path) -> None:
    write(tmp_path / "one" / "epiloop.json", "{gateway: {port: 1111}}")
    write(tmp_path / "two" / "epiloop.json", "{gateway: {port: 2222}}")

    one = load_config(env={"EPILOOP_STATE_DIR": str(tmp_path / "one")})
    two = load_config(env={"EPILOOP_STATE_DIR": str(tmp_path / "two")})

    assert (one.config.gateway.port, two.config.gateway.port) == (1111, 2222)
    assert one.source == str(tmp_path / "one" / "epiloop.json")


def test_load_config_config_path_env(tmp_path: Path) -> None:
    path = write(tmp_path / "custom.json5", "{gateway: {bind: 'lan'}}")

    loaded = load_config(
        env={"EPILOOP_CONFIG_PATH": str(path), "EPILOOP_STATE_DIR": str(tmp_path / "unused")}
    )

    assert loaded.source == str(path)
    assert loaded.config.gateway.bind == "lan"


def test_load_config_config_path_env_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"

    with pytest.raises(ConfigError) as info:
        load_config(env={"EPILOOP_CONFIG_PATH": str(missing), "EPILOOP_STATE_DIR": str(tmp_path)})

    assert info.value.source == str(missing)
    assert info.value.message == "config file not found"
    assert str(info.value) == f"{missing}: config file not found"
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_load_config_explicit_path_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"

    with pytest.raises(ConfigError) as info:
        load_config(missing, env={"EPILOOP_STATE_DIR": str(tmp_path)})

    assert info.value.source == str(missing)
    assert info.value.message == "config file not found"


def test_load_config_explicit_path_wins_over_env(tmp_path: Path) -> None:
    explicit = write(tmp_path / "explicit.json", "{gateway: {port: 1}}")
    write(tmp_path / "env.json", "{gateway: {port: 2}}")

    loaded = load_config(explicit, env={"EPILOOP_CONFIG_PATH": str(tmp_path / "env.json")})

    assert loaded.source == str(explicit)
    assert loaded.config.gateway.port == 1


def test_load_config_unreadable_path(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory.json"
    directory.mkdir()

    with pytest.raises(ConfigError) as info:
        load_config(directory, env={})

    assert info.value.source == str(directory)
    assert info.value.message.startswith("cannot read the config file (")
    assert isinstance(info.value.__cause__, OSError)


def test_load_config_default_path_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "epiloop.json").mkdir()

    with pytest.raises(ConfigError) as info:
        load_config(env={"EPILOOP_STATE_DIR": str(tmp_path)})

    assert info.value.source == str(tmp_path / "epiloop.json")
    assert info.value.message.startswith("cannot read the config file (")


def test_load_config_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{gateway: {bind: "caf\xe9"}}')

    with pytest.raises(ConfigError) as info:
        load_config(path, env={})

    assert info.value.source == str(path)
    assert info.value.message.startswith("cannot read the config file (")
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


def test_load_config_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "epiloop.json", "{gateway: {auth: {mode: 'oauth'}}}")

    with pytest.raises(ConfigError) as info:
        load_config(path, env={})

    assert info.value.source == str(path)
    assert info.value.path == "gateway.auth.mode"
    assert str(info.value) == (
        f'{path}: gateway.auth.mode: expected one of "none", "password", "token", got "oauth"'
    )


def test_load_config_check_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "epiloop.json", "{agents: {list: [{id: 'a'}, {id: 'A'}]}}")

    with pytest.raises(ConfigError) as info:
        load_config(path, env={})

    assert info.value.source == str(path)
    assert (
        str(info.value)
        == f"{path}: agents.list[1].id: duplicate agent id 'A' (also agents.list[0])"
    )


# --- secrets from the environment ----------------------------------------------------------------


def test_load_config_token_from_env_fills_an_unset_token(tmp_path: Path) -> None:
    loaded = load_config(
        env={"EPILOOP_STATE_DIR": str(tmp_path), "EPILOOP_GATEWAY_TOKEN": "env-token"}
    )

    assert loaded.source == EMBEDDED_SOURCE
    assert loaded.config.gateway.auth.token == "env-token"
    assert loaded.config.gateway.auth.secret == "env-token"
    assert loaded.config.gateway.auth.password is None
    assert loaded.secret_sources == {"token": "EPILOOP_GATEWAY_TOKEN"}


def test_load_config_password_from_env_fills_an_unset_password(tmp_path: Path) -> None:
    path = write(tmp_path / "epiloop.json", "{gateway: {auth: {mode: 'password'}}}")

    loaded = load_config(path, env={"EPILOOP_GATEWAY_PASSWORD": "env-pass"})

    assert loaded.config.gateway.auth.password == "env-pass"
    assert loaded.config.gateway.auth.secret == "env-pass"
    assert loaded.config.gateway.auth.token is None
    assert loaded.secret_sources == {"password": "EPILOOP_GATEWAY_PASSWORD"}


def test_load_config_config_file_secret_wins_over_env(tmp_path: Path) -> None:
    path = write(
        tmp_path / "epiloop.json",
        "{gateway: {auth: {token: 'file-token', password: 'file-pass'}}}",
    )

    loaded = load_config(
        path,
        env={"EPILOOP_GATEWAY_TOKEN": "env-token", "EPILOOP_GATEWAY_PASSWORD": "env-pass"},
    )

    assert loaded.config.gateway.auth.token == "file-token"
    assert loaded.config.gateway.auth.password == "file-pass"
    assert loaded.secret_sources == {"token": "config", "password": "config"}


def test_load_config_mixed_secret_sources(tmp_path: Path) -> None:
    path = write(tmp_path / "epiloop.json", "{gateway: {auth: {token: 'file-token'}}}")

    loaded = load_config(
        path,
        env={"EPILOOP_GATEWAY_TOKEN": "env-token", "EPILOOP_GATEWAY_PASSWORD": "env-pass"},
    )

    assert loaded.config.gateway.auth.token == "file-token"
    assert loaded.config.gateway.auth.password == "env-pass"
    assert loaded.secret_sources == {"token": "config", "password": "EPILOOP_GATEWAY_PASSWORD"}


def test_load_config_empty_env_secret_is_ignored(tmp_path: Path) -> None:
    loaded = load_config(env={"EPILOOP_STATE_DIR": str(tmp_path), "EPILOOP_GATEWAY_TOKEN": ""})

    assert loaded.config.gateway.auth.token is None
    assert loaded.secret_sources == {}


def test_load_config_env_secret_keeps_the_rest_of_the_config(tmp_path: Path) -> None:
    path = write(tmp_path / "epiloop.json", starter_config(token="file-token", port=9999))
    path = write(
        tmp_path / "epiloop.json",
        path.read_text(encoding="utf-8").replace('token: "file-token",', ""),
    )

    loaded = load_config(path, env={"EPILOOP_GATEWAY_TOKEN": "env-token"})

    assert loaded.config.gateway.auth.token == "env-token"
    assert loaded.config.gateway.port == 9999
    assert loaded.config.gateway.http.endpoints.chat_completions.enabled is True
    assert loaded.secret_sources == {"token": "EPILOOP_GATEWAY_TOKEN"}


# --- redacted ------------------------------------------------------------------------------------


def test_redacted_hides_token_and_password() -> None:
    config = parse_config("{gateway: {auth: {token: 'tok-123', password: 'pass-456'}}}")

    data = redacted(config)

    gateway = data["gateway"]
    assert isinstance(gateway, dict)
    auth = gateway["auth"]
    assert (auth["mode"], auth["token"], auth["password"]) == ("token", REDACTED, REDACTED)
    assert "tok-123" not in repr(data)
    assert "pass-456" not in repr(data)
    # The config itself is untouched.
    assert config.gateway.auth.token == "tok-123"


def test_redacted_leaves_unset_secrets_null() -> None:
    data = redacted(parse_config("{gateway: {auth: {token: 'tok'}}}"))

    gateway = data["gateway"]
    assert isinstance(gateway, dict)
    auth = gateway["auth"]
    assert (auth["mode"], auth["token"], auth["password"]) == ("token", "<redacted>", None)


def test_redacted_uses_the_file_key_names() -> None:
    data: dict[str, Any] = redacted(parse_config(starter_config(token="abc")))

    gateway = data["gateway"]
    assert (gateway["port"], gateway["bind"]) == (18789, "loopback")
    assert gateway["auth"]["token"] == "<redacted>"
    assert gateway["http"]["endpoints"]["chatCompletions"] == {"enabled": True}
    assert gateway["http"]["maxBodyBytes"] == 33554432
    assert gateway["ws"]["maxFrameBytes"] == 1048576
    assert gateway["shutdownGraceSeconds"] == 30.0
    assert data["models"]["providers"]["local"]["api"] == "echo"
    assert data["models"]["providers"]["local"]["paceMs"] == 20.0
    assert data["agents"]["list"][0]["systemPrompt"] == "You are a helpful assistant."

    def keys(value: object) -> list[str]:
        if isinstance(value, dict):
            return [name for key, item in value.items() for name in (key, *keys(item))]
        if isinstance(value, list):
            return [k for item in value for k in keys(item)]
        return []

    assert all("_" not in key for key in keys(data))


def test_redacted_hides_credentials_in_a_base_url() -> None:
    config = parse_config(
        "{models: {providers: {local: {api: 'echo'}, up: {api: 'openai-chat', "
        "baseUrl: 'https://user:s3cret@example.com/v1'}}}}"
    )
    data: dict[str, Any] = redacted(config)
    assert data["models"]["providers"]["up"]["baseUrl"] == "https://<redacted>@example.com/v1"
    assert "s3cret" not in repr(data)


def test_load_config_postgres_dsn_from_env_only_when_the_file_sets_none(tmp_path: Path) -> None:
    env = {"EPILOOP_POSTGRES_DSN": "host=env-db dbname=sessions"}
    path = write(tmp_path / "epiloop.json", "{session: {store: 'postgres'}}")
    loaded = load_config(path, env=env)
    assert loaded.config.session.postgres.dsn == "host=env-db dbname=sessions"
    assert loaded.secret_sources == {"session.postgres.dsn": "EPILOOP_POSTGRES_DSN"}

    path = write(
        tmp_path / "epiloop.json",
        "{session: {store: 'postgres', postgres: {dsn: 'host=file-db dbname=sessions'}}}",
    )
    loaded = load_config(path, env=env)
    assert loaded.config.session.postgres.dsn == "host=file-db dbname=sessions"
    assert loaded.secret_sources == {"session.postgres.dsn": "config"}
