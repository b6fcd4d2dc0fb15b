"""Tests for :mod:`trio_gateway.agent.routing`: which agent and which session a request goes to."""

from __future__ import annotations

import re

import msgspec
import pytest

from trio_gateway.agent.routing import (
    MAX_SESSION_KEY_LENGTH,
    RunTarget,
    agent_id_from_model,
    default_agent,
    main_session_key,
    message_target,
    resolve_target,
    select_agent,
)
from trio_gateway.config import Config, parse_config
from trio_gateway.errors import InvalidRequestError, ModelNotFoundError

SESSION_PARAM = "x-epiloop-session-key"


@pytest.fixture
def config() -> Config:
    """Three agents; the second is the default."""
    return parse_config(
        '{agents: {list: [{id: "main"}, {id: "Helper", default: true}, {id: "ops_2"}]}}'
    )


@pytest.fixture
def no_default_config() -> Config:
    return parse_config('{agents: {list: [{id: "first"}, {id: "second"}]}}')


def select(config: Config, model: str, header: str | None = None) -> str:
    return select_agent(config, header_agent_id=header, model=model).id


def target(
    config: Config,
    *,
    model: str = "epiloop",
    agent: str | None = None,
    session: str | None = None,
    user: str | None = None,
) -> RunTarget:
    return resolve_target(
        config, header_agent_id=agent, header_session_key=session, model=model, user=user
    )


# --- agent selection -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("epiloop", None),
        ("gpt-4o", None),
        ("", None),
        ("epiloop:main", "main"),
        ("epiloop/main", "main"),
        ("agent:main", "main"),
        ("EPILOOP:Main", "Main"),
        ("Epiloop/OPS", "OPS"),
        ("AGENT:x", "x"),
        ("epiloop:", ""),
        ("epiloop-main", None),
        ("openai/gpt-4o", None),
        ("agents:main", None),
    ],
)
def test_agent_id_from_model(model: str, expected: str | None) -> None:
    assert agent_id_from_model(model) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("epiloop:main", "main"),
        ("epiloop/main", "main"),
        ("agent:main", "main"),
        ("EPILOOP:MAIN", "main"),
        ("Agent:helper", "Helper"),
        ("epiloop/HELPER", "Helper"),
        ("agent:OPS_2", "ops_2"),
    ],
)
def test_select_agent_from_model(config: Config, model: str, expected: str) -> None:
    assert select(config, model) == expected


@pytest.mark.parametrize("model", ["epiloop", "gpt-4o", "", "EPILOOP", "epiloop-main", "main"])
def test_select_agent_other_models_mean_the_default(config: Config, model: str) -> None:
    assert select(config, model) == "Helper"


def test_select_agent_default_is_the_first_without_a_default_flag(
    no_default_config: Config,
) -> None:
    assert select(no_default_config, "gpt-4o") == "first"
    assert default_agent(no_default_config).id == "first"


def test_default_agent_is_the_one_marked_default(config: Config) -> None:
    assert default_agent(config).id == "Helper"


def test_default_agent_of_the_default_config() -> None:
    assert default_agent(parse_config("{}")).id == "main"


def test_default_agent_with_no_agents() -> None:
    # A config without agents is refused at load; a Config built in code still gets a 404.
    config = parse_config("{}")
    empty = msgspec.structs.replace(
        config, agents=msgspec.structs.replace(config.agents, entries=[])
    )
    with pytest.raises(ModelNotFoundError) as info:
        default_agent(empty)

    assert info.value.param == "model"
    assert info.value.http_status == 404


@pytest.mark.parametrize(
    ("header", "model", "expected"),
    [
        ("main", "epiloop:ops_2", "main"),
        ("ops_2", "epiloop", "ops_2"),
        ("OPS_2", "gpt-4o", "ops_2"),
        ("  main  ", "agent:Helper", "main"),
        ("helper", "epiloop:does-not-exist", "Helper"),
    ],
)
def test_select_agent_header_wins_over_model(
    config: Config, header: str, model: str, expected: str
) -> None:
    assert select(config, model, header=header) == expected


@pytest.mark.parametrize(
    ("header", "model", "param"),
    [
        (None, "epiloop:nope", "model"),
        (None, "agent:Nope", "model"),
        ("nope", "epiloop:main", "x-epiloop-agent-id"),
    ],
)
def test_select_agent_unknown_id(
    config: Config, header: str | None, model: str, param: str
) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        select(config, model, header=header)

    error = info.value
    assert error.param == param
    assert error.http_status == 404
    assert error.code == "model_not_found"
    assert error.error_type == "invalid_request_error"
    wanted = header if header is not None else model.split(":", 1)[1]
    assert error.message == (
        f"The model 'epiloop:{wanted}' does not exist: no agent {wanted!r} is configured. "
        "Available: epiloop:main, epiloop:Helper, epiloop:ops_2."
    )


