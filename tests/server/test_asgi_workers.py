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
