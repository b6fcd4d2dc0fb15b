"""A real gateway in a subprocess for the fuzz tests.

``python -m trio_gateway gateway --port 0`` on 127.0.0.1, with its own state directory and a
config file: token auth, the chat completions endpoint on, the echo provider at ``paceMs: 0``,
two agents and JSON logs on stderr (to a file), so an ``ERROR`` record is told apart from a
client-controlled string that merely looks like one. The fuzz tests are synchronous (hypothesis
drives them), so this module is too: the process is started and stopped with plain
``subprocess``, every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "AGENTS",
    "KNOWN_ERRORS",
    "TOKEN",
    "GatewayProcess",
    "LogRecord",
    "known_error",
    "running_gateway",
]

TOKEN = "fuzz-token-0123456789abcdef"
AGENTS = ("main", "helper")
#: How long the gateway may take to print its URL.
STARTUP_BOUND_SECONDS = 30.0
#: How long it may take to exit after SIGTERM (its shutdown grace is shorter).
STOP_BOUND_SECONDS = 10.0
_LISTENING = re.compile(rb"Listening on (http://127\.0\.0\.1:\d+)")

CONFIG: dict[str, Any] = {
    "gateway": {
        "auth": {"mode": "token", "token": TOKEN},
        "http": {
            "endpoints": {"chatCompletions": {"enabled": True}},
            "maxBodyBytes": 4 * 1024 * 1024,
        },
        "logging": {"format": "json", "level": "info"},
        "shutdownGraceSeconds": 2,
    },
    "models": {"providers": {"local": {"api": "echo", "paceMs": 0}}},
    "agents": {
        "defaults": {"model": "local/echo", "timeoutSeconds": 30},
        "list": [
            {"id": "main", "default": True, "systemPrompt": "You are a helpful assistant."},
            {"id": "helper", "systemPrompt": "You help."},
        ],
    },
    "session": {"store": "sqlite"},
}


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One line of the gateway's stderr: a JSON log record, or raw text (``level`` ``RAW``)."""

    level: str
    message: str
    exc_info: str | None
    line: str

    @property
    def is_error(self) -> bool:
        """An ERROR/CRITICAL record, or a raw traceback (something the logging missed)."""
        if self.level in ("ERROR", "CRITICAL"):
            return True
        return self.level == "RAW" and "Traceback (most recent call last)" in self.line

    def describe(self) -> str:
        text = f"{self.level} {self.message}"
        return f"{text}\n{self.exc_info}" if self.exc_info else text


#: ERROR records of known bugs outside the gateway's own code, by the strict-xfail test that
#: pins each. The per-test log check lets these through, so that the fuzz tests that happen to
#: trigger them still check everything else; the pinning test fails (XPASS) once the bug is gone.
KNOWN_ERRORS: dict[str, Callable[[LogRecord], bool]] = {
    # hypercorn 0.18 (trio worker): TCPServer._close() calls send_eof() without the send lock,
    # racing the application's last send when the gateway answers before reading the body.
    "test_early_answer_before_the_body_is_read_logs_no_error": lambda record: (
        record.message == "Error in ASGI Framework"
        and "BusyResourceError" in (record.exc_info or "")
    ),
}


def known_error(record: LogRecord) -> str | None:
    """The test that pins ``record``'s known bug, if it is one."""
    return next((test for test, matches in KNOWN_ERRORS.items() if matches(record)), None)


def _parse_line(line: str) -> LogRecord:
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    if not isinstance(data, dict) or "level" not in data:
        return LogRecord("RAW", line, None, line)
    exc_info = data.get("exc_info")
    return LogRecord(
        str(data["level"]),
        str(data.get("message", "")),
        exc_info if isinstance(exc_info, str) else None,
        line,
    )


@dataclass
class GatewayProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    token: str = TOKEN
    #: Offset in the log file up to which records were already looked at (see ``mark``).
    _mark: int = field(default=0, repr=False)

    @property
    def api_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def mark(self) -> None:
        """Forget the records so far: :meth:`records` returns only later ones."""
        self._mark = self.log_path.stat().st_size

    def records(self) -> list[LogRecord]:
        """The log records written since :meth:`mark` (complete lines only)."""
        with self.log_path.open("rb") as file:
            file.seek(self._mark)
            data = file.read()
        text = data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace")
        return [_parse_line(line) for line in text.splitlines() if line.strip()]

    def errors(self, *, known: bool = True) -> list[LogRecord]:
        """The ERROR records since :meth:`mark`; ``known=False`` leaves out those of
        :data:`KNOWN_ERRORS`."""
        return [
            record
            for record in self.records()
            if record.is_error and (known or known_error(record) is None)
        ]

    def describe_errors(self, limit: int = 3) -> str:
        """The first ERROR records since :meth:`mark`, with their tracebacks, for a failure
        message."""
        found = self.errors()
        if not found:
            return "(no ERROR record in the gateway's log)"
        shown = "\n---\n".join(record.describe() for record in found[:limit])
        more = f"\n(and {len(found) - limit} more)" if len(found) > limit else ""
        return f"gateway log:\n{shown}{more}"

    def assert_running(self) -> None:
        code = self.process.poll()
        assert code is None, (
            f"the gateway exited with status {code}\n{self.describe_errors()}\n"
            f"log tail:\n{self.log_path.read_text(errors='replace')[-3000:]}"
        )


def _environment(state_dir: Path) -> dict[str, str]:
    # No EPILOOP_* from the developer's shell: the config file alone decides.
    env = {name: value for name, value in os.environ.items() if not name.startswith("EPILOOP_")}
    env["EPILOOP_STATE_DIR"] = str(state_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_for_url(process: subprocess.Popen[bytes], stdout: IO[bytes], log_path: Path) -> str:
    """Read the gateway's stdout until it says where it listens (bounded)."""
    deadline = time.monotonic() + STARTUP_BOUND_SECONDS
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while (match := _LISTENING.search(seen)) is None:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise RuntimeError(
                    f"the gateway did not start within {STARTUP_BOUND_SECONDS} s; stdout: "
                    f"{seen!r}; stderr: {log_path.read_text(errors='replace')[-3000:]}"
                )
            chunk = os.read(stdout.fileno(), 4096)
            if not chunk:
                process.wait(timeout=STOP_BOUND_SECONDS)
                raise RuntimeError(
                    f"the gateway exited with status {process.returncode} before listening; "
                    f"stdout: {seen!r}; stderr: {log_path.read_text(errors='replace')[-3000:]}"
                )
            seen += chunk
    return match[1].decode("ascii")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_BOUND_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_BOUND_SECONDS)


@contextmanager
def running_gateway(
    directory: Path, config: Mapping[str, Any] = CONFIG
) -> Iterator[GatewayProcess]:
    """Serve a gateway for the ``with`` block; stop it (SIGTERM, then SIGKILL) on exit.

    ``directory`` holds the config file, the state directory and ``gateway.log`` (stderr).
    """
    config_file = directory / "epiloop.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    state_dir = directory / "state"
    state_dir.mkdir(exist_ok=True)
    log_path = directory / "gateway.log"
    command = [sys.executable, "-m", "trio_gateway", "gateway", "--port", "0"]
    command += ["--bind", "127.0.0.1", "--config", str(config_file)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=_environment(state_dir),
        )
    assert process.stdout is not None  # stdout=PIPE
    with process, process.stdout:
        try:
            url = _wait_for_url(process, process.stdout, log_path)
            yield GatewayProcess(url, process, log_path)
        finally:
            _stop(process)
