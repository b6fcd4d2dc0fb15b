"""``epiloop agent``, ``sessions``, ``health`` and ``status`` end to end, as a user runs them:
a real gateway in a subprocess (``epiloop gateway --port 0``) and the CLI in another, each with
its own state dir. Every step is bounded, and every process is killed if a test fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from trio_gateway.cli.agent import finish_run
from trio_gateway.cli.render import Printer, show_event

BOUND = 20  # seconds: every subprocess step is bounded
TOKEN = "cli-test-token-0123456789"
CONFIG = f"""{{
  gateway: {{ auth: {{ mode: "token", token: "{TOKEN}" }} }},
  models: {{ providers: {{ local: {{ api: "echo", paceMs: 50 }} }} }},
  agents: {{
    list: [
      {{ id: "main", default: true, systemPrompt: "You are a helpful assistant." }},
      {{ id: "helper" }},
    ],
  }},
}}
"""
#: At 50 ms a word, this takes ten seconds to echo: long enough to interrupt.
LONG_MESSAGE = " ".join(f"word{i}" for i in range(200))


def env_for(state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPILOOP_")}
    env["EPILOOP_STATE_DIR"] = str(state)
    env.update(extra)
    return env


def write_config(state: Path, text: str = CONFIG) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / "epiloop.json").write_text(text)


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


async def epiloop(state: Path, *args: str, **env: str) -> Done:
    """Run ``epiloop ARGS`` to completion (killed if it takes longer than BOUND)."""
    with trio.fail_after(BOUND):
        done = await trio.run_process(
            [sys.executable, "-m", "trio_gateway", *args],
            env=env_for(state, **env),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Done(done.returncode, done.stdout.decode(), done.stderr.decode())


@dataclass(frozen=True)
class Gateway:
    state: Path
    url: str

    async def cli(self, *args: str) -> Done:
        """``epiloop ARGS`` against this gateway (URL from $EPILOOP_GATEWAY_URL)."""
        return await epiloop(self.state, *args, EPILOOP_GATEWAY_URL=self.url)


async def stop(process: trio.Process, sig: int = signal.SIGTERM) -> None:
    """Stop ``process`` (kill it if it does not stop in time) and release its pipes."""
    if process.returncode is None:
        process.send_signal(sig)
        with trio.move_on_after(BOUND):
            await process.wait()
    if process.returncode is None:
        process.kill()
        with trio.move_on_after(BOUND, shield=True):
            await process.wait()
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            await pipe.aclose()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    state = tmp_path / "gateway"
    write_config(state)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_gateway", "gateway", "--port", "0"],
        env=env_for(state),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        output = ""
        with trio.fail_after(BOUND):
            while (found := re.search(r"Listening on http://(\S+)", output)) is None:
                chunk = await process.stdout.receive_some()
                assert chunk, f"the gateway exited early: {output}"
                output += chunk.decode()
        yield Gateway(state, f"ws://{found[1]}/ws")
    finally:
        await stop(process)


async def read_until(stream: trio.abc.ReceiveStream, predicate: str, so_far: str = "") -> str:
    """Read ``stream`` until ``predicate`` appears in what was read (bounded by the caller)."""
    while predicate not in so_far:
        chunk = await stream.receive_some()
        assert chunk, f"the stream ended before {predicate!r}: {so_far!r}"
        so_far += chunk.decode()
    return so_far


async def read_all(stream: trio.abc.ReceiveStream) -> str:
    text = b""
    while chunk := await stream.receive_some():
        text += chunk
    return text.decode()


# -- epiloop agent ---------------------------------------------------------------------------


async def test_cli_agent_streams_the_answer(gateway: Gateway) -> None:
    message = "the quick brown fox jumps over the lazy dog"
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_gateway", "agent", "-m", message],
        env=env_for(gateway.state, EPILOOP_GATEWAY_URL=gateway.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        with trio.fail_after(BOUND):
            first = (await process.stdout.receive_some()).decode()
            # At 50 ms a word, the first piece arrives well before the answer is complete.
            assert first
            assert message.startswith(first.strip())
            assert len(first.strip()) < len(message)
            rest = await read_all(process.stdout)
            assert await process.wait() == 0, await read_all(process.stderr)
        assert first + rest == message + "\n"
    finally:
        await stop(process, signal.SIGKILL)


async def test_cli_agent_json_prints_only_the_result(gateway: Gateway) -> None:
    done = await gateway.cli("agent", "-m", "hello json", "--agent", "helper", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed"
    assert result["text"] == "hello json"
    assert result["runId"].startswith("chatcmpl-")


async def test_cli_agent_takes_the_url_and_session_key_from_options(gateway: Gateway) -> None:
    done = await epiloop(
        gateway.state, "agent", "-m", "keyed", "--url", gateway.url, "--session-key", "my-key"
    )
    assert (done.returncode, done.stdout) == (0, "keyed\n"), done.stderr
    shown = await gateway.cli("sessions", "show", "my-key")
    assert shown.stdout.splitlines() == ["user: keyed", "assistant: keyed"]


async def test_cli_agent_unknown_agent_names_the_available_ones(gateway: Gateway) -> None:
    done = await gateway.cli("agent", "-m", "hi", "--agent", "nobody")
    assert done.returncode == 2
    assert "unknown agent 'nobody' (available: main, helper)" in done.stderr
    assert done.stdout == ""


async def test_cli_agent_wrong_token_exits_4(gateway: Gateway) -> None:
    done = await gateway.cli("agent", "-m", "hi", "--token", "not-the-token")
    assert done.returncode == 4
    assert "authentication failed: check gateway.auth / EPILOOP_GATEWAY_TOKEN" in done.stderr
    done = await epiloop(
        gateway.state, "health", "--url", gateway.url, EPILOOP_GATEWAY_TOKEN="also-wrong"
    )
    assert done.returncode == 0, "a token in the config file wins over the environment"


async def test_cli_agent_without_a_gateway_exits_3(tmp_path: Path) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()  # nothing listens on this port any more
    write_config(tmp_path, f"{{ gateway: {{ port: {port}, auth: {{ token: '{TOKEN}' }} }} }}")
    done = await epiloop(tmp_path, "agent", "-m", "hi")
    assert done.returncode == 3
    url = f"ws://127.0.0.1:{port}/ws"  # from gateway.port, as no URL was given
    assert f"the gateway is not running at {url} (start it with 'epiloop gateway')" in (done.stderr)


async def test_cli_agent_invalid_config_exits_2(tmp_path: Path) -> None:
    write_config(tmp_path, "{ gateway: { prot: 1 } }")
    done = await epiloop(tmp_path, "agent", "-m", "hi")
    assert done.returncode == 2
    assert "gateway.prot: unknown key" in done.stderr


async def test_cli_agent_local_runs_without_a_gateway(tmp_path: Path) -> None:
    write_config(tmp_path)
    done = await epiloop(tmp_path, "agent", "-m", "offline answer", "--local")
    assert (done.returncode, done.stdout) == (0, "offline answer\n"), done.stderr
    as_json = await epiloop(
        tmp_path, "agent", "-m", "again", "--local", "--json", "--agent", "helper"
    )
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["text"] == "again"
    unknown = await epiloop(tmp_path, "agent", "-m", "x", "--local", "--agent", "nobody")
    assert unknown.returncode == 2
    assert "unknown agent 'nobody' (available: main, helper)" in unknown.stderr


async def test_cli_agent_refuses_a_session_key_naming_another_agent(
    gateway: Gateway, tmp_path: Path
) -> None:
    expected = "the session key belongs to agent 'helper'"
    remote = await gateway.cli("agent", "-m", "hi", "--session-key", "agent:helper:x")
    assert remote.returncode == 2
    assert expected in remote.stderr.lower()
    write_config(tmp_path)
    local = await epiloop(
        tmp_path,
        "agent",
        "-m",
        "hi",
        "--local",
        "--agent",
        "main",
        "--session-key",
        "agent:helper:x",
    )
    assert local.returncode == 2
    assert expected in local.stderr.lower()
    assert (local.stdout, remote.stdout) == ("", "")
    shown = await gateway.cli("sessions", "show", "agent:helper:x")
    assert "no session 'agent:helper:x'" in shown.stderr


async def test_cli_agent_ctrl_c_aborts_the_run(gateway: Gateway) -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_gateway", "agent", "-m", LONG_MESSAGE],
        env=env_for(gateway.state, EPILOOP_GATEWAY_URL=gateway.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        with trio.fail_after(BOUND):
            seen = await read_until(process.stdout, "word3 ")
        # While it streams, the gateway lists the run.
        status = await gateway.cli("status", "--json")
        runs = json.loads(status.stdout)["runs"]
        assert [(run["agentId"], run["sessionKey"]) for run in runs] == [
            ("main", "agent:main:main")
        ]
        process.send_signal(signal.SIGINT)
        with trio.fail_after(BOUND):
            assert await process.wait() == 130
            seen += await read_all(process.stdout)
            errors = await read_all(process.stderr)
        assert "aborted" in errors
        assert LONG_MESSAGE.startswith(seen.strip())
        assert len(seen.strip()) < len(LONG_MESSAGE)
    finally:
        await stop(process, signal.SIGKILL)
    # The gateway recorded the partial answer as aborted, and nothing runs any more.
    shown = await gateway.cli("sessions", "show", "agent:main:main")
    assert shown.returncode == 0, shown.stderr
    last = shown.stdout.splitlines()[-1]
    assert last.startswith("assistant: word0 word1 word2 word3")
    assert last.endswith(" [aborted]")
    status = await gateway.cli("status", "--json")
    assert json.loads(status.stdout)["runs"] == []


async def test_cli_agent_local_ctrl_c_aborts_the_run(tmp_path: Path) -> None:
    write_config(tmp_path)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_gateway", "agent", "-m", LONG_MESSAGE, "--local"],
        env=env_for(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        with trio.fail_after(BOUND):
            await read_until(process.stdout, "word2 ")
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130
            assert "aborted" in await read_all(process.stderr)
    finally:
        await stop(process, signal.SIGKILL)


async def test_cli_config_set_reload_applies_to_the_running_gateway(gateway: Gateway) -> None:
    unknown = await gateway.cli("agent", "-m", "hi", "--agent", "other")
    assert unknown.returncode == 2
    agents = '[{id: "main", default: true}, {id: "helper"}, {id: "other"}]'
    done = await gateway.cli("config", "set", "agents.list", agents, "--reload")
    assert done.returncode == 0, done.stderr
    path = gateway.state / "epiloop.json"
    assert done.stdout.splitlines() == [f"Set agents.list in {path}", f"reloaded {path}"]
    known = await gateway.cli("agent", "-m", "hi", "--agent", "other")
    assert (known.returncode, known.stdout) == (0, "hi\n"), known.stderr


# -- epiloop sessions, health, status --------------------------------------------------------


async def test_cli_sessions_round_trip(gateway: Gateway) -> None:
    for message in ("first message", "second message"):
        done = await gateway.cli("agent", "-m", message)
        assert done.returncode == 0, done.stderr
    assert (await gateway.cli("agent", "-m", "other", "--agent", "helper")).returncode == 0

    listed = await gateway.cli("sessions", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == ["KEY", "AGENT", "MESSAGES", "LAST", "UPDATED"]
    rows = {line.split()[0]: line.split()[1:4] for line in listed.stdout.splitlines()[1:]}
    assert rows == {
        "agent:main:main": ["main", "4", "completed"],
        "agent:helper:main": ["helper", "2", "completed"],
    }
    only_helper = json.loads(
        (await gateway.cli("sessions", "list", "--agent", "helper", "--json")).stdout
    )
    assert [s["key"] for s in only_helper["sessions"]] == ["agent:helper:main"]

    shown = await gateway.cli("sessions", "show", "agent:main:main")
    assert shown.stdout.splitlines() == [
        "user: first message",
        "assistant: first message",
        "user: second message",
        "assistant: second message",
    ]
    as_json = json.loads(
        (await gateway.cli("sessions", "show", "agent:main:main", "--json")).stdout
    )
    assert [entry["role"] for entry in as_json["transcript"]] == ["user", "assistant"] * 2

    reset = await gateway.cli("sessions", "reset", "agent:main:main")
    assert (reset.returncode, reset.stdout) == (0, "reset agent:main:main\n")
    assert (await gateway.cli("sessions", "show", "agent:main:main")).stdout == ""

    deleted = await gateway.cli("sessions", "delete", "agent:main:main")
    assert (deleted.returncode, deleted.stdout) == (0, "deleted agent:main:main\n")
    missing = await gateway.cli("sessions", "show", "agent:main:main")
    assert missing.returncode == 1
    assert "no session 'agent:main:main'" in missing.stderr
    again = await gateway.cli("sessions", "delete", "agent:main:main")
    assert again.returncode == 1


async def test_cli_health_and_status(gateway: Gateway) -> None:
    health = await gateway.cli("health")
    assert (health.returncode, health.stdout) == (0, "ok\n"), health.stderr
    status = await gateway.cli("status")
    assert status.returncode == 0, status.stderr
    assert "running 0, queued 0" in status.stdout
    assert "no runs in progress" in status.stdout
    as_json = json.loads((await gateway.cli("status", "--json")).stdout)
    assert as_json["admission"]["running"] == 0


async def test_cli_accepts_the_http_url_the_gateway_prints(gateway: Gateway) -> None:
    http_url = gateway.url.replace("ws://", "http://").removesuffix("/ws")
    done = await epiloop(gateway.state, "health", "--url", http_url)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


async def test_cli_health_without_a_gateway_exits_3(tmp_path: Path) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    done = await epiloop(tmp_path, "health", "--url", f"ws://127.0.0.1:{port}/ws")
    assert done.returncode == 3
    assert "the gateway is not running" in done.stderr


def test_cli_agent_shows_tool_activity_and_reasoning_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    printer = Printer(quiet=False, reasoning=True)
    events: list[dict[str, object]] = [
        {"stream": "reasoning", "data": {"delta": "thinking"}},
        {"stream": "assistant", "data": {"delta": "It is "}},
        {
            "stream": "tool",
            "data": {"phase": "start", "callId": "c1", "name": "current_time", "arguments": "{}"},
        },
        {
            "stream": "tool",
            "data": {
                "phase": "result",
                "callId": "c1",
                "name": "current_time",
                "ok": True,
                "result": "noon",
            },
        },
        {
            "stream": "tool",
            "data": {
                "phase": "start",
                "callId": "c2",
                "name": "read_file",
                "arguments": '{"path": "x"}',
            },
        },
        {
            "stream": "tool",
            "data": {
                "phase": "result",
                "callId": "c2",
                "name": "read_file",
                "ok": False,
                "result": "Error",
            },
        },
        {"stream": "assistant", "data": {"delta": "noon."}},
        {"stream": "lifecycle", "data": {"phase": "end"}},
    ]
    for event in events:
        show_event(printer, event)
    assert finish_run(printer, {"status": "completed", "text": "It is noon."}, as_json=False) == 0
    out, err = capsys.readouterr()
    assert out == "It is noon.\n"  # not a terminal: stdout is the answer, exactly
    assert "[tool] current_time({}) → ok" in err
    assert '[tool] read_file({"path": "x"}) → error' in err
    assert "thinking" in err
    quiet = Printer(quiet=False, reasoning=False)
    show_event(quiet, events[0])
    assert capsys.readouterr().err == ""


def test_cli_agent_failed_run_prints_the_error_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    printer = Printer(quiet=False, reasoning=False)
    result: dict[str, object] = {
        "status": "failed",
        "error": {"code": "provider_error", "message": "upstream broke"},
    }
    assert finish_run(printer, result, as_json=False) == 1
    assert "the run failed: upstream broke (provider_error)" in capsys.readouterr().err
