"""What a reload changes, decided without I/O."""

from __future__ import annotations

import pytest
from gateway_harness import TOKEN, make_config

from trio_gateway.agent.reload import keep_running_secret, reload_warnings, restart_required
from trio_gateway.errors import ConfigError


def test_reload_keeps_the_running_secret_when_the_new_config_sets_none() -> None:
    current = make_config()
    unset = make_config({"gateway": {"auth": {"token": None}}})
    kept = keep_running_secret(current, unset)
    assert kept.gateway.auth.token == TOKEN


def test_reload_refuses_a_config_without_a_secret_to_keep() -> None:
    current = make_config({"gateway": {"auth": {"mode": "none"}}})
    unset = make_config({"gateway": {"auth": {"token": None}}})
    with pytest.raises(ConfigError) as caught:
        keep_running_secret(current, unset)
    assert caught.value.path == "gateway.auth.token"


def test_reload_lists_restart_only_keys_against_the_startup_config() -> None:
    startup = make_config()
    moved = make_config({"gateway": {"port": 18000, "logging": {"level": "debug"}}})
    assert restart_required(startup, moved) == ["gateway.port", "gateway.logging.level"]
    assert restart_required(startup, make_config()) == []


def test_reload_warns_that_ws_settings_apply_to_new_connections() -> None:
    current = make_config()
    assert reload_warnings(current, make_config()) == []
    changed = make_config({"gateway": {"ws": {"maxFrameBytes": 4096}}})
    assert reload_warnings(current, changed) == ["gateway.ws settings apply to new connections"]
