"""Tests for :mod:`trio_gateway.config.credentials`: swapping a secret into a frozen config."""

from __future__ import annotations

import pytest

from trio_gateway.config import parse_config
from trio_gateway.config.credentials import with_auth_secrets, with_mode_secret


def test_with_auth_secrets_replaces_only_the_given_secrets() -> None:
    config = parse_config('{gateway: {port: 1234, auth: {mode: "token", password: "kept"}}}')
    changed = with_auth_secrets(config, {"token": "new"})
    assert changed.gateway.auth.token == "new"
    assert changed.gateway.auth.password == "kept"
    assert changed.gateway.port == 1234
    assert config.gateway.auth.token is None  # the original is untouched


def test_with_auth_secrets_nothing_to_replace_is_the_same_config() -> None:
    config = parse_config("{}")
    assert with_auth_secrets(config, {}) is config


@pytest.mark.parametrize("mode", ["token", "password"])
def test_with_mode_secret_sets_the_secret_the_mode_checks(mode: str) -> None:
    config = with_mode_secret(parse_config(f'{{gateway: {{auth: {{mode: "{mode}"}}}}}}'), "s3")
    assert config.gateway.auth.secret == "s3"


def test_with_mode_secret_refuses_mode_none() -> None:
    with pytest.raises(ValueError, match="no secret"):
        with_mode_secret(parse_config('{gateway: {auth: {mode: "none"}}}'), "s3")
