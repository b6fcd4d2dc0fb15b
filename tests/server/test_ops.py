"""Operator endpoints, metrics, Server-Timing and config reload."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import trio
from gateway_harness import TOKEN, make_config, open_test_runtime, start_gateway

from benchmarks.scripted_provider import Hang, Pause, Say, ScriptedProvider
from trio_gateway.auth import check_exposure
from trio_gateway.errors import ConfigError
from trio_gateway.server import serve_gateway
from trio_gateway.sessions import MemorySessionStore, open_sqlite_store

BOUND = 20


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    match = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


async def test_ops_healthz_needs_no_auth_and_touches_nothing(nursery: trio.Nursery) -> None:
    sessions = MemorySessionStore()
    gateway = await start_gateway(nursery, sessions=sessions)
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{gateway.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert len(sessions) == 0
    assert gateway.runtime.active_runs.running() == []


async def test_ops_readyz_reports_each_check(nursery: trio.Nursery) -> None:
    class BrokenStore(MemorySessionStore):
        async def probe(self) -> None:
            raise OSError("disk gone")

    gateway = await start_gateway(nursery)
    broken = await start_gateway(nursery, sessions=BrokenStore())
    async with httpx.AsyncClient() as http:
        ready = await http.get(f"{gateway.url}/readyz")
        assert ready.status_code == 200
        # Only checks that can fail: a config that failed to reload leaves the previous one in
        # force, and the gateway serves it, so no "config" check.
        assert ready.json()["checks"] == {"sessionStore": True, "notDraining": True}
        gateway.runtime.begin_draining()
        draining = await http.get(f"{gateway.url}/readyz")
        assert draining.status_code == 503
        assert draining.json()["checks"]["notDraining"] is False
        store = await http.get(f"{broken.url}/readyz")
        assert store.status_code == 503
        assert store.json()["checks"]["sessionStore"] is False


class _ProbeCountingStore(MemorySessionStore):
    """A memory store that counts its probes and can be told it is failing."""

    def __init__(self) -> None:
        super().__init__()
        self.probes = 0
        self.failure: str | None = None

    async def probe(self) -> None:
        self.probes += 1
        await super().probe()

    def health(self) -> str | None:
        return self.failure


async def test_ops_readyz_probes_the_store_at_most_every_interval(nursery: trio.Nursery) -> None:
    store = _ProbeCountingStore()
    gateway = await start_gateway(
        nursery, {"session": {"probeIntervalSeconds": 3600}}, sessions=store
    )
    async with httpx.AsyncClient() as http:
        for _ in range(5):
            assert (await http.get(f"{gateway.url}/readyz")).status_code == 200
        assert store.probes == 1
        # A failure a real request met turns readiness red at once, without a new probe.
        store.failure = "record_turn failed: database or disk is full"
        failing = await http.get(f"{gateway.url}/readyz")
        assert failing.status_code == 503
        assert failing.json()["checks"]["sessionStore"] is False
        store.failure = None
        assert (await http.get(f"{gateway.url}/readyz")).status_code == 200
    assert store.probes == 1


async def test_ops_full_store_fails_the_turn_and_readiness_until_writes_succeed(
    tmp_path: Path,
) -> None:
    """A real SQLite store that cannot grow (max_page_count: SQLITE_FULL, as on a full disk)."""
    key = {"x-epiloop-session-key": "full-disk"}
    big = "word " * 80_000  # the echo provider answers it back: the turn needs ~800 kB
    async with (
        open_sqlite_store(tmp_path / "sessions.sqlite", max_bytes=64 * 4096) as store,
        trio.open_nursery() as nursery,
    ):
        gateway = await start_gateway(
            nursery, {"session": {"probeIntervalSeconds": 0}}, sessions=store
        )
        sdk = openai.AsyncOpenAI(
            base_url=gateway.api_url, api_key=TOKEN, max_retries=0, default_headers=key
        )
        async with sdk, httpx.AsyncClient(timeout=BOUND) as http:

            async def failures() -> float:
                text = (await http.get(f"{gateway.url}/metrics", headers=gateway.headers)).text
                return metric_value(text, "epiloop_session_record_failures_total", 'reason="error"')

            assert (await http.get(f"{gateway.url}/readyz")).status_code == 200
            before = await failures()
            with pytest.raises(openai.InternalServerError) as caught:
                await sdk.chat.completions.create(
                    model="epiloop", messages=[{"role": "user", "content": big}]
                )
            assert caught.value.status_code == 500
            assert caught.value.code == "session_store_error"
            ready = await http.get(f"{gateway.url}/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["sessionStore"] is False

            streamed = await http.post(
                f"{gateway.api_url}/chat/completions",
                json={"messages": [{"role": "user", "content": big}], "stream": True},
                headers={**gateway.headers, **key},
            )
            assert streamed.status_code == 200  # the error comes in-band, and no [DONE]
            events = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
            assert json.loads(events[-1][6:])["error"]["code"] == "session_store_error"
            assert "data: [DONE]" not in streamed.text
            assert await failures() == before + 2
            assert await store.get("full-disk") is None
            assert (await http.get(f"{gateway.url}/readyz")).status_code == 503

            # A turn that fits is stored: writes succeed again, and so does readiness.
            small = await sdk.chat.completions.create(
                model="epiloop", messages=[{"role": "user", "content": "small"}]
            )
            assert small.choices[0].message.content == "small"
            assert (await http.get(f"{gateway.url}/readyz")).status_code == 200
        session = await store.get("full-disk")
        assert session is not None
        assert [entry.content for entry in session.transcript] == ["small", "small"]
        nursery.cancel_scope.cancel(reason="test over")


async def test_ops_metrics_count_requests_runs_and_tokens(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    async with httpx.AsyncClient() as http:
        refused = await http.get(f"{gateway.url}/metrics")
        assert refused.status_code == 401
        before = (await http.get(f"{gateway.url}/metrics", headers=gateway.headers)).text
        await http.post(
            f"{gateway.api_url}/chat/completions",
            json={"messages": [{"role": "user", "content": "count these words"}]},
            headers=gateway.headers,
        )
        await http.post(f"{gateway.api_url}/chat/completions", json={"messages": []})
        response = await http.get(f"{gateway.url}/metrics", headers=gateway.headers)
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text

    def grew(name: str, labels: str = "") -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    ok = 'method="POST",route="/v1/chat/completions",status="200"'
    assert grew("epiloop_http_requests_total", ok) == 1
    unauthorized = 'method="POST",route="/v1/chat/completions",status="401"'
    assert grew("epiloop_http_requests_total", unauthorized) == 1
    assert grew("epiloop_auth_failures_total", 'transport="http"') == 1
    assert grew("epiloop_tokens_total", 'agent="main",direction="out"') == 3
    assert grew("epiloop_time_to_first_token_seconds_count", 'agent="main"') == 1
    assert grew("epiloop_run_duration_seconds_count", 'agent="main",status="completed"') == 1
    assert metric_value(after, "epiloop_active_runs", 'source="http"') == 0


async def test_ops_metrics_can_be_public_or_disabled(nursery: trio.Nursery) -> None:
    public = await start_gateway(
        nursery, {"gateway": {"http": {"endpoints": {"metrics": {"requireAuth": False}}}}}
    )
    disabled = await start_gateway(
        nursery, {"gateway": {"http": {"endpoints": {"metrics": {"enabled": False}}}}}
    )
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{public.url}/metrics")).status_code == 200
        off = await http.get(f"{disabled.url}/metrics", headers=disabled.headers)
    assert off.status_code == 404
    assert off.json()["error"]["code"] == "endpoint_disabled"


async def test_ops_server_timing_on_answers_and_in_the_usage_chunk(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Pause(0.05), Say("hi")])
    gateway = await start_gateway(nursery, providers={"local": provider})
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.api_url}/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}]},
            headers=gateway.headers,
        )
    timing = {
        name: float(value)
        for name, value in re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"])
    }
    assert set(timing) == {"queue", "upstream", "tool", "gateway"}
    assert timing["upstream"] >= 50
    async with openai.AsyncOpenAI(base_url=gateway.api_url, api_key=TOKEN, max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(
            model="epiloop",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    extension = chunks[-1].model_extra or {}
    assert set(extension["epiloop"]["timing"]) == {
        "queue_ms",
        "upstream_ms",
        "tool_ms",
        "gateway_ms",
    }
    assert extension["epiloop"]["timing"]["upstream_ms"] >= 50


async def test_ops_reload_applies_to_new_runs_and_spares_running_streams(
    nursery: trio.Nursery,
) -> None:
    provider = ScriptedProvider([Say("before "), Pause(0.3), Say("after")])
    gateway = await start_gateway(nursery, providers={"local": provider})
    runtime = gateway.runtime
    async with httpx.AsyncClient() as http, trio.open_nursery() as requests:
        streamed: list[str] = []

        async def stream() -> None:
            response = await http.post(
                f"{gateway.api_url}/chat/completions",
                json={"stream": True, "messages": [{"role": "user", "content": "x"}]},
                headers=gateway.headers,
            )
            streamed.append(response.text)

        requests.start_soon(stream)
        with trio.fail_after(BOUND):
            await provider.call_started.wait()
        new = make_config({"agents": {"list": [{"id": "solo", "systemPrompt": "Alone."}]}})
        runtime.providers = {"local": provider}  # the reload builds fresh ones
        result = runtime.reload(new)
        assert result.warnings == []
        assert result.restart_required == []
        models = await http.get(f"{gateway.api_url}/models", headers=gateway.headers)
        assert [m["id"] for m in models.json()["data"]] == ["epiloop:solo"]
    assert streamed[0].endswith("data: [DONE]\n\n")
    assert "after" in streamed[0]


async def test_ops_reload_refuses_an_invalid_file_and_keeps_the_config(tmp_path: Path) -> None:
    config_file = tmp_path / "epiloop.json"
    async with open_test_runtime(make_config(), config_path=config_file) as runtime:
        config_file.write_text("{ agents: { list: [ { id: 'x', modle: 1 } ] } }")
        with pytest.raises(ConfigError) as caught:
            runtime.reload_from_file()
        assert "modle" in str(caught.value)
        assert [agent.id for agent in runtime.config.agents.entries] == ["main", "helper"]


async def test_ops_sighup_reloads_the_cli_gateway(tmp_path: Path) -> None:
    config_file = tmp_path / "epiloop.json"

    def write(agent_ids: list[str]) -> None:
        agents = ", ".join(f'{{ id: "{a}" }}' for a in agent_ids)
        config_file.write_text(
            f'{{ gateway: {{ auth: {{ token: "{TOKEN}" }}, http: {{ endpoints: '
            f"{{ chatCompletions: {{ enabled: true }} }} }} }}, agents: {{ list: [{agents}] }} }}"
        )

    write(["one"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPILOOP_")}
    env["EPILOOP_STATE_DIR"] = str(tmp_path)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trio_gateway", "gateway", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        output = ""
        with trio.fail_after(BOUND):
            while (found := re.search(r"Listening on (http://\S+)", output)) is None:
                chunk = await process.stdout.receive_some()
                assert chunk, output
                output += chunk.decode()
        url = found[1]
        headers = {"Authorization": f"Bearer {TOKEN}"}

        async def model_ids(http: httpx.AsyncClient) -> list[str]:
            response = await http.get(f"{url}/v1/models", headers=headers)
            return [m["id"] for m in response.json()["data"]]

        async with httpx.AsyncClient() as http:
            assert await model_ids(http) == ["epiloop:one"]
            write(["one", "two"])
            process.send_signal(signal.SIGHUP)
            with trio.fail_after(BOUND):
                while await model_ids(http) != ["epiloop:one", "epiloop:two"]:
                    await trio.sleep(0.05)
            config_file.write_text("{ not json5")
            process.send_signal(signal.SIGHUP)
            await trio.sleep(0.3)
            assert await model_ids(http) == ["epiloop:one", "epiloop:two"]
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(BOUND):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_ops_reload_over_the_control_plane(nursery: trio.Nursery, tmp_path: Path) -> None:
    from trio_websocket import open_websocket_url

    gateway = await start_gateway(nursery, config_path=tmp_path / "epiloop.json")
    (tmp_path / "epiloop.json").write_text(
        json.dumps(
            {
                "gateway": {"auth": {"token": TOKEN}},
                "agents": {"list": [{"id": "fresh"}]},
            }
        )
    )
    url = gateway.url.replace("http://", "ws://") + "/ws"
    async with open_websocket_url(url) as ws:
        await ws.get_message()
        await ws.send_message(
            json.dumps(
                {
                    "type": "req",
                    "id": "c",
                    "method": "connect",
                    "params": {"auth": {"token": TOKEN}},
                }
            )
        )
        await ws.get_message()
        await ws.send_message(json.dumps({"type": "req", "id": "r", "method": "config.reload"}))
        with trio.fail_after(BOUND):
            reply = json.loads(await ws.get_message())
    assert reply["ok"] is True
    assert reply["payload"]["reloaded"] is True
    assert [a.id for a in gateway.runtime.config.agents.entries] == ["fresh"]


async def test_ops_reload_holds_the_exposure_rule_of_the_served_host() -> None:
    async with open_test_runtime(make_config()) as runtime:
        no_auth = make_config({"gateway": {"auth": {"mode": "none"}}})
        with runtime.exposed_on("0.0.0.0"):
            with pytest.raises(ConfigError) as refused:
                runtime.reload(no_auth)
            with pytest.raises(ConfigError) as at_start:
                check_exposure("0.0.0.0", no_auth.gateway.auth)
            assert str(refused.value) == str(at_start.value)
            assert runtime.config.gateway.auth.token == TOKEN  # the running config stays
        with runtime.exposed_on("127.0.0.1"):
            runtime.reload(no_auth)  # loopback: allowed, as at start-up
        assert runtime.config.gateway.auth.mode == "none"


async def test_ops_reload_lists_the_settings_that_need_a_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_test_runtime(make_config()) as runtime:
        moved = make_config({"gateway": {"port": 18000, "logging": {"level": "debug"}}})
        with caplog.at_level(logging.WARNING, logger="trio_gateway.agent.runtime"):
            result = runtime.reload(moved)
        assert result.restart_required == ["gateway.port", "gateway.logging.level"]
        assert "restart_required keys=gateway.port,gateway.logging.level" in caplog.text
        # Compared with what the process started with: changing it back needs no restart.
        assert runtime.reload(make_config()).restart_required == []


async def test_ops_reload_applies_body_and_frame_limits(nursery: trio.Nursery) -> None:
    from trio_websocket import open_websocket_url

    gateway = await start_gateway(nursery, {"gateway": {"ws": {"maxFrameBytes": 2048}}})
    body = {"messages": [{"role": "user", "content": "x" * 3000}]}
    async with httpx.AsyncClient() as http:
        ok = await http.post(
            f"{gateway.api_url}/chat/completions", json=body, headers=gateway.headers
        )
        assert ok.status_code == 200
        gateway.runtime.reload(
            make_config(
                {"gateway": {"http": {"maxBodyBytes": 2048}, "ws": {"maxFrameBytes": 65536}}}
            )
        )
        refused = await http.post(
            f"{gateway.api_url}/chat/completions", json=body, headers=gateway.headers
        )
        assert refused.status_code == 413
    url = gateway.url.replace("http://", "ws://") + "/ws"
    async with open_websocket_url(url) as ws:
        await ws.get_message()
        connect = {"type": "req", "id": "c", "method": "connect"}
        await ws.send_message(json.dumps({**connect, "params": {"auth": {"token": TOKEN}}}))
        await ws.get_message()
        big = {"type": "req", "id": "g", "method": "sessions.get", "params": {"key": "k" * 8000}}
        await ws.send_message(json.dumps(big))  # larger than the start-up limit
        with trio.fail_after(BOUND):
            reply = json.loads(await ws.get_message())
    assert reply["error"]["code"] == "not_found"


async def test_ops_reload_applies_the_shutdown_grace(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("started"), Hang()])
    async with open_test_runtime(
        make_config({"gateway": {"shutdownGraceSeconds": 600}}), providers={"local": provider}
    ) as runtime:
        stop = trio.Event()
        done = trio.Event()

        async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await serve_gateway(
                runtime,
                host="127.0.0.1",
                port=0,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
            done.set()

        url = (await nursery.start(serve))[0]

        async def stream(http: httpx.AsyncClient) -> None:
            body = {"stream": True, "messages": [{"role": "user", "content": "x"}]}
            headers = {"Authorization": f"Bearer {TOKEN}"}
            with contextlib.suppress(httpx.HTTPError):
                await http.post(f"{url}/v1/chat/completions", json=body, headers=headers)

        # No client-side timeout: the stream stays open until the gateway ends it.
        async with httpx.AsyncClient(timeout=None) as http, trio.open_nursery() as clients:
            clients.start_soon(stream, http)
            with trio.fail_after(BOUND):
                await provider.call_started.wait()
            runtime.reload(make_config({"gateway": {"shutdownGraceSeconds": 0.5}}))
            stop.set()
            with trio.fail_after(BOUND):  # not the 600 s the gateway started with
                await done.wait()
