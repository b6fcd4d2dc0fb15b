"""The gateway under ``hypercorn -k trio --workers 2`` (the ASGI entry point), metrics summed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from gateway_harness import TOKEN

BOUND = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_hypercorn_workers_serve_the_gateway_and_sum_metrics(tmp_path: Path) -> None:
    config = {
        "gateway": {
            "auth": {"token": TOKEN},
            "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
        },
        "models": {"providers": {"local": {"api": "echo", "paceMs": 0}}},
    }
    (tmp_path / "epiloop.json").write_text(json.dumps(config))
    (tmp_path / "metrics").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPILOOP_")}
    env |= {
        "EPILOOP_STATE_DIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hypercorn = [sys.executable, "-m", "hypercorn", "-k", "trio", "--workers", "2"]
    process = await trio.lowlevel.open_process(
        [*hypercorn, "--bind", f"127.0.0.1:{port}", "trio_gateway.server.asgi:app"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with httpx.AsyncClient() as http:
            with trio.fail_after(BOUND):
                while True:
                    try:
                        if (await http.get(f"{url}/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)
            for index in range(20):
                # A new connection each time, so the kernel spreads them over both workers.
                async with httpx.AsyncClient() as fresh:
                    response = await fresh.post(
                        f"{url}/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": f"hello {index}"}]},
                        headers=headers,
                    )
                assert response.json()["choices"][0]["message"]["content"] == f"hello {index}"
            metrics = (await http.get(f"{url}/metrics", headers=headers)).text
        ok = 'method="POST",route="/v1/chat/completions",status="200"'
        match = re.search(
            r"^epiloop_http_requests_total\{" + re.escape(ok) + r"\} (\S+)$", metrics, re.M
        )
        assert match is not None, metrics
        assert float(match[1]) == 20  # every worker's count, summed
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(BOUND):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _run_hypercorn_with_a_bad_config(tmp_path: Path, workers: int) -> tuple[int, str]:
    (tmp_path / "epiloop.json").write_text('{"gateway": {"port": "x"}}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPILOOP_")}
    env["EPILOOP_STATE_DIR"] = str(tmp_path)
    hypercorn = [sys.executable, "-m", "hypercorn", "-k", "trio", "--workers", str(workers)]
    with trio.fail_after(BOUND):
        done = await trio.run_process(
            [*hypercorn, "--bind", f"127.0.0.1:{free_port()}", "trio_gateway.server.asgi:app"],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stderr.decode()


@pytest.mark.parametrize("workers", [0, 1, 2])
async def test_hypercorn_worker_that_cannot_start_says_why_in_one_line(
    tmp_path: Path, workers: int
) -> None:
    """Each worker that fails its start-up prints one Error: line, no traceback (0 workers:
    hypercorn serves in its own process, which then exits 1)."""
    status, stderr = await _run_hypercorn_with_a_bad_config(tmp_path, workers)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "Running on" not in line]
    assert lines, stderr
    assert set(lines) == {
        f"Error: invalid configuration: {tmp_path / 'epiloop.json'}: gateway.port: "
        'expected int, got "x"'
    }
    if workers == 0:
        assert status == 1


@pytest.mark.xfail(
    strict=True,
    reason="hypercorn's run() replaces a failed worker's exit status with that of a second "
    "reaping pass that no longer sees it, and exits 0; epiloop gateway --workers N reports it",
)
async def test_hypercorn_workers_exit_non_zero_when_a_worker_cannot_start(
    tmp_path: Path,
) -> None:
    status, _ = await _run_hypercorn_with_a_bad_config(tmp_path, 1)
    assert status != 0


async def test_hypercorn_worker_start_up_lines_appear_once(tmp_path: Path) -> None:
    """hypercorn's CLI gives its error log a stderr handler of its own, while the worker's
    logging also writes it through the root: each line came out twice."""
    config = {"gateway": {"auth": {"token": TOKEN}}}
    (tmp_path / "epiloop.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPILOOP_")}
    env["EPILOOP_STATE_DIR"] = str(tmp_path)
    port = free_port()
    hypercorn = [sys.executable, "-m", "hypercorn", "-k", "trio", "--workers", "1"]
    process = await trio.lowlevel.open_process(
        [*hypercorn, "--bind", f"127.0.0.1:{port}", "trio_gateway.server.asgi:app"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    output = ""
    try:
        with trio.fail_after(BOUND):
            while "Running on" not in output:
                chunk = await process.stderr.receive_some()
                assert chunk, output
                output += chunk.decode()
            process.send_signal(signal.SIGTERM)
            while chunk := await process.stderr.receive_some():
                output += chunk.decode()
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = output.splitlines()
    assert len([line for line in lines if "Running on http://" in line]) == 1, output
    messages = [line.split("] ", 1)[-1] for line in lines]  # without time and ids
    assert len(messages) == len(set(messages)), output
