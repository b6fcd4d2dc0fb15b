"""The control-plane client against a real gateway served in-process on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from gateway_harness import TOKEN, RunningGateway, start_gateway
from trio_websocket import CloseReason

from benchmarks.scripted_provider import Fail, Hang, Say, ScriptedProvider
from trio_gateway.control_client import (
    AUTH_FAILED,
    GATEWAY_UNREACHABLE,
    ControlClient,
    ControlError,
    EventFrame,
    ResponseFrame,
    closed_error,
    is_auth_failure,
    open_control_client,
    parse_frame,
)
from trio_gateway.errors import ControlPlaneError, GatewayError, UpstreamError

BOUND = 10  # seconds: every test step is bounded


def ws_url(gateway: RunningGateway) -> str:
    return gateway.url.replace("http://", "ws://") + "/ws"


def data_of(event: dict[str, object]) -> dict[str, object]:
    data = event["data"]
    assert isinstance(data, dict)
    return data


def strings(payload: dict[str, object], key: str) -> list[dict[str, Any]]:
    items = payload[key]
    assert isinstance(items, list)
    return items


# -- frames, without an event loop -----------------------------------------------------------


def test_parse_frame_reads_responses_and_events() -> None:
    response = parse_frame('{"type": "res", "id": "7", "ok": true, "payload": {"a": 1}}')
    assert isinstance(response, ResponseFrame)
    assert response.unwrap() == {"a": 1}
    event = parse_frame('{"type": "event", "event": "tick", "payload": {"ts": 1}, "seq": 4}')
    assert event == EventFrame(event="tick", payload={"ts": 1}, seq=4)


def test_parse_frame_refuses_what_is_not_a_response_or_event() -> None:
    for bad in ("not json", '{"type": "req", "id": "1", "method": "x"}', b"{}"):
        with pytest.raises(ControlPlaneError) as caught:
            parse_frame(bad)
        assert caught.value.code == "bad_frame"


def test_response_frame_unwrap_raises_the_gateways_error() -> None:
    frame = parse_frame(
        '{"type": "res", "id": "3", "ok": false, "error": {"code": "gateway_overloaded", '
        '"message": "too busy", "retryable": true, "retryAfterMs": 1500}}'
    )
    assert isinstance(frame, ResponseFrame)
    with pytest.raises(ControlError) as caught:
        frame.unwrap()
    error = caught.value
    assert isinstance(error, GatewayError)
    assert (error.code, error.message, error.retryable) == ("gateway_overloaded", "too busy", True)
    assert error.retry_after_ms == 1500
    assert error.retry_after == 1.5


def test_closed_error_names_the_close_code_and_reason() -> None:
    error = closed_error(CloseReason(4008, "slow_consumer"), url="ws://127.0.0.1:1/ws")
    assert (error.code, error.close_code, error.close_reason) == (
        "slow_consumer",
        4008,
        "slow_consumer",
    )
    assert "4008 slow_consumer" in error.message
    assert "read too slowly" in error.message
    assert is_auth_failure(closed_error(CloseReason(4001, "auth_failed"), url="ws://x/ws"))
    lost = closed_error(None, url="ws://x/ws")
    assert (lost.code, lost.close_code) == ("connection_lost", 1006)


# -- against a gateway -----------------------------------------------------------------------


async def test_control_client_handshake_reports_the_gateway(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    with trio.fail_after(BOUND):
        async with open_control_client(ws_url(gateway), token=TOKEN) as client:
            assert client.hello["protocol"] == 1
            methods = client.hello["methods"]
            assert isinstance(methods, list)
            assert {"agent", "agent.abort", "sessions.get"} <= set(methods)
            assert client.statistics().last_event_seq >= 1
            assert client.statistics().lost_events == 0


@pytest.mark.parametrize("token", ["wrong-token", None])
async def test_control_client_refused_credentials_raise_auth_failed(
    nursery: trio.Nursery, token: str | None
) -> None:
    gateway = await start_gateway(nursery)
    with trio.fail_after(BOUND), pytest.raises(ControlPlaneError) as caught:
        async with open_control_client(ws_url(gateway), token=token):
            pytest.fail("connected with bad credentials")
    assert caught.value.code == AUTH_FAILED
    assert is_auth_failure(caught.value)


async def test_control_client_unreachable_gateway(nursery: trio.Nursery) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()  # nothing listens there any more
    with trio.fail_after(BOUND), pytest.raises(ControlPlaneError) as caught:
        async with open_control_client(f"ws://127.0.0.1:{port}/ws", token=TOKEN):
            pytest.fail("connected to nothing")
    assert caught.value.code == GATEWAY_UNREACHABLE
    assert f"127.0.0.1:{port}" in caught.value.message


async def test_control_client_methods(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    with trio.fail_after(BOUND):
        async with open_control_client(ws_url(gateway), token=TOKEN) as client:
            health = await client.request("health")
            assert health["ok"] is True
            status = await client.request("status")
            assert status["runs"] == []
            assert status["admission"] == {
                "running": 0,
                "queued": 0,
                "busySessions": 0,
                "waitingForSession": 0,
            }
            agents = strings(await client.request("agents.list"), "agents")
            assert [(a["id"], a["default"]) for a in agents] == [("main", True), ("helper", False)]
            models = strings(await client.request("models.list"), "models")
            assert {m["id"] for m in models} == {"epiloop:main", "epiloop:helper"}
            config = await client.request("config.get")
            assert TOKEN not in repr(config)

            result = await client.run_agent("remember me", session_key="cli:test")
            assert result["status"] == "completed"
            waited = await client.request("agent.wait", {"runId": result["runId"]})
            assert waited["text"] == "remember me"

            listed = strings(await client.request("sessions.list"), "sessions")
            assert [s["key"] for s in listed] == ["cli:test"]
            session = await client.request("sessions.get", {"key": "cli:test"})
            transcript = strings(session, "transcript")
            assert [(e["role"], e["content"]) for e in transcript] == [
                ("user", "remember me"),
                ("assistant", "remember me"),
            ]
            assert await client.request("sessions.reset", {"key": "cli:test"}) == {"reset": True}
            session = await client.request("sessions.get", {"key": "cli:test"})
            assert session["transcript"] == []
            assert await client.request("sessions.delete", {"key": "cli:test"}) == {"deleted": True}
            with pytest.raises(ControlPlaneError) as caught:
                await client.request("sessions.get", {"key": "cli:test"})
            assert caught.value.code == "not_found"


async def test_control_client_errors_leave_the_connection_usable(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    with trio.fail_after(BOUND):
        async with open_control_client(ws_url(gateway), token=TOKEN) as client:
            with pytest.raises(ControlPlaneError) as caught:
                await client.request("no.such.method")
            assert caught.value.code == "unknown_method"
            with pytest.raises(ControlPlaneError) as caught:
                await client.request("sessions.get", {"wrong": 1})
            assert caught.value.code == "invalid_params"
            with pytest.raises(ControlPlaneError) as caught:
                await client.run_agent("hi", agent_id="nobody")
            assert caught.value.code == "model_not_found"
            assert (await client.request("health"))["ok"] is True


async def test_control_client_run_agent_streams_events_then_the_result(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery)
    events: list[dict[str, object]] = []
    with trio.fail_after(BOUND):
        async with open_control_client(ws_url(gateway), token=TOKEN) as client:
            result = await client.run_agent(
                "one two three", agent_id="helper", on_event=events.append
            )
    assert result["status"] == "completed"
    assert result["text"] == "one two three"
    assert result["stopReason"] == "stop"
    assert {event["runId"] for event in events} == {result["runId"]}
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    streams = [(event["stream"], data_of(event)) for event in events]
    assert streams[0] == (
        "lifecycle",
        {
            "phase": "start",
            "agentId": "helper",
            "sessionKey": "agent:helper:main",
            "model": "local/echo",
        },
    )
    assert "".join(str(data["delta"]) for stream, data in streams if stream == "assistant") == (
        "one two three"
    )
    assert streams[-1][0] == "lifecycle"
    assert streams[-1][1]["phase"] == "end"


async def test_control_client_run_agent_awaits_an_async_event_handler(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery)
    seen: list[object] = []

    async def on_event(payload: dict[str, object]) -> None:
        await trio.lowlevel.checkpoint()
        seen.append(payload["stream"])

    with trio.fail_after(BOUND):
        async with open_control_client(ws_url(gateway), token=TOKEN) as client:
            result = await client.run_agent("a b", on_event=on_event)
    assert result["status"] == "completed"
    assert seen[0] == "lifecycle"
    assert seen.count("assistant") == 2


async def test_control_client_failed_run_is_a_result_not_an_error(
    nursery: trio.Nursery,
) -> None:
    provider = ScriptedProvider([Say("partial"), Fail(UpstreamError("upstream broke", status=500))])
    gateway = await start_gateway(nursery, providers={"local": provider})
    with trio.fail_after(BOUND):
        async with open_control_client(ws_url(gateway), token=TOKEN) as client:
            result = await client.run_agent("x")
    assert result["status"] == "failed"
    error = result["error"]
    assert isinstance(error, dict)
    assert error["message"] == "upstream broke"


async def test_control_client_idempotent_retry_follows_the_same_run(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery)
    with trio.fail_after(BOUND):
        async with open_control_client(ws_url(gateway), token=TOKEN) as client:
            first = await client.run_agent("once only", idempotency_key="k-1")
            again = await client.run_agent("once only", idempotency_key="k-1")
    assert again["runId"] == first["runId"]
    assert again["text"] == "once only"


async def test_control_client_cancelled_run_agent_aborts_the_run(
    nursery: trio.Nursery,
) -> None:
    provider = ScriptedProvider([Say("first"), Hang()])
    gateway = await start_gateway(nursery, providers={"local": provider})
    with trio.fail_after(BOUND):
        async with open_control_client(ws_url(gateway), token=TOKEN) as client:
            with trio.CancelScope() as scope:

                def on_event(payload: dict[str, object]) -> None:
                    if payload["stream"] == "assistant":
                        scope.cancel(reason="the test saw the first words")

                await client.run_agent("x", session_key="abort-me", on_event=on_event)
            assert scope.cancelled_caught
            # The connection is still open: agent.abort (not a disconnect) stopped the run.
            await provider.call_ended.wait()
            assert provider.calls[0].outcome == "cancelled"
            session = await client.request("sessions.get", {"key": "abort-me"})
            assert strings(session, "transcript")[-1]["status"] == "aborted"
            assert (await client.request("status"))["runs"] == []


async def test_control_client_reports_the_close_code_when_the_gateway_closes(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery, {"gateway": {"ws": {"maxFrameBytes": 1024}}})
    with trio.fail_after(BOUND):
        async with open_control_client(ws_url(gateway), token=TOKEN) as client:
            with pytest.raises(ControlPlaneError) as caught:
                await client.run_agent("x" * 4096)
            error = caught.value
            assert (error.code, error.close_code) == ("frame_too_large", 1009)
            assert "1009" in error.message
            with pytest.raises(ControlPlaneError) as again:
                await client.request("health")  # the client knows it is closed
            assert again.value.close_code == 1009


async def test_control_client_gateway_shutdown_ends_a_waiting_run(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("first"), Hang()])

    async def serve(
        *, task_status: trio.TaskStatus[tuple[RunningGateway, trio.CancelScope]]
    ) -> None:
        async with trio.open_nursery() as own:
            task_status.started(
                (await start_gateway(own, providers={"local": provider}), own.cancel_scope)
            )

    gateway, gateway_scope = await nursery.start(serve)

    async def stop_gateway() -> None:
        await provider.call_started.wait()
        gateway_scope.cancel(reason="the test stops the gateway")

    with trio.fail_after(BOUND):
        async with open_control_client(ws_url(gateway), token=TOKEN) as client:
            nursery.start_soon(stop_gateway)
            with pytest.raises(ControlPlaneError) as caught:
                await client.run_agent("x")
    assert caught.value.close_code is not None
    assert str(caught.value.close_code) in caught.value.message


async def test_control_client_concurrent_requests_are_matched_by_id(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery)
    results: dict[str, dict[str, object]] = {}

    async def run(client: ControlClient, word: str) -> None:
        results[word] = await client.run_agent(word, session_key=f"s-{word}")

    with trio.fail_after(BOUND):
        async with (
            open_control_client(ws_url(gateway), token=TOKEN) as client,
            trio.open_nursery() as runs,
        ):
            for word in ("alpha", "beta", "gamma"):
                runs.start_soon(run, client, word)
            runs.start_soon(client.request, "health")
    assert {word: result["text"] for word, result in results.items()} == {
        "alpha": "alpha",
        "beta": "beta",
        "gamma": "gamma",
    }


async def test_control_client_ticks_count_as_events_without_gaps(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, {"gateway": {"ws": {"tickSeconds": 0.05}}})
    with trio.fail_after(BOUND):
        async with open_control_client(ws_url(gateway), token=TOKEN) as client:
            while client.statistics().last_event_seq < 4:  # the challenge, then ticks
                await trio.sleep(0.05)
            assert (await client.run_agent("still works"))["text"] == "still works"
            assert client.statistics().lost_events == 0
            assert client.statistics().waiting_requests == 0
