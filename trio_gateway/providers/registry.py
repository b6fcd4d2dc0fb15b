"""Building the configured providers, and closing them.

Upstream providers hold a pool of HTTP connections: whoever builds them with
:func:`build_providers` closes them with :func:`close_providers` when done. A
:class:`ProviderSet` counts who is using a set of providers, so the set a config reload replaces
is closed once its last run is over, not before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol, assert_never, runtime_checkable

import trio

from ..config import Config
from ..config.schema import (
    AnthropicProviderConfig,
    EchoProviderConfig,
    OpenAIChatProviderConfig,
    ProviderConfig,
)
from .anthropic import AnthropicProvider
from .base import Provider
from .echo import EchoProvider
from .openai_chat import OpenAIChatProvider

__all__ = [
    "ClosableProvider",
    "ProviderLease",
    "ProviderSet",
    "build_provider",
    "build_providers",
    "close_providers",
]

logger = logging.getLogger(__name__)

#: Bound on closing every provider, shielded from cancellation.
_CLOSE_BOUND = 5.0


@runtime_checkable
class ClosableProvider(Protocol):
    """A provider that holds resources (connections) until ``aclose`` is awaited."""

    async def aclose(self) -> None: ...


def build_provider(
    config: ProviderConfig, *, name: str = "provider", environ: Mapping[str, str] | None = None
) -> Provider:
    """One provider from its config entry (``api`` selects the implementation).

    ``name`` is its key under ``models.providers``; ``environ`` (default ``os.environ``) is
    where ``apiKeyEnv`` is looked up, once, now. A missing key does not fail here: the
    provider's calls fail instead, so the gateway still starts.
    """
    if isinstance(config, EchoProviderConfig):
        return EchoProvider(pace_seconds=config.pace_ms / 1000)
    if isinstance(config, OpenAIChatProviderConfig):
        return OpenAIChatProvider(config, name=name, environ=environ)
    if isinstance(config, AnthropicProviderConfig):
        return AnthropicProvider(config, name=name, environ=environ)
    assert_never(config)


def build_providers(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    built: dict[str, Provider] | None = None,
) -> dict[str, Provider]:
    """Every provider under ``models.providers``, by name. Close them with
    :func:`close_providers`.

    Building one can fail (an invalid ``baseUrl``, say) after others were built: ``built``, when
    given, receives each provider as it is built (and is returned), so that when this raises
    the caller still has the ones built before the failure, to close them."""
    providers: dict[str, Provider] = {} if built is None else built
    for name, entry in config.models.providers.items():
        providers[name] = build_provider(entry, name=name, environ=environ)
    return providers


async def close_providers(providers: Mapping[str, Provider]) -> None:
    """Close every provider that holds resources; shielded and bounded, so it also runs from a
    cancelled scope. A provider that fails to close is logged and the others still close."""
    with trio.move_on_after(_CLOSE_BOUND, shield=True) as scope:
        for name, provider in providers.items():
            if not isinstance(provider, ClosableProvider):
                continue
            try:
                await provider.aclose()
            except Exception:
                logger.exception("provider.close.failed provider=%s", name)
            else:
                logger.debug("provider.close.complete provider=%s", name)
    if scope.cancelled_caught:
        logger.warning("provider.close.failed reason=timeout bound_seconds=%g", _CLOSE_BOUND)


class ProviderSet:
    """Providers built together (at start-up, or by one reload) and how many runs use them.

    Pure bookkeeping: :meth:`lease` and :meth:`retire` say, by returning ``True``, that the set
    has just become retired and unused and must now be closed (once: they never say it twice).
    Only a set its holder built (``owned``) is ever reported; one built by someone else is
    theirs to close.
    """

    def __init__(self, providers: Mapping[str, Provider], *, owned: bool) -> None:
        self.providers = providers
        self.owned = owned
        #: Leases not released yet.
        self.users = 0
        self.retired = False
        #: True once reported for closing (no new lease may be taken then).
        self.closed = False

    def lease(self, on_idle: Callable[[ProviderSet], None]) -> ProviderLease:
        """A use of the set, until the lease is released; ``on_idle`` is called with the set
        when that release leaves it retired and unused."""
        if self.closed:
            raise RuntimeError("a closed provider set was leased")
        self.users += 1
        return ProviderLease(self, on_idle)

    def retire(self) -> bool:
        """Replaced by a newer set: ``True`` when nothing uses it any more (close it now)."""
        self.retired = True
        return self._take_close()

    def _release(self) -> bool:
        self.users -= 1
        return self._take_close()

    def _take_close(self) -> bool:
        if self.retired and self.users == 0 and self.owned and not self.closed:
            self.closed = True
            return True
        return False


class ProviderLease:
    """One run's use of a :class:`ProviderSet`; :meth:`release` is idempotent and synchronous."""

    __slots__ = ("_on_idle", "_released", "provider_set")

    def __init__(self, provider_set: ProviderSet, on_idle: Callable[[ProviderSet], None]) -> None:
        self.provider_set = provider_set
        self._on_idle = on_idle
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self.provider_set._release():
            self._on_idle(self.provider_set)
