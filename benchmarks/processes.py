"""The processes a benchmark runs besides itself: the mock upstream, the gateway, the floor relay.

Benchmark tooling. :func:`open_upstream` starts ``python -m benchmarks.upstream_server`` and
talks to it over its stdin/stdout; :func:`open_gateway` writes a gateway config for that upstream
and starts the gateway either with its own CLI (``python -m trio_gateway gateway``, one process)
or with ``hypercorn -k trio --workers N`` and the gateway's ASGI entry point
(``trio_gateway.server.asgi:app``); :func:`open_floor_relay` starts
``python -m benchmarks.floor_relay`` (the bare or the quart-trio relay the ``floor`` scenario
measures). The benchmark modules run with the repository's root as their working directory.
Each is pinned to a set of CPUs when asked (``taskset`` when installed, else
``sched_setaffinity``), and stopped with SIGTERM (then SIGKILL after a bound) when the block
exits.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec
import trio

from .upstream_server import RequestRecord, Stats

__all__ = [
    "BENCH_DIR",
    "FloorRelayProcess",
    "GatewayProcess",
    "UpstreamProcess",
    "gateway_config",
    "merge_config",
    "open_floor_relay",
    "open_gateway",
    "open_upstream",
]

BENCH_DIR = Path(__file__).resolve().parent
#: The repository's root: the benchmark processes run ``python -m benchmarks.<module>`` there.
ROOT_DIR = BENCH_DIR.parent
_STARTUP_BOUND = 60.0
_STOP_BOUND = 10.0
_LISTENING = re.compile(r"Listening on http://([0-9.]+):(\d+)")
_RUNNING = re.compile(r"Running on http://")


class _LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def readline(self) -> bytes:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(65536)
            if not data:
                raise EOFError("the process closed its output")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


def _pinned(command: Sequence[str], cpus: set[int] | None) -> tuple[list[str], bool]:
    """``command`` under ``taskset`` when pinning is asked and available; the flag says whether
    the caller still has to pin the process itself."""
    if cpus is None:
        return list(command), False
    taskset = shutil.which("taskset")
    if taskset is None:
        return list(command), True
    return [taskset, "-c", ",".join(str(cpu) for cpu in sorted(cpus)), *command], False


def _pin(pid: int, cpus: set[int] | None, needed: bool) -> None:
    if cpus is not None and needed:
        os.sched_setaffinity(pid, cpus)


async def _stop(process: trio.Process) -> None:
    with trio.move_on_after(_STOP_BOUND, shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await process.wait()
    if process.returncode is None:
        process.kill()
        with trio.move_on_after(_STOP_BOUND, shield=True):
            await process.wait()


@dataclass
class UpstreamProcess:
    """The mock upstream's process and its command channel."""

    process: trio.Process
    url: str
    _send: trio.abc.SendStream
    _reader: _LineReader

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def _command(self, command: dict[str, object]) -> bytes:
        await self._send.send_all(msgspec.json.encode(command) + b"\n")
        with trio.fail_after(_STARTUP_BOUND):
            return await self._reader.readline()

    async def set_scenario(
        self, tokens: list[str], *, first_token_delay: float, pace: float
    ) -> None:
        await self._command(
            {
                "op": "scenario",
                "tokens": tokens,
                "first_token_delay": first_token_delay,
                "pace": pace,
            }
        )

    async def records(self) -> list[RequestRecord]:
        """The requests seen since the last call (then forgotten by the mock)."""
        return msgspec.json.decode(await self._command({"op": "records"}), type=list[RequestRecord])

    async def stats(self) -> Stats:
        return msgspec.json.decode(await self._command({"op": "stats"}), type=Stats)


