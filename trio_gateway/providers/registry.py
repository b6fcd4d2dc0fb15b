"""Building the configured providers."""

from __future__ import annotations

from ..config import Config
from ..config.schema import EchoProviderConfig, ProviderConfig
from .base import Provider
from .echo import EchoProvider

__all__ = ["build_provider", "build_providers"]


def build_provider(config: ProviderConfig) -> Provider:
    """One provider from its config entry (``api`` selects the implementation)."""
    if isinstance(config, EchoProviderConfig):
        return EchoProvider(pace_seconds=config.pace_ms / 1000)
    raise NotImplementedError(f"provider api {type(config).__name__} is not available yet")


def build_providers(config: Config) -> dict[str, Provider]:
    """Every provider under ``models.providers``, by name."""
    return {name: build_provider(entry) for name, entry in config.models.providers.items()}
