"""Running a real gateway in a test: hypercorn on 127.0.0.1 port 0, in the test's nursery."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio

from trio_gateway.agent import AgentRuntime, open_runtime
from trio_gateway.config import Config
from trio_gateway.config.loader import state_dir as default_state_dir
from trio_gateway.config.schema import check_config
from trio_gateway.providers import Provider
from trio_gateway.server import serve_gateway
from trio_gateway.sessions import MemorySessionStore, SessionStore

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


#: Three providers; the third passes the config check but cannot be built (no host).
THIRD_PROVIDER_FAILS: dict[str, Any] = {
    "models": {
        "providers": {
            "a": {"api": "openai-chat", "baseUrl": "http://127.0.0.1:9/v1"},
            "b": {"api": "anthropic-messages", "baseUrl": "http://127.0.0.1:9"},
            "c": {"api": "openai-chat", "baseUrl": "http:///v1"},
        }
    }
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


def open_test_runtime(
    config: Config,
    *,
    providers: Mapping[str, Provider] | None = None,
    sessions: SessionStore | None = None,
    state_dir: Path | None = None,
    config_path: Path | None = None,
) -> AbstractAsyncContextManager[AgentRuntime]:
    """:func:`open_runtime` with an in-memory session store unless ``sessions`` is given
    (without ``providers``, the runtime builds the configured ones and closes them)."""
    return open_runtime(
        config,
        state_dir=state_dir if state_dir is not None else default_state_dir(),
        config_path=config_path,
        providers=providers,
        sessions=sessions if sessions is not None else MemorySessionStore(),
    )


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
    config_path: Path | None = None,
    port: int = 0,
) -> RunningGateway:
    """Serve a gateway on 127.0.0.1 ``port`` (0: any free one) until ``nursery`` is cancelled
    (or until ``shutdown_trigger`` returns and the shutdown is over: ``RunningGateway.stopped``).

    The runtime stays open until ``nursery`` ends; without ``providers``, it builds the
    configured ones and closes them then.
    """
    config = make_config(override)
    opened = open_test_runtime(
        config,
        providers=providers,
        sessions=sessions,
        state_dir=state_dir,
        config_path=config_path,
    )
    runtime = await nursery.start(_hold, opened)
    stopped = trio.Event()
    urls = await nursery.start(_serve, runtime, stopped, shutdown_trigger, port)
    return RunningGateway(url=urls[0], runtime=runtime, stopped=stopped)


async def _serve(
    runtime: AgentRuntime,
    stopped: trio.Event,
    shutdown_trigger: Callable[[], Awaitable[None]] | None,
    port: int,
    *,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    try:
        await serve_gateway(
            runtime,
            host="127.0.0.1",
            port=port,
            shutdown_trigger=shutdown_trigger,
            task_status=task_status,
        )
    finally:
        stopped.set()


async def _hold(
    opened: AbstractAsyncContextManager[AgentRuntime],
    *,
    task_status: trio.TaskStatus[AgentRuntime],
) -> None:
    async with opened as runtime:
        task_status.started(runtime)
        await trio.sleep_forever()
