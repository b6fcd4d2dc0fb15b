"""What the HTTP providers share: their config turned into a pooled
:class:`~.upstream.UpstreamClient` (the API key, the fixed headers, the deadlines), and closing
it. OpenAI-compatible and Anthropic providers subclass :class:`HttpProvider`.

This module must not import the agent, server or tools layers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Self

import httpx

from .._version import __version__
from ..config.schema import UpstreamProviderConfig
from .upstream import UpstreamClient

__all__ = ["USER_AGENT", "HttpProvider", "resolve_api_key"]

USER_AGENT = f"epiloop-gateway/{__version__}"


def resolve_api_key(
    api_key: str | None, api_key_env: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str | None, str | None]:
    """``(key, missing_env)``: the configured key, else the named variable's value (read now);
    ``missing_env`` names the variable when it is configured but unset or empty."""
    if api_key:
        return api_key, None
    if not api_key_env:
        return None, None
    value = (os.environ if environ is None else environ).get(api_key_env, "")
    if value:
        return value, None
    return None, api_key_env


class HttpProvider:
    """What the HTTP providers share: the pooled :class:`UpstreamClient` built from their
    config (API key from ``apiKey`` or the variable ``apiKeyEnv`` names, read now; ``environ``
    defaults to ``os.environ``), and closing it. Subclasses say how the key is sent and which
    fixed headers the API wants, and implement ``stream``."""

    def __init__(
        self,
        config: UpstreamProviderConfig,
        *,
        name: str,
        environ: Mapping[str, str] | None,
        transport: httpx.AsyncBaseTransport | None,
        fixed_headers: Mapping[str, str],
        key_header: Callable[[str], tuple[str, str]],
    ) -> None:
        self.name = name
        api_key, missing_env = resolve_api_key(config.api_key, config.api_key_env, environ)
        headers = {
            "user-agent": USER_AGENT,
            "accept": "text/event-stream",
            "accept-encoding": "identity",
            "content-type": "application/json",
            **fixed_headers,
        }
        if api_key:
            header, value = key_header(api_key)
            headers[header] = value
        headers.update({key.lower(): value for key, value in config.headers.items()})
        self._upstream = UpstreamClient(
            provider=name,
            base_url=config.base_url,
            headers=headers,
            connect_timeout=config.connect_timeout_seconds,
            first_token_timeout=config.first_token_timeout_seconds,
            idle_timeout=config.idle_timeout_seconds,
            missing_key_env=missing_env,
            transport=transport,
            max_event_bytes=config.max_event_bytes,
        )

    async def aclose(self) -> None:
        await self._upstream.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