@pytest.mark.parametrize(
    ("header", "model", "param"),
    [
        (None, "epiloop:bad id", "model"),
        (None, "epiloop:", "model"),
        (None, "agent:-x", "model"),
        (None, "epiloop/a/b", "model"),
        (None, "epiloop:" + "a" * 65, "model"),
        (None, "epiloop:héllo", "model"),
        ("", "epiloop", "x-epiloop-agent-id"),
        ("   ", "epiloop", "x-epiloop-agent-id"),
        ("bad id", "epiloop:main", "x-epiloop-agent-id"),
        ("main;drop", "epiloop", "x-epiloop-agent-id"),
    ],
)
def test_select_agent_invalid_id_syntax(
    config: Config, header: str | None, model: str, param: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        select(config, model, header=header)

    error = info.value
    assert type(error) is InvalidRequestError
    assert error.param == param
    assert error.http_status == 400
    assert error.message.startswith("Invalid agent id ")
    assert "expected 1-64 characters of letters, digits, '_' and '-'" in error.message


@pytest.mark.parametrize("model", ["epiloop:main\n", "agent:Helper\n"])
def test_select_agent_rejects_id_with_trailing_newline(config: Config, model: str) -> None:
    # AGENT_ID_RE ends with ``$``, which also matches before a final newline, so "main\n" passes
    # the syntax check and is then reported as a 404 for a model name containing a newline.
    with pytest.raises(InvalidRequestError) as info:
        select(config, model)

    assert type(info.value) is InvalidRequestError
    assert info.value.param == "model"


# --- session keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["s", "my-session", "user:42/thread 7", "~!@#$%^&*()", "a" * MAX_SESSION_KEY_LENGTH],
)
def test_resolve_target_session_header_is_used_as_is(config: Config, key: str) -> None:
    result = target(config, session=key, user="alice")

    assert result == RunTarget(agent=default_agent(config), session_key=key, stateless=False)