@asynccontextmanager
async def _open_module(
    module: str, arguments: Sequence[str], *, cpus: set[int] | None
) -> AsyncIterator[tuple[trio.Process, dict[str, str], _LineReader]]:
    """Start ``python -m benchmarks.<module>`` in the repository's root (pinned to ``cpus``) with
    its stdin and stdout piped; wait (bounded) for its first line, a JSON object; close its stdin
    (the process stops) and stop it when the block exits."""
    command, pin_needed = _pinned([sys.executable, "-m", f"benchmarks.{module}", *arguments], cpus)
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT_DIR
    )
    try:
        _pin(process.pid, cpus, pin_needed)
        assert process.stdin is not None
        assert process.stdout is not None
        reader = _LineReader(process.stdout)
        with trio.fail_after(_STARTUP_BOUND):
            try:
                hello = msgspec.json.decode(await reader.readline(), type=dict[str, str])
            except EOFError as exc:
                raise RuntimeError(f"benchmarks.{module} exited during start-up") from exc
        yield process, hello, reader
    finally:
        if process.stdin is not None:
            with trio.move_on_after(_STOP_BOUND, shield=True):
                await process.stdin.aclose()  # end of stdin: the process stops
        await _stop(process)


@asynccontextmanager
async def open_upstream(*, cpus: set[int] | None) -> AsyncIterator[UpstreamProcess]:
    """Start the mock upstream (pinned to ``cpus``); stop it when the block exits."""
    async with _open_module("upstream_server", [], cpus=cpus) as (process, hello, reader):
        assert process.stdin is not None
        yield UpstreamProcess(process, hello["url"], process.stdin, reader)


@dataclass(frozen=True)
class FloorRelayProcess:
    """A running floor relay (``benchmarks.floor_relay``)."""

    pid: int
    host: str
    port: int
    #: How it was started (for the report).
    command: str


@asynccontextmanager
async def open_floor_relay(
    upstream_url: str, *, cpus: set[int] | None, framework: str = "bare"
) -> AsyncIterator[FloorRelayProcess]:
    """Start the ``framework`` floor relay (``bare`` or ``quart``) for ``upstream_url``, pinned
    to ``cpus`` (the gateway's core); stop it when the block exits."""
    arguments = ["--upstream", upstream_url, "--framework", framework]
    async with _open_module("floor_relay", arguments, cpus=cpus) as (process, hello, _):
        host, _, port = hello["url"].removeprefix("http://").rpartition(":")
        command = f"python -m benchmarks.floor_relay --upstream URL --framework {framework}"
        yield FloorRelayProcess(process.pid, host, int(port), command)


@dataclass(frozen=True)
class GatewayProcess:
    """A running gateway: its top process (the hypercorn master with ``workers``), address and
    token."""

    pid: int
    host: str
    port: int
    token: str
    workers: int | None
    log_path: Path


def gateway_config(upstream_url: str, token: str, *, max_concurrent: int) -> dict[str, object]:
    """The gateway config for a benchmark (JSON, a subset of JSON5)."""
    return {
        "gateway": {
            "auth": {"mode": "token", "token": token},
            "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            "shutdownGraceSeconds": 2,
        },
        "models": {
            "providers": {
                "up": {
                    "api": "openai-chat",
                    "baseUrl": f"{upstream_url}/v1",
                    "maxRetries": 0,
                    # the idle streams of the memory scenario wait for a first token that
                    # never comes: longer than the default 120 s
                    "firstTokenTimeoutSeconds": 900,
                }
            }
        },
        "agents": {
            "defaults": {
                "model": "up/bench",
                "maxConcurrent": max_concurrent,
                "maxQueued": max_concurrent,
                "timeoutSeconds": 600,
            }
        },
        "session": {"store": "memory"},
    }


def merge_config(base: Mapping[str, object], override: Mapping[str, object]) -> dict[str, object]:
    """``base`` with ``override`` merged in: dicts merge, the rest replaces."""
    result = dict(base)
    for key, value in override.items():
        current = result.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            result[key] = merge_config(current, value)
        else:
            result[key] = value
    return result


