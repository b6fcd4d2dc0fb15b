"""Real gateway processes sharing one PostgreSQL database, for the cluster end-to-end tests.

:func:`open_cluster` starts N ``python -m trio_gateway gateway --port 0`` processes on 127.0.0.1,
each with its own state directory, config file and JSON log file, a distinct
``gateway.instanceId`` and the same ``session.postgres.dsn`` (a test's fresh schema), with a
short lease so that a dead or paused process loses its lanes within seconds. Their upstream is
the test's :class:`~benchmarks.mock_upstream.MockUpstream` (an ``openai-chat`` provider ``up``),
which records when each upstream request started and ended: what a test reads to see which
runs overlapped. :func:`open_workers` serves the same config under
``hypercorn -k trio --workers N`` (the ASGI entry point; the workers take their default
instance ids, host name and pid).

No ``EPILOOP_*`` variable of the shell reaches a process: the config file alone decides.
Start-up and stop are bounded; every process is stopped (SIGCONT, SIGTERM, then SIGKILL) when
the block ends, whatever a test did to it.

Also here: small clients the tests share (a streaming chat request that reports how it ended,
the control plane of one node, the rows of ``pg_stat_activity``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks.mock_upstream import MockUpstream, RecordedRequest, Scenario
from trio_gateway.control_client import ControlClient, open_control_client

__all__ = [
    "LEASE_SECONDS",
    "TOKEN",
    "Node",
    "StreamOutcome",
    "UpstreamFactory",
    "Workers",
    "busy_interval",
    "cluster_config",
    "control",
    "most_at_once",
    "open_cluster",
    "open_workers",
    "overlapping",
    "stream_chat",
    "transcript_of",
    "user_messages",
]

TOKEN = "cluster-token-0123456789abcdef"
#: ``session.postgres.leaseSeconds`` of the test clusters: a heartbeat every 2/3 s.
LEASE_SECONDS = 2.0
#: How long a process may take to print its URL (three start at once on two shared cores).
STARTUP_BOUND_SECONDS = 45.0
#: How long it may take to exit after SIGTERM (its shutdown grace is 2 s).
STOP_BOUND_SECONDS = 10.0
_LISTENING = re.compile(rb"Listening on (http://127\.0\.0\.1:\d+)")

#: The ``serve_upstream`` fixture: start a mock upstream with these scenarios (by model; the
#: gateways ask for model ``cluster``).
UpstreamFactory = Callable[[Mapping[str, Scenario | Sequence[Scenario]]], Awaitable[MockUpstream]]


def cluster_config(
    dsn: str,
    upstream_url: str,
    *,
    instance_id: str | None,
    lease_seconds: float = LEASE_SECONDS,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One process's config: token auth, chat completions on, the mock as provider ``up``,
    the PostgreSQL store at ``dsn``; ``overrides`` merged in (dicts merge, the rest replaces)."""
    gateway: dict[str, Any] = {
        "auth": {"mode": "token", "token": TOKEN},
        "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
        "logging": {"format": "json", "level": "info"},
        "shutdownGraceSeconds": 2,
    }
    if instance_id is not None:
        gateway["instanceId"] = instance_id
    config: dict[str, Any] = {
        "gateway": gateway,
        "models": {
            "providers": {
                "up": {"api": "openai-chat", "baseUrl": f"{upstream_url}/v1", "maxRetries": 0}
            }
        },
        "agents": {"defaults": {"model": "up/cluster", "timeoutSeconds": 60}},
        "session": {
            "store": "postgres",
            "postgres": {"dsn": dsn, "leaseSeconds": lease_seconds, "poolSize": 4},
            "probeIntervalSeconds": 0.5,
        },
    }
    return _merge(config, overrides or {})


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