def test_resolve_target_session_header_is_not_scoped_to_the_agent(config: Config) -> None:
    first = target(config, model="epiloop:main", session="shared")
    second = target(config, model="epiloop:ops_2", session="shared")

    assert first.session_key == second.session_key == "shared"
    assert (first.agent.id, second.agent.id) == ("main", "ops_2")


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * (MAX_SESSION_KEY_LENGTH + 1), id="too-long"),
        pytest.param("a" * 1000, id="much-too-long"),
        pytest.param("a\tb", id="tab"),
        pytest.param("a\nb", id="newline"),
        pytest.param("a\rb", id="carriage-return"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\x1bb", id="escape"),
        pytest.param("a\x7fb", id="delete"),
        pytest.param("sessión", id="non-ascii-latin"),
        pytest.param("会话", id="non-ascii-cjk"),
        pytest.param("emoji-😀", id="emoji"),
        pytest.param("a\u00a0b", id="nbsp"),
    ],
)
def test_resolve_target_rejects_invalid_session_header(config: Config, key: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        target(config, session=key)

    assert info.value.param == SESSION_PARAM
    assert info.value.http_status == 400
    assert info.value.message == (
        "Invalid 'x-epiloop-session-key': expected 1 to 256 printable ASCII characters."
    )


@pytest.mark.parametrize(
    ("agent", "key"),
    [
        ("main", "agent:main:x"),
        ("main", "AGENT:Main:main"),
        ("Helper", "agent:helper:user:42"),
        ("main", "agent:main"),
        ("main", "agents:ops_2:x"),  # not the agent namespace
        ("main", "x:agent:ops_2:y"),
    ],
)
def test_resolve_target_session_key_in_the_agents_own_namespace_is_accepted(
    config: Config, agent: str, key: str
) -> None:
    result = target(config, agent=agent, session=key)

    assert (result.agent.id, result.session_key) == (agent, key)


@pytest.mark.parametrize(
    ("agent", "model", "key"),
    [
        (None, "epiloop:main", "agent:ops_2:x"),
        (None, "epiloop", "agent:main:main"),  # the default agent is Helper
        ("main", "epiloop", "Agent:OPS_2:main"),
        ("main", "epiloop", "agent:mainly:x"),
        ("main", "epiloop", "agent:ghost:x"),  # not configured: still not main's
        ("main", "epiloop", "agent::x"),
        ("main", "epiloop", "agent:"),
    ],
)
def test_resolve_target_refuses_a_session_key_naming_another_agent(
    config: Config, agent: str | None, model: str, key: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        target(config, agent=agent, model=model, session=key)

    assert info.value.http_status == 400
    assert info.value.param == SESSION_PARAM
    assert info.value.code == "session_agent_mismatch"
    assert "agent:<id>:..." in info.value.message


def test_resolve_target_session_key_mismatch_names_both_agents(config: Config) -> None:
    with pytest.raises(InvalidRequestError) as info:
        target(config, model="epiloop:main", session="agent:ops_2:secret-name")

    message = info.value.message
    assert "agent 'ops_2'" in message
    assert "agent 'main'" in message
    assert "'agent:main:...'" in message
    assert "secret-name" not in message  # the key itself is not echoed


def test_resolve_target_user_derives_a_stable_key(config: Config) -> None:
    first = target(config, model="epiloop:main", user="alice@example.com")
    second = target(config, model="epiloop:main", user="alice@example.com")

    assert first == second
    assert first.stateless is False
    assert first.agent.id == "main"
    assert re.fullmatch(r"agent:main:user:[0-9a-f]{32}", first.session_key)


def test_resolve_target_user_key_is_scoped_to_the_agent(config: Config) -> None:
    main = target(config, model="epiloop:main", user="alice")
    ops = target(config, model="epiloop:ops_2", user="alice")

    assert main.session_key != ops.session_key
    assert main.session_key.startswith("agent:main:user:")
    assert ops.session_key.startswith("agent:ops_2:user:")
    # Same user, same hash: only the agent scope differs.
    assert main.session_key.rsplit(":", 1)[1] == ops.session_key.rsplit(":", 1)[1]


def test_resolve_target_user_key_ignores_the_agent_spelling(config: Config) -> None:
    by_model = target(config, model="EPILOOP:HELPER", user="bob")
    by_header = target(config, agent="helper", user="bob")
    by_default = target(config, model="gpt-4o", user="bob")

    assert by_model.session_key == by_header.session_key == by_default.session_key
    assert by_model.session_key.startswith("agent:helper:user:")


def test_resolve_target_different_users_get_different_keys(config: Config) -> None:
    keys = {target(config, user=user).session_key for user in ("alice", "Alice", "bob", "alice ")}

    assert len(keys) == 4


@pytest.mark.parametrize(
    "user", ["alice", "Bob Smith <bob@example.com>", "with:colons:and/slashes", "ünï 😀", "x" * 500]
)
def test_resolve_target_user_key_hides_the_raw_user(config: Config, user: str) -> None:
    key = target(config, user=user).session_key

    assert user not in key
    assert key.isascii()
    assert key.isprintable()
    assert len(key) <= MAX_SESSION_KEY_LENGTH
    assert re.fullmatch(r"agent:helper:user:[0-9a-f]{32}", key)


def test_resolve_target_without_user_is_stateless_and_fresh(config: Config) -> None:
    first = target(config)
    second = target(config)

    assert first.stateless is True
    assert second.stateless is True
    assert first.session_key != second.session_key
    assert re.fullmatch(r"agent:helper:run:[0-9a-f]{32}", first.session_key)
    assert re.fullmatch(r"agent:helper:run:[0-9a-f]{32}", second.session_key)


def test_resolve_target_empty_user_is_stateless(config: Config) -> None:
    result = target(config, user="")

    assert result.stateless is True
    assert result.session_key.startswith("agent:helper:run:")


def test_resolve_target_checks_the_agent_before_the_session(config: Config) -> None:
    with pytest.raises(ModelNotFoundError):
        target(config, model="epiloop:nope", session="")


# --- a message sent to an agent by name --------------------------------------------------------


def test_main_session_key_is_the_agents_own_lowercased() -> None:
    assert main_session_key("Helper") == "agent:helper:main"


@pytest.mark.parametrize(
    ("agent", "expected_agent", "expected_key"),
    [
        (None, "Helper", "agent:helper:main"),  # the default agent
        ("main", "main", "agent:main:main"),
        ("OPS_2", "ops_2", "agent:ops_2:main"),
    ],
)
@pytest.mark.parametrize("session", [None, ""])
def test_message_target_defaults_to_the_agents_main_session(
    config: Config, agent: str | None, expected_agent: str, expected_key: str, session: str | None
) -> None:
    got = message_target(config, agent_id=agent, session_key=session)

    assert (got.agent.id, got.session_key, got.stateless) == (expected_agent, expected_key, False)


@pytest.mark.parametrize("key", ["my-session", "agent:main:work"])
def test_message_target_keeps_a_session_key_it_is_given(config: Config, key: str) -> None:
    got = message_target(config, agent_id="main", session_key=key)

    assert (got.agent.id, got.session_key, got.stateless) == ("main", key, False)


def test_message_target_checks_the_session_key_as_a_header(config: Config) -> None:
    with pytest.raises(InvalidRequestError) as mismatch:
        message_target(config, agent_id="main", session_key="agent:ops_2:x")
    with pytest.raises(InvalidRequestError) as invalid:
        message_target(config, agent_id="main", session_key="x" * (MAX_SESSION_KEY_LENGTH + 1))

    assert mismatch.value.code == "session_agent_mismatch"
    assert invalid.value.param == SESSION_PARAM


def test_message_target_unknown_agent_lists_the_configured_ones(config: Config) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        message_target(config, agent_id="nobody", session_key=None)

    assert "epiloop:main, epiloop:Helper, epiloop:ops_2" in info.value.message
