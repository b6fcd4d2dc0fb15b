"""Building providers, and provider sets: who uses them, and when a replaced one must be
closed."""

from __future__ import annotations

import pytest
import trio
from gateway_harness import THIRD_PROVIDER_FAILS, make_config

from trio_gateway.errors import ConfigError
from trio_gateway.providers import EchoProvider, Provider
from trio_gateway.providers.registry import ProviderSet, build_providers, close_providers


def test_registry_retired_set_is_reported_idle_once_after_its_last_lease() -> None:
    idle: list[ProviderSet] = []
    provider_set = ProviderSet({"local": EchoProvider()}, owned=True)
    first = provider_set.lease(idle.append)
    second = provider_set.lease(idle.append)
    assert provider_set.retire() is False  # still in use
    first.release()
    first.release()  # idempotent: one lease counts once
    assert idle == []
    assert provider_set.users == 1
    second.release()
    assert idle == [provider_set]
    assert provider_set.closed
    with pytest.raises(RuntimeError):
        provider_set.lease(idle.append)


def test_registry_unused_set_is_closed_when_retired_unless_someone_else_owns_it() -> None:
    owned = ProviderSet({"local": EchoProvider()}, owned=True)
    assert owned.retire() is True
    borrowed = ProviderSet({"local": EchoProvider()}, owned=False)
    lease = borrowed.lease(lambda provider_set: pytest.fail("not ours to close"))
    assert borrowed.retire() is False
    lease.release()
    assert not borrowed.closed


async def test_registry_build_providers_hands_back_those_built_before_a_failure() -> None:
    built: dict[str, Provider] = {}
    with pytest.raises(ConfigError, match="provider 'c'"):
        build_providers(make_config(THIRD_PROVIDER_FAILS), built=built)
    assert list(built) == ["local", "a", "b"]  # "local" is the harness's echo provider
    with trio.fail_after(5):
        await close_providers(built)
