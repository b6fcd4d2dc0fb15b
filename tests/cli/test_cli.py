"""The ``epiloop`` command, run as a user runs it: in a subprocess, with its own state dir."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from trio_gateway.sessions import open_sqlite_store
from trio_gateway.sessions.store import TranscriptEntry, Turn

BOUND = 20  # seconds: every subprocess step is bounded


def env_for(state: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EPILOOP_")  # the developer's own settings must not leak in
    }
    env["EPILOOP_STATE_DIR"] = str(state)
    return env


def epiloop(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_gateway", *args],
        env=env_for(state),
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )


def test_cli_config_init_writes_a_private_config_with_a_token(tmp_path: Path) -> None:
    done = epiloop(tmp_path, "config", "init")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "epiloop.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = re.search(r"Gateway token: (\S+)", done.stdout)
    assert token is not None
    assert f'token: "{token[1]}"' in path.read_text()
    assert "curl" in done.stdout
    assert epiloop(tmp_path, "config", "validate").returncode == 0


def test_cli_config_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert epiloop(tmp_path, "config", "init").returncode == 0
    before = (tmp_path / "epiloop.json").read_text()
    again = epiloop(tmp_path, "config", "init")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert (tmp_path / "epiloop.json").read_text() == before
    forced = epiloop(tmp_path, "config", "init", "--force")
    assert forced.returncode == 0
    assert (tmp_path / "epiloop.json").read_text() != before


def test_cli_config_validate_names_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "epiloop.json").write_text(
        "{ gateway: { http: { endpoints: { chatCompletions: { enabled: 'yes' } } } } }"
    )
    done = epiloop(tmp_path, "config", "validate")
    assert done.returncode == 1
    assert str(tmp_path / "epiloop.json") in done.stderr
    assert 'gateway.http.endpoints.chatCompletions.enabled: expected bool, got "yes"' in (
        done.stderr
    )


def test_cli_config_validate_without_a_file_uses_the_embedded_default(tmp_path: Path) -> None:
    done = epiloop(tmp_path, "config", "validate")
    assert done.returncode == 0
    assert "<embedded default>" in done.stdout


def test_cli_config_show_redacts_secrets(tmp_path: Path) -> None:
    assert epiloop(tmp_path, "config", "init").returncode == 0
    token = re.search(r'token: "([^"]+)"', (tmp_path / "epiloop.json").read_text())
    assert token is not None
    done = epiloop(tmp_path, "config", "show")
    assert done.returncode == 0
    assert token[1] not in done.stdout
    shown = json.loads(done.stdout)
    assert shown["gateway"]["auth"]["token"] == "<redacted>"
    assert shown["gateway"]["http"]["endpoints"]["chatCompletions"]["enabled"] is True


def test_cli_config_set_and_unset_edit_one_key_keeping_comments_and_mode(
    tmp_path: Path,
) -> None:
    assert epiloop(tmp_path, "config", "init").returncode == 0
    path = tmp_path / "epiloop.json"
    path.chmod(0o640)
    before = path.read_text()
    comments = [line for line in before.splitlines() if line.lstrip().startswith("//")]

    port = epiloop(tmp_path, "config", "set", "gateway.port", "4242")
    assert (port.returncode, port.stdout) == (0, f"Set gateway.port in {path}\n"), port.stderr
    limit = epiloop(tmp_path, "config", "set", "gateway.auth.rateLimit.maxFailures", "5")
    assert limit.returncode == 0, limit.stderr
    proxies = epiloop(tmp_path, "config", "set", "gateway.trustedProxies", '["127.0.0.1"]')
    assert proxies.returncode == 0, proxies.stderr
    bind = epiloop(tmp_path, "config", "set", "gateway.bind", "lan")  # a plain string
    assert bind.returncode == 0, bind.stderr
    model = epiloop(tmp_path, "config", "set", "agents.list[0].model", "local/echo")
    assert model.returncode == 0, model.stderr

    after = path.read_text()
    assert [line for line in after.splitlines() if line.lstrip().startswith("//")] == comments
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["epiloop.json"]  # no temporary left
    shown = json.loads(epiloop(tmp_path, "config", "show").stdout)
    gateway = shown["gateway"]
    assert (gateway["port"], gateway["bind"], gateway["trustedProxies"]) == (
        4242,
        "lan",
        ["127.0.0.1"],
    )
    assert gateway["auth"]["rateLimit"]["maxFailures"] == 5
    assert shown["agents"]["list"][0]["model"] == "local/echo"

    unset = epiloop(tmp_path, "config", "unset", "gateway.bind")
    assert (unset.returncode, unset.stdout) == (0, f"Unset gateway.bind in {path}\n")
    again = epiloop(tmp_path, "config", "unset", "gateway.bind")
    assert again.returncode == 0
    assert "not set" in again.stdout
    assert json.loads(epiloop(tmp_path, "config", "show").stdout)["gateway"]["bind"] == "loopback"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("set", "gateway.prot", "1"), "Error: gateway.prot: unknown key; did you mean 'port'?"),
        (("set", "gateway.port", "abc"), 'Error: gateway.port: expected int, got "abc"'),
        (("set", "gateway.port", "70000"), "Error: gateway.port: "),
        (("set", "gateway.port.x", "1"), "Error: gateway.port: a plain value here holds no keys"),
        (("set", "agents.list[4].id", "x"), "Error: agents.list[4]: no such list item"),
        (("set", "gateway..port", "1"), "Error: gateway..port: not a key path"),
        (("unset", "agents.list[0].id"), "Error: agents.list[0].id: required key is missing"),
    ],
)
def test_cli_config_set_refuses_bad_keys_and_values_leaving_the_file(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    assert epiloop(tmp_path, "config", "init").returncode == 0
    before = (tmp_path / "epiloop.json").read_bytes()
    done = epiloop(tmp_path, "config", *args)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(expected), done.stderr
    assert (tmp_path / "epiloop.json").read_bytes() == before


def test_cli_config_set_without_a_file_says_how_to_make_one(tmp_path: Path) -> None:
    done = epiloop(tmp_path, "config", "set", "gateway.port", "4242")
    assert done.returncode == 2
    assert "Error: no config file at" in done.stderr
    assert "epiloop config init" in done.stderr
    assert not (tmp_path / "epiloop.json").exists()


def test_cli_gateway_refuses_invalid_config(tmp_path: Path) -> None:
    (tmp_path / "epiloop.json").write_text("{ agents: { defaults: { modle: 'x' } } }")
    done = epiloop(tmp_path, "gateway", "--port", "0")
    assert done.returncode == 1
    assert "agents.defaults.modle: unknown key; did you mean 'model'?" in done.stderr


def test_cli_gateway_refuses_lan_without_auth(tmp_path: Path) -> None:
    (tmp_path / "epiloop.json").write_text("{ gateway: { auth: { mode: 'none' } } }")
    done = epiloop(tmp_path, "gateway", "--port", "0", "--bind", "lan")
    assert done.returncode == 1
    assert "refusing to bind 0.0.0.0" in done.stderr
    no_secret = tmp_path / "other"
    no_secret.mkdir()
    done = epiloop(no_secret, "gateway", "--port", "0", "--bind", "lan")
    assert done.returncode == 1
    assert "no token is set" in done.stderr


def test_cli_gateway_port_in_use_is_one_error_line_naming_the_port_and_key(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = epiloop(tmp_path, "gateway", "--port", str(port))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"Error: gateway.port: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(another process uses this port; choose another one)"
    ]


def test_cli_gateway_startup_failure_is_one_error_line_unless_verbose(tmp_path: Path) -> None:
    config = tmp_path / "epiloop.json"
    config.write_text("{}")
    not_a_directory = tmp_path / "state"
    not_a_directory.write_text("")  # the session store cannot be created below it
    args = ("gateway", "--port", "0", "--config", str(config), "--log-level", "error")
    done = epiloop(not_a_directory, *args)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, done.stderr
    assert "sessions.sqlite" in errors[0]
    assert done.stderr.splitlines()[-1] == errors[0]
    verbose = epiloop(not_a_directory, *args, "--verbose")
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr
    assert verbose.stderr.splitlines()[-1] == errors[0]


async def start_cli_gateway(
    state: Path, *args: str, new_session: bool = False
) -> tuple[trio.Process, str, list[str]]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_gateway", "gateway", "--port", "0", *args],
        env=env_for(state),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=new_session,
    )
    assert process.stdout is not None
    output = ""
    with trio.fail_after(BOUND):
        while (found := re.search(r"Listening on (http://\S+)", output)) is None:
            chunk = await process.stdout.receive_some()
            assert chunk, f"the gateway exited early: {output}"
            output += chunk.decode()
    return process, found[1], output.splitlines()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_cli_gateway_serves_the_quickstart_and_stops_cleanly(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    init = epiloop(tmp_path, "config", "init")
    token = re.search(r"Gateway token: (\S+)", init.stdout)
    assert token is not None
    process, url, _ = await start_cli_gateway(tmp_path)
    try:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {token[1]}"},
                json={"messages": [{"role": "user", "content": "quick start"}]},
            )
        assert response.json()["choices"][0]["message"]["content"] == "quick start"
        process.send_signal(stop_signal)
        with trio.fail_after(BOUND):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_cli_gateway_without_secret_prints_a_run_token(tmp_path: Path) -> None:
    (tmp_path / "epiloop.json").write_text(
        "{ gateway: { http: { endpoints: { chatCompletions: { enabled: true } } } } }"
    )
    process, url, lines = await start_cli_gateway(tmp_path)
    try:
        printed = next(line for line in lines if "generated one for this run only" in line)
        token = printed.rsplit(" ", 1)[1]
        async with httpx.AsyncClient() as client:
            ok = await client.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {token}"})
            refused = await client.get(f"{url}/v1/models")
        assert ok.status_code == 200
        assert refused.status_code == 401
    finally:
        process.terminate()
        with trio.fail_after(BOUND):
            await process.wait()


def test_cli_gateway_refuses_a_damaged_session_store_with_an_error_line(tmp_path: Path) -> None:
    (tmp_path / "sessions.sqlite").write_bytes(b"this is not an SQLite file at all, " * 200)
    done = epiloop(tmp_path, "gateway", "--port", "0")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [errors[0]]
    assert errors[0].startswith("Error: Cannot open the session store")
    assert "file is not a database" in errors[0]
    assert "Traceback" not in done.stderr


async def test_cli_doctor_checks_the_session_store(tmp_path: Path) -> None:
    async def doctor() -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(epiloop, tmp_path, "doctor")

    missing = await doctor()
    assert missing.returncode == 0
    assert "no session store at" in missing.stdout
    assert not (tmp_path / "sessions.sqlite").exists()

    path = tmp_path / "sessions.sqlite"
    async with open_sqlite_store(path) as store:
        entries = [TranscriptEntry("user", f"{i:05d} " + "x" * 1000) for i in range(400)]
        await store.record_turn("k", Turn("run-1", "main", "m", entries, "completed", 1, 1, 1.0))
    healthy = await doctor()
    assert healthy.returncode == 0
    assert f"OK: session store {path}" in healthy.stdout

    with path.open("r+b") as file:  # garbage over a few pages in the middle of the messages
        file.seek(20 * 4096)
        file.write(b"\xa5" * (4 * 4096))
    damaged = await doctor()
    assert damaged.returncode == 1
    assert f"session store {path}:" in damaged.stderr
    assert "Error: the session store is damaged" in damaged.stderr
    assert "Traceback" not in damaged.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("failure", ["config", "session_store"])
def test_cli_gateway_workers_that_cannot_start_exit_1_with_one_error_line(
    tmp_path: Path, workers: str, failure: str
) -> None:
    """An invalid config stops the parent; a store the workers cannot open stops them: either
    way one Error: line and exit status 1 (hypercorn's own runner would exit 0)."""
    config = tmp_path / "epiloop.json"
    state = tmp_path
    if failure == "config":
        config.write_text("{ gateway: { port: 'x' } }")
    else:
        config.write_text("{ gateway: { auth: { token: 'a-token-for-every-worker' } } }")
        state = tmp_path / "state"
        state.write_text("")  # not a directory: the session store cannot be created below it
    done = epiloop(state, "gateway", "--workers", workers, "--port", "0", "--config", str(config))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, done.stderr
    assert ("gateway.port" if failure == "config" else "sessions.sqlite") in errors[0]


async def test_cli_gateway_workers_serve_and_stop_cleanly(tmp_path: Path) -> None:
    init = epiloop(tmp_path, "config", "init")
    token = re.search(r"Gateway token: (\S+)", init.stdout)
    assert token is not None
    process, url, _ = await start_cli_gateway(tmp_path, "--workers", "2")
    try:
        for index in range(4):
            async with httpx.AsyncClient() as client:  # new connections: either worker
                response = await client.post(
                    f"{url}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {token[1]}"},
                    json={"messages": [{"role": "user", "content": f"hello {index}"}]},
                )
            assert response.json()["choices"][0]["message"]["content"] == f"hello {index}"
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(BOUND):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_cli_gateway_start_up_lines_appear_once(tmp_path: Path) -> None:
    """The address was announced twice: hypercorn's own "Running on" log line, then ours."""
    assert epiloop(tmp_path, "config", "init").returncode == 0
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_gateway", "gateway", "--port", "0", "--log-level", "info"],
        env=env_for(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = ""
    try:
        with trio.fail_after(BOUND):
            while (found := re.search(r"Listening on (http://\S+)", output)) is None:
                chunk = await process.stdout.receive_some()
                assert chunk, output
                output += chunk.decode()
            process.send_signal(signal.SIGTERM)
            while chunk := await process.stdout.receive_some():
                output += chunk.decode()
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert output.count(found[1]) == 1, output
    messages = [line.split("] ", 1)[-1] for line in output.splitlines()]
    assert len(messages) == len(set(messages)), output


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_cli_gateway_workers_stop_cleanly_when_the_whole_group_is_signalled(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """Ctrl-C in a terminal, or a supervisor that signals every process: each worker gets the
    signal directly and again from the parent, which must not kill one that is stopping."""
    assert epiloop(tmp_path, "config", "init").returncode == 0
    process, _, _ = await start_cli_gateway(tmp_path, "--workers", "2", new_session=True)
    try:
        os.killpg(process.pid, stop_signal)
        with trio.fail_after(BOUND):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def test_cli_gateway_sigterm_ends_within_the_grace_period_despite_a_client_not_reading(
    tmp_path: Path,
) -> None:
    """A streaming client whose TCP window is full held the process after SIGTERM forever."""
    config = {
        "gateway": {
            "shutdownGraceSeconds": 1,
            "auth": {"token": "a-token-for-this-test"},
            "http": {
                "endpoints": {"chatCompletions": {"enabled": True}},
                "streamStallSeconds": 3600,  # only the grace period can end the write
                "maxBodyBytes": 32 * 1024 * 1024,
                "maxContentChars": 32 * 1024 * 1024,
            },
        },
        "models": {"providers": {"local": {"api": "echo", "paceMs": 0}}},
    }
    (tmp_path / "epiloop.json").write_text(json.dumps(config))
    process, url, _ = await start_cli_gateway(tmp_path)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    # 12 MB echoed back: more than the kernel's socket buffers can hold.
    words = ("x" * 4095 + " ") * 3000
    body = json.dumps({"stream": True, "messages": [{"role": "user", "content": words}]})
    request = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        "Authorization: Bearer a-token-for-this-test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        async with trio.SocketStream(sock) as client:
            with trio.fail_after(BOUND):
                await sock.connect((host, int(port)))
                await client.send_all(request)
                await client.receive_some(1024)  # the response started; now never read again
                await trio.sleep(1)  # the writes fill the buffers and block
            process.send_signal(signal.SIGTERM)
            status = None
            with trio.move_on_after(BOUND):  # the client stays open meanwhile
                status = await process.wait()
            assert status == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
