"""Config reloads against a real ``epiloop gateway`` process: the exposure rule holds for every
reload path, and a reload works across a token change."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

BOUND = 20
OLD_TOKEN = "old-token-0123456789abcdef"
NEW_TOKEN = "new-token-0123456789abcdef"


def write_config(path: Path, auth: str) -> None:
    path.write_text(
        f"{{ gateway: {{ auth: {auth}, http: {{ endpoints: {{ chatCompletions: "
        "{ enabled: true } } } }, models: { providers: { local: { api: 'echo', paceMs: 0 } } } }"
    )


def env_for(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPILOOP_")}
    env["EPILOOP_STATE_DIR"] = str(state)
    return env


async def epiloop(state: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(BOUND):
        return await trio.run_process(
            [sys.executable, "-m", "trio_gateway", *args],
            env=env_for(state),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


@dataclass
class CliGateway:
    process: trio.Process
    #: On 127.0.0.1, whatever the bind.
    url: str
    stderr: Path

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"


@asynccontextmanager
async def cli_gateway(state: Path, *args: str) -> AsyncIterator[CliGateway]:
    """``epiloop gateway --port 0 *args`` with ``state`` as its state directory."""
    stderr_path = state / "gateway.stderr"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_gateway", "gateway", "--port", "0", *args],
            env=env_for(state),
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert process.stdout is not None
    try:
        output = ""
        with trio.fail_after(BOUND):
            while (found := re.search(r"Listening on http://\S+:(\d+)", output)) is None:
                chunk = await process.stdout.receive_some()
                assert chunk, f"the gateway exited early: {output}"
                output += chunk.decode()
        yield CliGateway(process, f"http://127.0.0.1:{found[1]}", stderr_path)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(BOUND):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(BOUND, shield=True):
                await process.wait()


async def wait_for_line(path: Path, pattern: str) -> str:
    """The first line of ``path`` that contains ``pattern``, once it is written (bounded)."""
    with trio.fail_after(BOUND):
        while True:
            text = await trio.Path(path).read_text()
            for line in text.splitlines():
                if pattern in line:
                    return line
            await trio.sleep(0.05)


async def models_status(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{url}/v1/models", headers=headers)).status_code


async def test_reload_refuses_auth_none_on_a_public_bind_by_sighup_and_cli(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "epiloop.json"
    write_config(config_file, f"{{ token: '{OLD_TOKEN}' }}")
    # All interfaces, as "lan" means; the test's traffic goes to 127.0.0.1 only.
    async with cli_gateway(tmp_path, "--bind", "lan") as gateway:
        write_config(config_file, "{ mode: 'none' }")
        gateway.process.send_signal(signal.SIGHUP)
        line = await wait_for_line(gateway.stderr, "SIGHUP: config not reloaded")
        assert 'refusing to bind 0.0.0.0: gateway.auth.mode is "none"' in line
        assert await models_status(gateway.url, None) == 401
        assert await models_status(gateway.url, OLD_TOKEN) == 200

        done = await epiloop(
            tmp_path, "config", "reload", "--url", gateway.ws_url, "--token", OLD_TOKEN
        )
        assert done.returncode == 1, done.stderr
        assert b'refusing to bind 0.0.0.0: gateway.auth.mode is "none"' in done.stderr
        assert await models_status(gateway.url, None) == 401
        assert await models_status(gateway.url, OLD_TOKEN) == 200


async def test_reload_by_the_cli_works_across_a_token_change(tmp_path: Path) -> None:
    config_file = tmp_path / "epiloop.json"
    write_config(config_file, f"{{ token: '{OLD_TOKEN}' }}")
    async with cli_gateway(tmp_path) as gateway:
        url = ["--url", gateway.ws_url]
        write_config(config_file, f"{{ token: '{NEW_TOKEN}' }}")
        assert await models_status(gateway.url, NEW_TOKEN) == 401

        # The new credential only reloads: other commands are told to reload first.
        status = await epiloop(tmp_path, "status", *url)
        assert status.returncode == 4, status.stderr
        assert b"run 'epiloop config reload' first" in status.stderr
        # A credential that is neither the running one nor the file's is refused.
        wrong = await epiloop(tmp_path, "config", "reload", *url, "--token", "wrong-token")
        assert wrong.returncode == 4, wrong.stderr

        done = await epiloop(tmp_path, "config", "reload", *url)  # the file's (new) token
        assert done.returncode == 0, done.stderr
        assert f"reloaded {config_file}".encode() in done.stdout
        assert await models_status(gateway.url, NEW_TOKEN) == 200
        assert await models_status(gateway.url, OLD_TOKEN) == 401
        again = await epiloop(tmp_path, "status", *url)
        assert again.returncode == 0, again.stderr