async def _wait_for(check: Callable[[], str | None], process: trio.Process, log_path: Path) -> str:
    with trio.fail_after(_STARTUP_BOUND):
        while True:
            found = check()
            if found is not None:
                return found
            if process.returncode is not None or process.poll() is not None:
                tail = (await trio.Path(log_path).read_text(errors="replace"))[-2000:]
                raise RuntimeError(f"the gateway exited during start-up:\n{tail}")
            await trio.sleep(0.05)


@asynccontextmanager
async def open_gateway(
    upstream_url: str,
    workdir: Path,
    *,
    cpus: set[int] | None,
    workers: int | None = None,
    max_concurrent: int = 5000,
    log_level: str = "info",
    name: str | None = None,
    overrides: Mapping[str, object] | None = None,
) -> AsyncIterator[GatewayProcess]:
    """Start a gateway for ``upstream_url``; ``workers`` (a number) serves it with
    ``hypercorn -k trio --workers N`` instead of the gateway's CLI. ``overrides`` are merged
    into :func:`gateway_config`'s config (dicts merge, the rest replaces); ``name`` names its
    files in ``workdir``."""
    name = name or ("gateway" if workers is None else f"gateway-w{workers}")
    state = workdir / f"{name}-state"
    state.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    config_file = workdir / f"{name}.json5"
    config = gateway_config(upstream_url, token, max_concurrent=max_concurrent)
    config_file.write_bytes(msgspec.json.encode(merge_config(config, overrides or {})))
    log_path = workdir / f"{name}.log"
    env = {**os.environ, "EPILOOP_STATE_DIR": str(state), "EPILOOP_CONFIG_PATH": str(config_file)}
    listener: socket.socket | None = None
    stdout: int | IO[bytes]
    with log_path.open("wb") as log:
        if workers is None:
            base = [sys.executable, "-m", "trio_gateway", "gateway", "--port", "0"]
            base += ["--config", str(config_file), "--log-level", log_level]
            stdout = subprocess.PIPE
            pass_fds: tuple[int, ...] = ()
        else:
            # The listening socket is made here and inherited: hypercorn binds fd://N, so the
            # port is known without a race and every worker accepts on the same socket.
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1024)
            base = [sys.executable, "-m", "hypercorn", "-k", "trio", "--workers", str(workers)]
            base += ["--bind", f"fd://{listener.fileno()}", "--backlog", "1024"]
            base += ["--graceful-timeout", "2", "trio_gateway.server.asgi:app"]
            stdout = log
            pass_fds = (listener.fileno(),)
        command, pin_needed = _pinned(base, cpus)
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=log,
            env=env,
            pass_fds=pass_fds,
        )
    try:
        _pin(process.pid, cpus, pin_needed)
        async with trio.open_nursery() as nursery:
            if workers is None:
                assert process.stdout is not None
                host, port = await _read_listening(process.stdout, nursery)
            else:
                assert listener is not None
                host, port = listener.getsockname()
                listener.close()
                listener = None

                def all_running() -> str | None:
                    running = len(_RUNNING.findall(log_path.read_text(errors="replace")))
                    return "ok" if running >= workers else None

                await _wait_for(all_running, process, log_path)
            yield GatewayProcess(process.pid, host, port, token, workers, log_path)
            nursery.cancel_scope.cancel(reason="the gateway is being stopped")
    finally:
        if listener is not None:
            listener.close()
        await _stop(process)


async def _read_listening(stdout: trio.abc.ReceiveStream, nursery: trio.Nursery) -> tuple[str, int]:
    reader = _LineReader(stdout)
    with trio.fail_after(_STARTUP_BOUND):
        while True:
            try:
                line = (await reader.readline()).decode(errors="replace")
            except EOFError as exc:
                raise RuntimeError("the gateway exited during start-up (see its log)") from exc
            match = _LISTENING.search(line)
            if match:
                break
    nursery.start_soon(_drain, stdout)
    return match.group(1), int(match.group(2))


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(65536):
        pass
