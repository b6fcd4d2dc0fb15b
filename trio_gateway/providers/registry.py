"""Building the configured providers, and closing them.

Upstream providers hold a pool of HTTP connections: whoever builds them with
:func:`build_providers` closes them with :func:`close_providers` when done.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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

__all__ = ["ClosableProvider", "build_provider", "build_providers", "close_providers"]

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
    config: Config, *, environ: Mapping[str, str] | None = None
) -> dict[str, Provider]:
    """Every provider under ``models.providers``, by name. Close them with
    :func:`close_providers`."""
    return {
        name: build_provider(entry, name=name, environ=environ)
        for name, entry in config.models.providers.items()
    }


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
    if scope.cancelled_caught:
        logger.warning("provider.close.failed reason=timeout bound_seconds=%g", _CLOSE_BOUND)
