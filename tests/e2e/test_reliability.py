"""Limits, the failed-auth limiter, overload, draining, kill -9 durability and a small soak."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from gateway_harness import TOKEN, RunningGateway, merge, start_gateway

from benchmarks.mock_upstream import MockUpstream, Scenario
from benchmarks.scripted_provider import Pause, Say, ScriptedProvider
from trio_gateway.auth import FailedAuthLimiter, client_address, limiter_exempt

BOUND = 20


def test_failed_auth_limiter_counts_in_a_sliding_window() -> None:
    limiter = FailedAuthLimiter()
    for second in range(3):
        assert limiter.retry_after("a", now=second, max_failures=3, window_seconds=10) is None
        limiter.record_failure("a", now=second)
    assert limiter.retry_after("a", now=3, max_failures=3, window_seconds=10) == 7
    assert limiter.retry_after("b", now=3, max_failures=3, window_seconds=10) is None
    assert limiter.retry_after("a", now=10.5, max_failures=3, window_seconds=10) is None


def test_failed_auth_limiter_forgets_the_oldest_clients() -> None:
    limiter = FailedAuthLimiter(max_clients=2)
    for client in ("a", "b", "c"):
        limiter.record_failure(client, now=0)
    assert limiter.retry_after("a", now=1, max_failures=1, window_seconds=10) is None
    assert limiter.retry_after("c", now=1, max_failures=1, window_seconds=10) == 9


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("198.51.100.7", "203.0.113.5", "198.51.100.7"),  # not a trusted proxy: ignored
        ("10.0.0.2", "203.0.113.5", "203.0.113.5"),
        ("10.0.0.2", "203.0.113.5, 10.0.0.9", "203.0.113.5"),  # skip trusted hops
        ("10.0.0.2", "spoofed, 203.0.113.5", "203.0.113.5"),  # the nearest untrusted hop
        ("10.0.0.2", None, "10.0.0.2"),
        (None, None, "unknown"),
    ],
)
def test_client_address_honours_only_trusted_proxies(
    peer: str | None, forwarded: str | None, expected: str
) -> None:
    import ipaddress

    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_address(peer, forwarded, trusted) == expected


@pytest.mark.parametrize(
    ("peer", "forwarded", "exempt"),
    [
        ("127.0.0.1", None, True),  # a direct loopback client
        ("::1", None, True),
        ("127.0.0.1", "", True),
        # A local proxy not listed in trustedProxies: its clients are limited all the same.
        ("127.0.0.1", "203.0.113.5", False),
        ("10.0.0.2", None, False),
        ("10.0.0.2", "127.0.0.1", False),  # a trusted proxy forwards "127.0.0.1"
        ("10.0.0.2", "::1", False),
        ("10.0.0.2", "localhost", False),
        ("198.51.100.7", "127.0.0.1", False),
        (None, None, False),
    ],
)
def test_limiter_exempt_only_a_direct_loopback_peer(
    peer: str | None, forwarded: str | None, exempt: bool
) -> None:
    import ipaddress

    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    assert limiter_exempt(peer, forwarded, trusted) is exempt


@pytest.mark.parametrize("forwarded", ["127.0.0.1", "::1", "localhost", "203.0.113.5, 127.0.0.1"])
def test_limiter_exempt_never_for_a_forwarded_address_from_a_loopback_proxy(
    forwarded: str,
) -> None:
    import ipaddress

    trusted = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    assert limiter_exempt("127.0.0.1", forwarded, trusted) is False
    assert limiter_exempt("127.0.0.1", None, trusted) is True  # the proxy's own request


@pytest.mark.parametrize("forwarded", ["127.0.0.1", "::1"])
async def test_auth_limiter_limits_a_forwarded_loopback_address(
    nursery: trio.Nursery, forwarded: str
) -> None:
    gateway = await start_gateway(
        nursery,
        {
            "gateway": {
                "trustedProxies": ["127.0.0.1"],
                "auth": {"rateLimit": {"maxFailures": 3, "windowSeconds": 60}},
            }
        },
    )
    url = f"{gateway.api_url}/models"
    spoofed = {"X-Forwarded-For": forwarded}
    async with httpx.AsyncClient() as http:
        for _ in range(3):
            wrong = await http.get(url, headers={**spoofed, "Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        blocked = await http.get(url, headers={**spoofed, "Authorization": "Bearer nope"})
        direct = await http.get(url, headers={"Authorization": "Bearer nope"})
    assert blocked.status_code == 429
    assert blocked.json()["error"]["code"] == "too_many_auth_failures"
    assert direct.status_code == 401  # the proxy's own (direct loopback) requests stay exempt


async def test_auth_limiter_refuses_a_failing_address_with_retry_after(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(
        nursery,
        {
            "gateway": {
                "trustedProxies": ["127.0.0.1"],
                "auth": {"rateLimit": {"maxFailures": 3, "windowSeconds": 60}},
            }
        },
    )
    url = f"{gateway.api_url}/models"
    attacker = {"X-Forwarded-For": "203.0.113.5"}
    async with httpx.AsyncClient() as http:
        for _ in range(3):
            wrong = await http.get(url, headers={**attacker, "Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        blocked = await http.get(url, headers={**attacker, **gateway.headers})
        other = await http.get(url, headers={"X-Forwarded-For": "203.0.113.6", **gateway.headers})
        local = await http.get(url, headers=gateway.headers)
    assert blocked.status_code == 429
    assert blocked.json()["error"]["code"] == "too_many_auth_failures"
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    assert other.status_code == 200
    assert local.status_code == 200


async def post_chat(gateway: RunningGateway, body: Any) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{gateway.api_url}/chat/completions", json=body, headers=gateway.headers
        )


async def test_limits_on_messages_and_content(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(
        nursery, {"gateway": {"http": {"maxMessages": 3, "maxContentChars": 100}}}
    )
    many = await post_chat(gateway, {"messages": [{"role": "user", "content": "x"}] * 4})
    assert many.status_code == 400
    assert many.json()["error"]["code"] == "too_many_messages"
    long = await post_chat(gateway, {"messages": [{"role": "user", "content": "x" * 101}]})
    assert long.status_code == 400
    assert long.json()["error"]["code"] == "content_too_long"


async def raw(gateway: RunningGateway, data: bytes, *, read_for: float = BOUND) -> bytes:
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    received = b""
    async with stream:
        await stream.send_all(data)
        with trio.move_on_after(read_for):
            while chunk := await stream.receive_some():
                received += chunk
                if b"\r\n\r\n" in received and b"}" in received:
                    break
    return received


async def test_slow_request_body_gets_408(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, {"gateway": {"http": {"bodyTimeoutSeconds": 0.3}}})
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    received = await raw(gateway, head + b'{"messages"')  # ... and the rest never comes
    assert received.startswith(b"HTTP/1.1 408")
    body = json.loads(received.partition(b"\r\n\r\n")[2])
    assert body["error"]["type"] == "invalid_request_error"


async def test_oversized_request_head_is_refused(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, {"gateway": {"http": {"maxHeaderBytes": 2048}}})
    head = ("GET /healthz HTTP/1.1\r\nHost: x\r\n" + f"X-Big: {'a' * 4096}\r\n" + "\r\n").encode()
    received = await raw(gateway, head, read_for=5)
    assert received.startswith(b"HTTP/1.1 431"), received[:100]
    assert json.loads(received.partition(b"\r\n\r\n")[2])["error"]["code"] == "headers_too_large"


async def test_draining_gateway_refuses_new_runs(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    gateway.runtime.begin_draining()
    response = await post_chat(gateway, {"messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "gateway_draining"
    assert "retry-after" in response.headers


async def test_flood_beyond_capacity_is_refused_fast_and_health_stays_up(
    nursery: trio.Nursery,
) -> None:
    provider = ScriptedProvider([Pause(0.5), Say("done")])
    gateway = await start_gateway(
        nursery,
        {"agents": {"defaults": {"maxConcurrent": 4, "maxQueued": 4}}},
        providers={"local": provider},
    )
    statuses: list[int] = []
    health_latencies: list[float] = []

    async def one(http: httpx.AsyncClient) -> None:
        response = await http.post(
            f"{gateway.api_url}/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}]},
            headers=gateway.headers,
        )
        statuses.append(response.status_code)

    async def probe(http: httpx.AsyncClient) -> None:
        for _ in range(5):
            started = trio.current_time()
            assert (await http.get(f"{gateway.url}/healthz")).status_code == 200
            health_latencies.append(trio.current_time() - started)
            await trio.sleep(0.05)

    limits = httpx.Limits(max_connections=100)
    with trio.fail_after(BOUND):
        async with httpx.AsyncClient(limits=limits) as http, trio.open_nursery() as flood:
            for _ in range(60):
                flood.start_soon(one, http)
            flood.start_soon(probe, http)
    # 4 run and 4 wait at first; the rest are refused (a few more may get in if the flood
    # takes longer to arrive than a run, on a loaded machine).
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= 8
    assert statuses.count(429) >= 40
    assert max(health_latencies) < 2.0  # a generous bound: health never waits for runs
    assert gateway.runtime.admission.statistics().running == 0


def gateway_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPILOOP_")}
    env["EPILOOP_STATE_DIR"] = str(state)
    return env


async def start_cli_gateway(state: Path, config: dict[str, Any]) -> tuple[trio.Process, str]:
    (state / "epiloop.json").write_text(json.dumps(config))
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_gateway", "gateway", "--port", "0"],
        env=gateway_env(state),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    output = ""
    with trio.fail_after(BOUND):
        while (found := re.search(r"Listening on (http://\S+)", output)) is None:
            chunk = await process.stdout.receive_some()
            assert chunk, output
            output += chunk.decode()
    return process, found[1]


CLI_CONFIG: dict[str, Any] = {
    "gateway": {
        "auth": {"token": TOKEN},
        "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
    },
    "models": {"providers": {"local": {"api": "echo", "paceMs": 100}}},
}


async def test_sigterm_drains_then_aborts_with_an_in_band_error(tmp_path: Path) -> None:
    config = merge(CLI_CONFIG, {"gateway": {"shutdownGraceSeconds": 1.5}})
    process, url = await start_cli_gateway(tmp_path, config)
    headers = {"Authorization": f"Bearer {TOKEN}", "x-epiloop-session-key": "long"}
    body = {"stream": True, "messages": [{"role": "user", "content": "word " * 60}]}
    lines: list[str] = []
    try:
        with trio.fail_after(BOUND):
            async with (
                httpx.AsyncClient() as http,
                http.stream(
                    "POST", f"{url}/v1/chat/completions", json=body, headers=headers
                ) as response,
            ):
                async for line in response.aiter_lines():
                    lines.append(line)
                    if len(lines) == 4:
                        process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    events = [line[6:] for line in lines if line.startswith("data: ")]
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["code"] == "run_aborted"
    assert "shutting down" in error["message"]
    assert len(events) > 4  # the stream went on during the grace period
    with sqlite3.connect(tmp_path / "sessions.sqlite") as db:
        status = db.execute("select last_status from sessions").fetchall()
    assert status == [("aborted",)]


async def test_kill_9_mid_run_keeps_every_completed_turn(tmp_path: Path) -> None:
    process, url = await start_cli_gateway(
        tmp_path, merge(CLI_CONFIG, {"models": {"providers": {"local": {"paceMs": 5}}}})
    )
    try:
        async with httpx.AsyncClient() as http:
            for index in range(5):
                response = await http.post(
                    f"{url}/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": f"turn {index}"}]},
                    headers={
                        "Authorization": f"Bearer {TOKEN}",
                        "x-epiloop-session-key": f"s{index % 2}",
                    },
                )
                assert response.status_code == 200
            async with http.stream(
                "POST",
                f"{url}/v1/chat/completions",
                json={"stream": True, "messages": [{"role": "user", "content": "x " * 500}]},
                headers={"Authorization": f"Bearer {TOKEN}", "x-epiloop-session-key": "s0"},
            ) as stream:
                async for line in stream.aiter_lines():
                    if '"content":"x' in line:
                        process.kill()  # SIGKILL in the middle of the run
                        break
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    with sqlite3.connect(tmp_path / "sessions.sqlite") as db:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        rows = db.execute(
            "select session_key, role, content from messages order by session_key, position"
        ).fetchall()
    by_session: dict[str, list[tuple[str, str]]] = {}
    for key, role, content in rows:
        by_session.setdefault(key, []).append((role, content))
    assert by_session["s0"] == [
        ("user", "turn 0"),
        ("assistant", "turn 0"),
        ("user", "turn 2"),
        ("assistant", "turn 2"),
        ("user", "turn 4"),
        ("assistant", "turn 4"),
    ]
    assert len(by_session["s1"]) == 4


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    "batches",
    [
        pytest.param(10, id="300-requests"),
        pytest.param(100, id="3000-requests", marks=pytest.mark.slow),
    ],
)
async def test_soak_mixed_traffic_returns_to_baseline(nursery: trio.Nursery, batches: int) -> None:
    """The soak scenario: streaming, non-streaming, disconnects and upstream faults, then
    nothing is left running or open. 300 requests in the suite; 3,000 with ``-m slow``."""
    mock = MockUpstream(
        {
            "ok": Scenario(tokens=["a", "b", "c", "d"], pace=0.002),
            "fail": Scenario(fault="status_500"),
            "reset": Scenario(tokens=["a", "b", "c"], fault="reset_mid_stream"),
        }
    )
    await nursery.start(mock.serve)
    gateway = await start_gateway(
        nursery,
        {
            "models": {
                "providers": {
                    "up": {"api": "openai-chat", "baseUrl": mock.openai_base_url, "maxRetries": 0}
                }
            },
            "agents": {
                "list": [
                    {"id": "ok", "model": "up/ok"},
                    {"id": "fail", "model": "up/fail"},
                    {"id": "reset", "model": "up/reset"},
                ]
            },
        },
    )
    baseline = open_fds()
    outcomes: dict[str, int] = {}

    async def one(http: httpx.AsyncClient, index: int) -> None:
        agent = ("ok", "ok", "fail", "reset")[index % 4]
        stream = index % 3 != 0
        body = {
            "model": f"epiloop:{agent}",
            "stream": stream,
            "messages": [{"role": "user", "content": "x"}],
        }
        url = f"{gateway.api_url}/chat/completions"
        headers = {**gateway.headers, "x-epiloop-session-key": f"soak-{index % 7}"}
        if stream and index % 5 == 0:
            async with http.stream("POST", url, json=body, headers=headers) as response:
                async for _ in response.aiter_lines():
                    break  # disconnect early
            key = "disconnected"
        else:
            response = await http.post(url, json=body, headers=headers)
            key = str(response.status_code)
        outcomes[key] = outcomes.get(key, 0) + 1

    with trio.fail_after(60 * batches / 10):
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=20)) as http:
            for batch in range(batches):
                async with trio.open_nursery() as requests:
                    for index in range(batch * 30, batch * 30 + 30):
                        requests.start_soon(one, http, index)
        with trio.fail_after(BOUND):
            while gateway.runtime.active_runs.running():
                await trio.sleep(0.05)
    assert sum(outcomes.values()) == batches * 30
    assert outcomes.get("500", 0) == 0
    statistics = gateway.runtime.admission.statistics()
    assert (statistics.running, statistics.queued, statistics.busy_sessions) == (0, 0, 0)
    # Idle pooled upstream connections may stay open; nothing else may.
    assert mock.open_connections <= 20
    # The mock runs in this process: a pooled connection is two descriptors here. Sockets the
    # clients closed are released as the server notices, so give that a moment.
    with trio.fail_after(BOUND):
        while open_fds() > baseline + 2 * mock.open_connections + 5:
            await trio.sleep(1)