def _environment(state_dir: Path, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("EPILOOP_")}
    env["EPILOOP_STATE_DIR"] = str(state_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Node:
    """One gateway process of a cluster."""

    instance_id: str
    url: str
    process: trio.Process
    log_path: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws"

    @property
    def pid(self) -> int:
        return self.process.pid

    def headers(self, session_key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if session_key is not None:
            headers["x-epiloop-session-key"] = session_key
        return headers

    def kill(self) -> None:
        """``kill -9``: no cleanup, no deregistration; its leases expire on their own."""
        self.process.send_signal(signal.SIGKILL)

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def log_tail(self, chars: int = 3000) -> str:
        return _tail(self.log_path, chars)


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


def _prepare(directory: Path, config: Mapping[str, Any]) -> tuple[Path, Path, Path]:
    """Write a process's files: its config file, state directory and (empty) log file."""
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "epiloop.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    state_dir = directory / "state"
    state_dir.mkdir(exist_ok=True)
    log_path = directory / "gateway.log"
    log_path.write_bytes(b"")
    return config_file, state_dir, log_path


async def _read_url(process: trio.Process, log_path: Path) -> str:
    """Read the process's stdout until it says where it listens (bounded)."""
    assert process.stdout is not None
    seen = b""
    try:
        with trio.fail_after(STARTUP_BOUND_SECONDS):
            while (match := _LISTENING.search(seen)) is None:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(
                        f"the gateway exited before listening; stdout: {seen!r}; "
                        f"log: {_tail(log_path)}"
                    )
                seen += chunk
    except trio.TooSlowError:
        raise RuntimeError(
            f"the gateway did not start within {STARTUP_BOUND_SECONDS} s; stdout: {seen!r}; "
            f"log: {_tail(log_path)}"
        ) from None
    return match[1].decode("ascii")


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(65536):
        pass


async def _stop(process: trio.Process) -> None:
    """SIGCONT (a paused process cannot exit), SIGTERM, then SIGKILL; bounded, shielded."""
    with trio.move_on_after(2 * STOP_BOUND_SECONDS + 1, shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            with trio.move_on_after(STOP_BOUND_SECONDS):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _start_node(
    directory: Path, name: str, config: Mapping[str, Any], nursery: trio.Nursery
) -> Node:
    config_file, state_dir, log_path = _prepare(directory, config)
    command = [sys.executable, "-m", "trio_gateway", "gateway", "--port", "0"]
    command += ["--bind", "127.0.0.1", "--config", str(config_file)]
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=_environment(state_dir),
        )
    try:
        url = await _read_url(process, log_path)
    except BaseException:
        await _stop(process)
        raise
    assert process.stdout is not None
    nursery.start_soon(_drain, process.stdout)
    return Node(name, url, process, log_path)


@asynccontextmanager
async def open_cluster(
    directory: Path,
    dsn: str,
    upstream_url: str,
    *,
    instances: int = 3,
    lease_seconds: float = LEASE_SECONDS,
    overrides: Mapping[str, Any] | None = None,
) -> AsyncIterator[list[Node]]:
    """Start ``instances`` gateway processes (``gw-0``, ``gw-1``, ...) sharing ``dsn``, at once
    (so their migrations race, as a real deployment's would); stop them all on exit."""
    nodes: list[Node] = []
    async with trio.open_nursery() as drains:
        try:

            async def start(index: int) -> None:
                name = f"gw-{index}"
                config = cluster_config(
                    dsn,
                    upstream_url,
                    instance_id=name,
                    lease_seconds=lease_seconds,
                    overrides=overrides,
                )
                nodes.append(await _start_node(directory / name, name, config, drains))

            async with trio.open_nursery() as starting:
                for index in range(instances):
                    starting.start_soon(start, index)
            nodes.sort(key=lambda node: node.instance_id)
            yield nodes
        finally:
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as stopping:
                    for node in nodes:
                        stopping.start_soon(_stop, node.process)
            drains.cancel_scope.cancel(reason="the cluster stopped")


# -- hypercorn --workers ---------------------------------------------------------------------


@dataclass
class Workers:
    """``hypercorn -k trio --workers N`` serving the gateway's ASGI app."""

    url: str
    process: trio.Process
    log_path: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws"

    def headers(self, session_key: str | None = None) -> dict[str, str]:
        return Node("", self.url, self.process, self.log_path).headers(session_key)


@asynccontextmanager
async def open_workers(
    directory: Path,
    dsn: str,
    upstream_url: str,
    *,
    workers: int = 2,
    overrides: Mapping[str, Any] | None = None,
) -> AsyncIterator[Workers]:
    """Serve the cluster config (no ``instanceId``: each worker takes its default) with
    hypercorn's workers on one inherited listening socket; ready once ``/readyz`` says so."""
    config = cluster_config(dsn, upstream_url, instance_id=None, overrides=overrides)
    config_file, state_dir, log_path = _prepare(directory, config)
    # The socket is made here and inherited (fd://N): the port is known without a race and
    # every worker accepts on it.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        host, port = listener.getsockname()
        command = [sys.executable, "-m", "hypercorn", "-k", "trio", "--workers", str(workers)]
        command += ["--bind", f"fd://{listener.fileno()}", "--graceful-timeout", "2"]
        command += ["trio_gateway.server.asgi:app"]
        with log_path.open("wb") as log:
            process = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_environment(state_dir, EPILOOP_CONFIG_PATH=str(config_file)),
                pass_fds=(listener.fileno(),),
            )
    url = f"http://{host}:{port}"
    try:
        running = 0
        with trio.fail_after(STARTUP_BOUND_SECONDS):
            # Every worker says "Running on" once its lifespan (runtime, migrations) is up.
            while running < workers:
                if process.poll() is not None:
                    raise RuntimeError(f"hypercorn exited: {_tail(log_path)}")
                running = _tail(log_path, 1 << 20).count("Running on")
                await trio.sleep(0.1)
        yield Workers(url, process, log_path)
    finally:
        await _stop(process)


# -- clients ---------------------------------------------------------------------------------


@asynccontextmanager
async def control(node: Node | Workers) -> AsyncIterator[ControlClient]:
    """The control plane of ``node``, authenticated."""
    async with open_control_client(node.ws_url, token=TOKEN, client_name="cluster-test") as c:
        yield c


@dataclass
class StreamOutcome:
    """How one streaming chat request ended, as its client saw it."""

    status: int
    #: The completion's ``id``: the run id.
    run_id: str | None = None
    text: str = ""
    done: bool = False
    #: The in-band error event's ``error`` object, if the stream carried one.
    error: dict[str, Any] | None = None
    #: The JSON error body of a refused request (before the first byte).
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: The transport failed mid-stream (the gateway died): the text so far is kept.
    broken: bool = False


async def stream_chat(
    client: httpx.AsyncClient,
    node: Node | Workers,
    message: str,
    *,
    session_key: str | None,
    first_chunk: trio.Event | None = None,
) -> StreamOutcome:
    """POST a streaming chat completion; read it to its end (``[DONE]``, an error event, or a
    broken connection). ``first_chunk`` is set when the first content arrives."""
    body = {"model": "epiloop", "stream": True, "messages": [{"role": "user", "content": message}]}
    async with client.stream(
        "POST", f"{node.api_url}/chat/completions", json=body, headers=node.headers(session_key)
    ) as response:
        outcome = StreamOutcome(response.status_code, headers=dict(response.headers))
        if response.status_code != 200:
            await response.aread()
            outcome.body = response.json()
            return outcome
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    outcome.done = True
                    continue
                event = json.loads(data)
                if outcome.run_id is None and isinstance(event.get("id"), str):
                    outcome.run_id = event["id"]
                if "error" in event:
                    outcome.error = event["error"]
                    continue
                for choice in event.get("choices", ()):
                    content = choice.get("delta", {}).get("content")
                    if content:
                        outcome.text += content
                        if first_chunk is not None:
                            first_chunk.set()
        except (httpx.RemoteProtocolError, httpx.ReadError):
            outcome.broken = True
        return outcome


def transcript_of(detail: Mapping[str, object]) -> list[tuple[str, str, str]]:
    """``(role, content, status)`` of each visible entry of a ``sessions.get`` payload."""
    entries = detail.get("transcript")
    assert isinstance(entries, list), detail
    return [
        (str(entry["role"]), str(entry["content"]), str(entry["status"]))
        for entry in entries
        if isinstance(entry, dict) and not entry.get("internal")
    ]


def overlapping(intervals: Sequence[tuple[float, float]]) -> list[tuple[int, int]]:
    """The pairs of intervals (by index) that overlap in time."""
    pairs = []
    for i, (start_i, end_i) in enumerate(intervals):
        for j in range(i + 1, len(intervals)):
            start_j, end_j = intervals[j]
            if start_i < end_j and start_j < end_i:
                pairs.append((i, j))
    return pairs


# -- what the upstream saw -------------------------------------------------------------------


def user_messages(record: RecordedRequest) -> list[str]:
    """The user messages an upstream request carried, in order (the prompt the run saw)."""
    messages = record.json.get("messages")
    assert isinstance(messages, list), record.body
    return [
        str(message.get("content"))
        for message in messages
        if isinstance(message, dict) and message.get("role") == "user"
    ]


def busy_interval(record: RecordedRequest) -> tuple[float, float]:
    """From the request's arrival to its response's end (or its connection's close); open
    (``inf``) while neither happened."""
    end = record.completed_at if record.completed_at is not None else record.closed_at
    return (record.received_at, end if end is not None else float("inf"))


def most_at_once(intervals: Sequence[tuple[float, float]]) -> int:
    """The largest number of intervals that overlap at one moment."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in edges:  # an end sorts before a start at the same moment
        current += step
        most = max(most, current)
    return most
