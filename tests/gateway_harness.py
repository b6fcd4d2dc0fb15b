"""Running a real gateway in a test: hypercorn on 127.0.0.1 port 0, in the test's nursery."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio

from trio_gateway.agent import AgentRuntime
from trio_gateway.config import Config
from trio_gateway.config.schema import check_config
from trio_gateway.providers import Provider, build_providers, close_providers
from trio_gateway.server import serve_gateway
from trio_gateway.sessions import SessionStore

TOKEN = "test-token-0123456789"

BASE_CONFIG: dict[str, Any] = {
    "gateway": {
        "auth": {"mode": "token", "token": TOKEN},
        "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
    },
    "models": {"providers": {"local": {"api": "echo", "paceMs": 0}}},
    "agents": {
        "defaults": {"model": "local/echo", "timeoutSeconds": 30},
        "list": [
            {"id": "main", "default": True, "systemPrompt": "You are a helpful assistant."},
            {"id": "helper", "systemPrompt": "You help."},
        ],
    },
}


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``override`` merged in (dicts merge, the rest replaces)."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def make_config(override: Mapping[str, Any] | None = None) -> Config:
    config = msgspec.convert(merge(BASE_CONFIG, override or {}), Config)
    check_config(config)
    return config


@dataclass
class RunningGateway:
    url: str
    runtime: AgentRuntime
    #: Set when ``serve_gateway`` has returned.
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def api_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}


async def start_gateway(
    nursery: trio.Nursery,
    override: Mapping[str, Any] | None = None,
    *,
    providers: Mapping[str, Provider] | None = None,
    sessions: SessionStore | None = None,
    state_dir: Path | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
) -> RunningGateway:
    """Serve a gateway on 127.0.0.1 port 0 until ``nursery`` is cancelled (or until
    ``shutdown_trigger`` returns and the shutdown is over: ``RunningGateway.stopped``).

    Without ``providers``, the configured ones are built, and closed when ``nursery`` ends.
    """
    config = make_config(override)
    if providers is None:
        providers = build_providers(config)
        await nursery.start(_own_providers, providers)
    runtime = AgentRuntime(config, providers=providers, sessions=sessions, state_dir=state_dir)
    stopped = trio.Event()
    urls = await nursery.start(_serve, runtime, stopped, shutdown_trigger)
    return RunningGateway(url=urls[0], runtime=runtime, stopped=stopped)


async def _serve(
    runtime: AgentRuntime,
    stopped: trio.Event,
    shutdown_trigger: Callable[[], Awaitable[None]] | None,
    *,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    try:
        await serve_gateway(
            runtime,
            host="127.0.0.1",
            port=0,
            shutdown_trigger=shutdown_trigger,
            task_status=task_status,
        )
    finally:
        stopped.set()


async def _own_providers(
    providers: Mapping[str, Provider], *, task_status: trio.TaskStatus[None]
) -> None:
    try:
        task_status.started()
        await trio.sleep_forever()
    finally:
        await close_providers(providers)  # shielded and bounded
