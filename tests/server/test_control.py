"""The WebSocket control plane, frame by frame, over a real socket (trio-websocket)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from gateway_harness import TOKEN, RunningGateway, make_config, start_gateway
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request
from wsproto.extensions import Extension, PerMessageDeflate

from benchmarks.scripted_provider import Hang, Pause, Say, ScriptedProvider

BOUND = 10

# When the gateway closes a connection, trio-websocket (the client here) leaves its own TCP
# socket for the garbage collector; the warning names the client's socket (its remote address
# is the gateway's port), not one of the gateway's.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
    ),
    pytest.mark.usefixtures("reclaim_client_sockets"),
]


def ws_url(gateway: RunningGateway, path: str = "/ws") -> str:
    return gateway.url.replace("http://", "ws://") + path


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(BOUND):
        frame = json.loads(await ws.get_message())
    assert isinstance(frame, dict)
    return frame


async def request(
    ws: WebSocketConnection, request_id: str, method: str, params: dict[str, Any] | None = None
) -> None:
    frame: dict[str, Any] = {"type": "req", "id": request_id, "method": method}
    if params is not None:
        frame["params"] = params
    await ws.send_message(json.dumps(frame))


async def response(ws: WebSocketConnection, request_id: str) -> dict[str, Any]:
    """The next response to ``request_id`` (events and other responses are skipped)."""
    while True:
        frame = await receive(ws)
        if frame["type"] == "res" and frame["id"] == request_id:
            return frame


async def closed_with(ws: WebSocketConnection) -> tuple[int, str]:
    """Read until the gateway closes the connection; its close code and reason."""

    async def read_until_closed() -> None:
        while True:
            await ws.get_message()

    with trio.fail_after(BOUND), pytest.raises(ConnectionClosed) as caught:
        await read_until_closed()
    reason = caught.value.reason
    assert reason is not None
    return reason.code, reason.reason or ""


@asynccontextmanager
async def connected(
    gateway: RunningGateway, *, token: str = TOKEN
) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(ws_url(gateway)) as ws:
        challenge = await receive(ws)
        assert challenge["event"] == "connect.challenge"
        await request(ws, "c", "connect", {"auth": {"token": token}, "client": {"name": "t"}})
        reply = await response(ws, "c")
        assert reply["ok"], reply
        yield ws


async def test_control_handshake_lists_methods_on_both_paths(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    for path in ("/", "/ws"):
        async with open_websocket_url(ws_url(gateway, path)) as ws:
            challenge = await receive(ws)
            assert challenge["seq"] == 1
            assert len(challenge["payload"]["nonce"]) >= 16
            await request(
                ws,
                "1",
                "connect",
                {
                    "minProtocol": 1,
                    "maxProtocol": 1,
                    "client": {"name": "test", "version": "1"},
                    "auth": {"token": TOKEN},
                },
            )
            reply = await response(ws, "1")
            assert reply["ok"]
            assert reply["payload"]["protocol"] == 1
            assert "agent.abort" in reply["payload"]["methods"]
            assert reply["payload"]["events"] == ["connect.challenge", "tick", "agent"]


@pytest.mark.parametrize(
    ("frame", "code", "error_code"),
    [
        ({"method": "connect", "params": {"auth": {"token": "wrong"}}}, 4001, "auth_failed"),
        ({"method": "connect", "params": {}}, 4001, "auth_failed"),
        ({"method": "health"}, 4004, "connect_required"),
        (
            {"method": "connect", "params": {"minProtocol": 2, "maxProtocol": 3}},
            4003,
            "protocol_mismatch",
        ),
    ],
)
async def test_control_handshake_failures_close_with_a_clear_code(
    nursery: trio.Nursery, frame: dict[str, Any], code: int, error_code: str
) -> None:
    gateway = await start_gateway(nursery)
    async with open_websocket_url(ws_url(gateway)) as ws:
        await receive(ws)
        await ws.send_message(json.dumps({"type": "req", "id": "1", **frame}))
        reply = await response(ws, "1")
        assert reply["ok"] is False
        assert reply["error"]["code"] == error_code
        assert (await closed_with(ws))[0] == code


async def test_control_failed_auth_through_a_proxy_forwarding_loopback_is_limited(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(
        nursery,
        {
            "gateway": {
                "trustedProxies": ["127.0.0.1"],
                "auth": {"rateLimit": {"maxFailures": 2, "windowSeconds": 60}},
            }
        },
    )
    codes = []
    for attempt in range(3):
        async with open_websocket_url(
            ws_url(gateway), extra_headers=[(b"X-Forwarded-For", b"127.0.0.1")]
        ) as ws:
            await receive(ws)
            auth = {"auth": {"token": f"wrong-{attempt}"}, "client": {"name": "t"}}
            await request(ws, "c", "connect", auth)
            codes.append((await response(ws, "c"))["error"]["code"])
            assert (await closed_with(ws))[0] == 4001
    assert codes == ["auth_failed", "auth_failed", "too_many_auth_failures"]


async def test_control_silent_client_is_closed_after_the_handshake_deadline(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery, {"gateway": {"ws": {"handshakeTimeoutSeconds": 0.2}}})
    async with open_websocket_url(ws_url(gateway)) as ws:
        await receive(ws)
        assert await closed_with(ws) == (4002, "handshake_timeout")


async def test_control_pre_auth_frames_are_small_bounded(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, {"gateway": {"ws": {"maxPreAuthFrameBytes": 1024}}})
    async with open_websocket_url(ws_url(gateway)) as ws:
        await receive(ws)
        await ws.send_message("x" * 2000)
        # The whole frame arrived at once: hypercorn's close (no reason) may go out first.
        assert (await closed_with(ws))[0] == 1009


async def test_control_oversized_frame_after_auth_closes_1009(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, {"gateway": {"ws": {"maxFrameBytes": 4096}}})
    async with connected(gateway) as ws:
        await request(ws, "1", "agent", {"message": "x" * 5000})
        assert (await closed_with(ws))[0] == 1009


async def _raw_upgrade(
    gateway: RunningGateway, extensions: Sequence[Extension] = ()
) -> tuple[trio.SocketStream, WSConnection, AcceptConnection]:
    """A WebSocket upgrade by hand (wsproto), so the test can write frames byte by byte."""
    host, port = gateway.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    client = WSConnection(ConnectionType.CLIENT)
    request = Request(host=f"{host}:{port}", target="/ws", extensions=list(extensions))
    await stream.send_all(client.send(request))
    while True:
        client.receive_data(await stream.receive_some(65536) or None)
        for event in client.events():
            if isinstance(event, AcceptConnection):
                return stream, client, event


def _unfinished_text_frame_header(size: int) -> bytes:
    """The head of one final, masked text frame announcing ``size`` payload bytes (RFC 6455
    5.2). The mask is all zeros, so the payload that follows goes out as it is."""
    return bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big") + bytes(4)


async def test_control_pre_auth_frame_is_refused_while_it_arrives(nursery: trio.Nursery) -> None:
    announced, sent = 4 * 1024 * 1024, 16 * 1024
    gateway = await start_gateway(
        nursery,
        {
            "gateway": {
                "ws": {
                    "maxPreAuthFrameBytes": 4096,
                    "maxFrameBytes": 8 * 1024 * 1024,
                    # Far beyond BOUND: only the frame limit can close this connection in time.
                    "handshakeTimeoutSeconds": 600,
                }
            }
        },
    )
    with trio.fail_after(BOUND):
        stream, client, _ = await _raw_upgrade(gateway)
        async with stream:
            # A 4 MiB frame of which only 16 KiB ever arrive: the client is still sending it.
            await stream.send_all(_unfinished_text_frame_header(announced) + b"x" * sent)
            close: CloseConnection | None = None
            while data := await stream.receive_some(65536):
                client.receive_data(data)
                for event in client.events():
                    if isinstance(event, CloseConnection):
                        close = event
    # Closed with 1009 while the frame was far from complete, and the connection ended (EOF).
    assert close is not None
    assert (close.code, close.reason) == (1009, "frame_too_large")


async def test_control_declines_compression(nursery: trio.Nursery) -> None:
    # Inflating happens before any size check: a compressed frame could expand about 1,000
    # times per read, before authentication. The gateway does not accept permessage-deflate.
    gateway = await start_gateway(nursery)
    with trio.fail_after(BOUND):
        stream, _, accepted = await _raw_upgrade(gateway, [PerMessageDeflate()])
        async with stream:
            assert accepted.extensions == []


async def test_control_connected_client_may_send_frames_up_to_max_frame_bytes(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(
        nursery, {"gateway": {"ws": {"maxPreAuthFrameBytes": 1024, "maxFrameBytes": 512 * 1024}}}
    )
    async with connected(gateway) as ws:
        await request(ws, "big", "health", {"padding": "x" * (400 * 1024)})
        reply = await response(ws, "big")
        assert reply["ok"], reply


async def _refusal(gateway: RunningGateway) -> ConnectionRejected:
    with trio.fail_after(BOUND), pytest.raises(ConnectionRejected) as refused:
        async with open_websocket_url(ws_url(gateway)):
            pass
    return refused.value


async def test_control_unauthenticated_connections_beyond_the_cap_are_refused(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(
        nursery, {"gateway": {"ws": {"maxUnauthenticatedConnections": 2}}}
    )
    async with open_websocket_url(ws_url(gateway)) as first:
        await receive(first)
        async with open_websocket_url(ws_url(gateway)) as second:
            await receive(second)
            refused = await _refusal(gateway)
            assert refused.status_code == 503
            assert (b"retry-after", b"1") in refused.headers
            assert refused.body is not None
            error = json.loads(refused.body)["error"]
            assert error["code"] == "too_many_unauthenticated"
            assert "maxUnauthenticatedConnections" in error["message"]
            # Once one of them authenticates, it no longer holds a place.
            await request(second, "c", "connect", {"auth": {"token": TOKEN}})
            assert (await response(second, "c"))["ok"]
            async with connected(gateway) as third:
                await request(third, "h", "health")
                assert (await response(third, "h"))["ok"]


async def test_control_idle_unauthenticated_connection_is_closed_and_frees_its_place(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(
        nursery,
        {"gateway": {"ws": {"maxUnauthenticatedConnections": 1, "handshakeTimeoutSeconds": 0.5}}},
    )
    async with open_websocket_url(ws_url(gateway)) as idle:
        await receive(idle)
        assert (await _refusal(gateway)).status_code == 503
        assert await closed_with(idle) == (4002, "handshake_timeout")
    async with connected(gateway) as ws:
        await request(ws, "h", "health")
        assert (await response(ws, "h"))["ok"]


@pytest.mark.parametrize(
    ("payload", "code"), [(b"\x00\x01", 1003), (b"", 1003), ("not json", 1007)]
)
async def test_control_bad_frames_close_the_connection(
    nursery: trio.Nursery, payload: str | bytes, code: int
) -> None:
    gateway = await start_gateway(nursery)
    async with connected(gateway) as ws:
        await ws.send_message(payload)
        assert (await closed_with(ws))[0] == code


async def test_control_simple_methods(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    async with connected(gateway) as ws:
        await request(ws, "h", "health")
        assert (await response(ws, "h"))["payload"]["ok"] is True
        await request(ws, "a", "agents.list")
        agents = (await response(ws, "a"))["payload"]["agents"]
        assert [(a["id"], a["default"]) for a in agents] == [("main", True), ("helper", False)]
        await request(ws, "m", "models.list")
        models = (await response(ws, "m"))["payload"]["models"]
        assert models == [{"id": "epiloop:main"}, {"id": "epiloop:helper"}]
        await request(ws, "c", "config.get")
        config = (await response(ws, "c"))["payload"]
        assert config["gateway"]["auth"]["token"] == "<redacted>"
        assert TOKEN not in json.dumps(config)
        await request(ws, "x", "nonsense")
        unknown = await response(ws, "x")
        assert unknown["error"]["code"] == "unknown_method"
        await request(ws, "p", "sessions.get", {"nope": 1})
        assert (await response(ws, "p"))["error"]["code"] == "invalid_params"


async def test_control_agent_streams_events_then_the_result(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    async with connected(gateway) as ws:
        await request(ws, "r", "agent", {"message": "hello control plane"})
        accepted = await receive(ws)
        assert accepted["id"] == "r"
        assert accepted["payload"]["status"] == "accepted"
        run_id = accepted["payload"]["runId"]
        events: list[dict[str, Any]] = []
        while True:
            frame = await receive(ws)
            if frame["type"] == "res":
                final = frame
                break
            events.append(frame)
        assert final["id"] == "r"
        assert final["payload"]["status"] == "completed"
        assert final["payload"]["text"] == "hello control plane"
        assert final["payload"]["runId"] == run_id
        payloads = [e["payload"] for e in events if e["event"] == "agent"]
        assert [p["seq"] for p in payloads] == list(range(1, len(payloads) + 1))
        assert payloads[0]["data"]["phase"] == "start"
        assert payloads[-1]["data"]["phase"] == "end"
        text = "".join(p["data"]["delta"] for p in payloads if p["stream"] == "assistant")
        assert text == "hello control plane"
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)
        await request(ws, "s", "sessions.get", {"key": "agent:main:main"})
        session = (await response(ws, "s"))["payload"]
        assert [t["content"] for t in session["transcript"]] == ["hello control plane"] * 2


async def test_control_sessions_list_reset_delete(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    async with connected(gateway) as ws:
        await request(ws, "r", "agent", {"message": "one", "sessionKey": "k1"})
        await response(ws, "r")
        final = await response(ws, "r")
        assert final["payload"]["status"] == "completed"
        await request(ws, "l", "sessions.list")
        listed = (await response(ws, "l"))["payload"]["sessions"]
        assert [(s["key"], s["messageCount"]) for s in listed] == [("k1", 2)]
        await request(ws, "reset", "sessions.reset", {"key": "k1"})
        assert (await response(ws, "reset"))["payload"] == {"reset": True}
        await request(ws, "g", "sessions.get", {"key": "k1"})
        assert (await response(ws, "g"))["payload"]["transcript"] == []
        await request(ws, "d", "sessions.delete", {"key": "k1"})
        assert (await response(ws, "d"))["payload"] == {"deleted": True}
        await request(ws, "g2", "sessions.get", {"key": "k1"})
        assert (await response(ws, "g2"))["error"]["code"] == "not_found"


async def test_control_unknown_agent_is_refused_before_the_run(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    async with connected(gateway) as ws:
        await request(ws, "r", "agent", {"message": "x", "agentId": "ghost"})
        reply = await response(ws, "r")
        assert reply["ok"] is False
        assert reply["error"]["code"] == "model_not_found"


async def test_control_agent_refuses_a_session_key_naming_another_agent(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery)
    async with connected(gateway) as ws:
        await request(ws, "r", "agent", {"message": "x", "sessionKey": "agent:helper:main"})
        reply = await response(ws, "r")
        assert reply["ok"] is False
        assert reply["error"]["code"] == "session_agent_mismatch"
        assert "agent 'helper'" in reply["error"]["message"]
        params = {"message": "x", "agentId": "helper", "sessionKey": "agent:main:x"}
        await request(ws, "h", "agent", params)
        assert (await response(ws, "h"))["error"]["code"] == "session_agent_mismatch"
        await request(ws, "ok", "agent", {**params, "sessionKey": "agent:helper:x"})
        assert (await response(ws, "ok"))["ok"] is True
    assert await gateway.runtime.sessions.get("agent:helper:main") is None
    assert await gateway.runtime.sessions.get("agent:main:x") is None


async def test_control_aborts_a_run_started_over_http(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("partial"), Hang()])
    gateway = await start_gateway(nursery, providers={"local": provider})
    lines: list[str] = []
    async with (
        httpx.AsyncClient() as http,
        http.stream(
            "POST",
            f"{gateway.api_url}/chat/completions",
            json={"stream": True, "messages": [{"role": "user", "content": "x"}]},
            headers={**gateway.headers, "x-epiloop-session-key": "http-run"},
        ) as stream,
    ):
        run_id = None
        async with connected(gateway) as ws:
            async for line in stream.aiter_lines():
                lines.append(line)
                if '"partial"' in line:
                    run_id = json.loads(line[6:])["id"]
                    await request(ws, "a", "agent.abort", {"runId": run_id})
                    assert (await response(ws, "a"))["payload"] == {"aborted": [run_id]}
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "run_aborted"
    assert not any(line == "data: [DONE]" for line in lines)
    assert provider.calls[0].outcome == "cancelled"
    session = await gateway.runtime.sessions.get("http-run")
    assert session is not None
    assert session.last_status == "aborted"


async def test_control_abort_by_session_key_and_agent_wait(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("a"), Hang()])
    gateway = await start_gateway(nursery, providers={"local": provider})
    async with connected(gateway) as runner, connected(gateway) as observer:
        await request(runner, "r", "agent", {"message": "x", "sessionKey": "s9"})
        run_id = (await response(runner, "r"))["payload"]["runId"]
        await request(observer, "w", "agent.wait", {"runId": run_id})
        with trio.fail_after(BOUND):
            await provider.call_started.wait()
        await request(observer, "a", "agent.abort", {"sessionKey": "s9"})
        assert (await response(observer, "a"))["payload"] == {"aborted": [run_id]}
        waited = (await response(observer, "w"))["payload"]
        final = (await response(runner, "r"))["payload"]
    assert waited["status"] == final["status"] == "aborted"
    assert final["error"]["code"] == "run_aborted"


async def test_control_agent_wait_after_http_runs_gets_their_outcome_not_their_text(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery)
    big = " ".join(["word"] * 50_000)
    async with httpx.AsyncClient(timeout=BOUND) as http:
        run_ids = []
        for _ in range(5):  # a burst of large stateless replies
            answer = await http.post(
                f"{gateway.api_url}/chat/completions",
                json={"messages": [{"role": "user", "content": big}]},
                headers=gateway.headers,
            )
            assert answer.json()["choices"][0]["message"]["content"] == big
            run_ids.append(answer.json()["id"])
    kept = gateway.runtime.active_runs.statistics()
    assert kept.results == 5
    assert kept.held_bytes < 5 * 1024  # their clients have the text; the gateway keeps none of it
    async with connected(gateway) as ws:
        await request(ws, "w", "agent.wait", {"runId": run_ids[0]})
        waited = (await response(ws, "w"))["payload"]
        await request(ws, "r", "agent", {"message": "kept for agent.wait"})
        run_id = (await response(ws, "r"))["payload"]["runId"]
        assert (await response(ws, "r"))["payload"]["status"] == "completed"
        await request(ws, "w2", "agent.wait", {"runId": run_id})
        waited_ws = (await response(ws, "w2"))["payload"]
    assert waited["status"] == "completed"
    assert waited["stopReason"] == "stop"
    assert (waited["text"], waited["textDropped"]) == ("", True)
    assert waited_ws["text"] == "kept for agent.wait"
    assert "textDropped" not in waited_ws


async def test_control_idempotent_retry_attaches_to_the_same_run(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("one "), Pause(0.3), Say("two")])
    gateway = await start_gateway(nursery, providers={"local": provider})
    params = {"message": "x", "idempotencyKey": "job-1", "detached": True}
    async with connected(gateway) as first:
        await request(first, "r", "agent", params)
        run_id = (await response(first, "r"))["payload"]["runId"]
    # The first socket is gone; the detached run goes on. A retry attaches to it.
    async with connected(gateway) as retry:
        await request(retry, "r2", "agent", params)
        accepted = await response(retry, "r2")
        assert accepted["payload"] == {"status": "accepted", "runId": run_id}
        final = (await response(retry, "r2"))["payload"]
    assert final["status"] == "completed"
    assert final["text"] == "one two"
    assert len(provider.calls) == 1
    async with connected(gateway) as late:
        await request(late, "r3", "agent", params)
        await response(late, "r3")
        assert (await response(late, "r3"))["payload"]["text"] == "one two"
    assert len(provider.calls) == 1


async def test_control_disconnect_cancels_the_connections_runs(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("so far"), Hang()])
    gateway = await start_gateway(nursery, providers={"local": provider})
    async with connected(gateway) as ws:
        await request(ws, "r", "agent", {"message": "x", "sessionKey": "gone"})
        await response(ws, "r")
        with trio.fail_after(BOUND):
            await provider.call_started.wait()
    with trio.fail_after(BOUND):
        await provider.call_ended.wait()
    assert provider.calls[0].outcome == "cancelled"
    with trio.fail_after(BOUND):
        while (session := await gateway.runtime.sessions.get("gone")) is None:
            await trio.sleep(0.01)
    assert session.last_status == "aborted"


async def test_control_status_lists_live_runs(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("abc"), Hang()])
    gateway = await start_gateway(nursery, providers={"local": provider})
    async with connected(gateway) as ws:
        await request(ws, "r", "agent", {"message": "x"})
        run_id = (await response(ws, "r"))["payload"]["runId"]
        with trio.fail_after(BOUND):
            await provider.call_started.wait()
            while True:
                await request(ws, "s", "status")
                status = (await response(ws, "s"))["payload"]
                if status["runs"] and status["runs"][0]["textChars"] == 3:
                    break
        run = status["runs"][0]
        assert (run["runId"], run["agentId"], run["source"]) == (run_id, "main", "ws")
        assert status["admission"]["running"] == 1


async def test_control_slow_reader_is_disconnected_not_buffered(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("x" * 20_000)] * 2000)  # 40 MB if nothing pushed back
    gateway = await start_gateway(
        nursery, {"gateway": {"ws": {"sendQueueFrames": 8}}}, providers={"local": provider}
    )
    async with connected(gateway) as ws:
        await request(ws, "r", "agent", {"message": "flood", "sessionKey": "flood"})
        # Stop reading: the gateway's queue for this client fills up.
        with trio.fail_after(BOUND):
            await provider.call_ended.wait()
        assert provider.calls[0].outcome == "cancelled"
        assert len(provider.calls[0].emitted) < 2000
        code, reason = await closed_with(ws)
    assert (code, reason) == (4008, "slow_consumer")


async def test_control_sends_ticks(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, {"gateway": {"ws": {"tickSeconds": 0.05}}})
    async with connected(gateway) as ws:
        frame = await receive(ws)
        assert frame["event"] == "tick"
        assert isinstance(frame["payload"]["ts"], int)


async def test_control_token_rotation_closes_connections_made_with_the_old_token(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery)
    runtime = gateway.runtime
    async with connected(gateway) as old, connected(gateway) as kept:
        # A reload that keeps the credential leaves connections alone.
        runtime.reload(make_config({"agents": {"list": [{"id": "main"}]}}))
        await request(kept, "h", "health")
        assert (await response(kept, "h"))["ok"]
        runtime.reload(make_config({"gateway": {"auth": {"token": "rotated-token-0123"}}}))
        assert await closed_with(old) == (4001, "credentials_changed")
        assert await closed_with(kept) == (4001, "credentials_changed")
    async with connected(gateway, token="rotated-token-0123") as new:
        await request(new, "h", "health")
        assert (await response(new, "h"))["ok"]
    async with open_websocket_url(ws_url(gateway)) as ws:
        await receive(ws)
        await request(ws, "c", "connect", {"auth": {"token": TOKEN}})
        assert (await response(ws, "c"))["error"]["code"] == "auth_failed"


async def test_control_file_credential_may_only_reload(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    gateway = await start_gateway(nursery, config_path=tmp_path / "epiloop.json")
    runtime = gateway.runtime
    (tmp_path / "epiloop.json").write_text('{ gateway: { auth: { token: "from-the-file-0123" } } }')
    async with connected(gateway, token="from-the-file-0123") as ws:
        await request(ws, "s", "status")
        refused = await response(ws, "s")
        assert refused["error"]["code"] == "reload_only"
        await request(ws, "r", "config.reload")
        assert (await response(ws, "r"))["ok"]
    assert runtime.config.gateway.auth.token == "from-the-file-0123"


@pytest.mark.parametrize("trusted", [[], ["127.0.0.1"]])
async def test_control_file_credential_is_refused_to_a_forwarded_request(
    nursery: trio.Nursery, tmp_path: Path, trusted: list[str]
) -> None:
    """A request a proxy forwards proves nothing about where its client is, even when the
    forwarded address is loopback: only a direct loopback peer may use the file's credential."""
    config_path = tmp_path / "epiloop.json"
    gateway = await start_gateway(
        nursery, {"gateway": {"trustedProxies": trusted}}, config_path=config_path
    )
    config_path.write_text('{ gateway: { auth: { token: "from-the-file-0123" } } }')
    async with open_websocket_url(
        ws_url(gateway), extra_headers=[(b"X-Forwarded-For", b"127.0.0.1")]
    ) as ws:
        await receive(ws)
        auth = {"auth": {"token": "from-the-file-0123"}, "client": {"name": "t"}}
        await request(ws, "c", "connect", auth)
        assert (await response(ws, "c"))["error"]["code"] == "auth_failed"
        assert (await closed_with(ws))[0] == 4001
    assert gateway.runtime.config.gateway.auth.token != "from-the-file-0123"
