"""Agents on real upstream protocols (a mock upstream on 127.0.0.1), through the openai SDK.

Server-side tool use, client tool calls, sessions that survive a restart, per-session
serialization and the admission limits; every upstream fault checks both what the client sees
and what the session store recorded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
from gateway_harness import TOKEN, RunningGateway, merge, start_gateway

from benchmarks.mock_upstream import MockUpstream, Scenario
from trio_gateway.sessions import MemorySessionStore, SessionStore, open_sqlite_store

BOUND = 10


async def start_mock(nursery: trio.Nursery, scenarios: dict[str, Any]) -> MockUpstream:
    mock = MockUpstream(scenarios)
    await nursery.start(mock.serve)
    return mock


async def start_upstream_gateway(
    nursery: trio.Nursery,
    mock: MockUpstream,
    override: dict[str, Any] | None = None,
    *,
    sessions: SessionStore | None = None,
    state_dir: Path | None = None,
) -> RunningGateway:
    base: dict[str, Any] = {
        "models": {
            "providers": {
                "up": {
                    "api": "openai-chat",
                    "baseUrl": mock.openai_base_url,
                    "apiKey": "sk-upstream",
                    "maxRetries": 0,
                    "retryDelaySeconds": 0.01,
                },
                "an": {
                    "api": "anthropic-messages",
                    "baseUrl": mock.anthropic_base_url,
                    "apiKey": "sk-ant",
                },
            }
        },
        "agents": {"defaults": {"model": "up/gpt-test"}},
    }
    return await start_gateway(
        nursery, merge(base, override or {}), sessions=sessions, state_dir=state_dir
    )


def client(gateway: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.api_url, api_key=TOKEN, max_retries=0)


def user(text: str) -> Any:
    return {"role": "user", "content": text}


def sent(mock: MockUpstream, index: int) -> Any:
    """The JSON body of the ``index``-th request the upstream received."""
    return mock.requests[index].json


async def test_runtime_openai_upstream_streams_through_the_gateway(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery, {"gpt-test": Scenario(tokens=["Hi", " there"], usage=(11, 2))})
    gateway = await start_upstream_gateway(nursery, mock)
    async with client(gateway) as sdk:
        stream = await sdk.chat.completions.create(
            model="epiloop:main",
            messages=[user("hello")],
            stream=True,
            stream_options={"include_usage": True},
            temperature=0.3,
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hi there"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (11, 2)
    sent = mock.requests[0]
    assert sent.headers["authorization"] == "Bearer sk-upstream"
    body = sent.json
    assert body["model"] == "gpt-test"
    assert body["temperature"] == 0.3
    assert body["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "hello"},
    ]


async def test_runtime_anthropic_upstream_answers_with_reasoning(nursery: trio.Nursery) -> None:
    mock = await start_mock(
        nursery, {"claude-test": Scenario(tokens=["Bonjour"], reasoning=["thinking..."])}
    )
    gateway = await start_upstream_gateway(
        nursery, mock, {"agents": {"list": [{"id": "main", "model": "an/claude-test"}]}}
    )
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{gateway.api_url}/chat/completions",
            json={"messages": [user("salut")]},
            headers=gateway.headers,
        )
    message = response.json()["choices"][0]["message"]
    assert message["content"] == "Bonjour"
    assert message["reasoning_content"] == "thinking..."
    assert mock.requests[0].path == "/v1/messages"
    assert mock.requests[0].headers["x-api-key"] == "sk-ant"


async def test_runtime_runs_agent_tools_and_answers(nursery: trio.Nursery, tmp_path: Path) -> None:
    mock = await start_mock(
        nursery,
        {
            "gpt-test": [
                Scenario(
                    tokens=[],
                    tool_calls=[
                        ("call_1", "current_time", '{"timezone": "UTC"}'),
                        ("call_2", "write_file", '{"path": "note.txt", "content": "hi"}'),
                    ],
                    usage=(10, 3),
                ),
                Scenario(tokens=["Done."], usage=(20, 1)),
            ]
        },
    )
    gateway = await start_upstream_gateway(nursery, mock, state_dir=tmp_path)
    async with client(gateway) as sdk:
        completion = await sdk.chat.completions.create(
            model="epiloop", messages=[user("what time is it?")]
        )
    assert completion.choices[0].message.content == "Done."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (30, 4)
    assert len(mock.requests) == 2
    second = sent(mock, 1)["messages"]
    assert isinstance(second, list)
    assistant, *results = second[-3:]
    assert [call["id"] for call in assistant["tool_calls"]] == ["call_1", "call_2"]
    assert [r["tool_call_id"] for r in results] == ["call_1", "call_2"]
    assert "UTC" in results[0]["content"]
    assert (tmp_path / "workspaces" / "main" / "note.txt").read_text() == "hi"
    offered = {tool["function"]["name"] for tool in sent(mock, 0)["tools"]}
    assert offered == {"current_time", "read_file", "list_files", "write_file"}


async def test_runtime_tool_errors_go_back_to_the_model(nursery: trio.Nursery) -> None:
    mock = await start_mock(
        nursery,
        {
            "gpt-test": [
                Scenario(tokens=[], tool_calls=[("c1", "exec", '{"command": "id"}')]),
                Scenario(tokens=["Sorry."]),
            ]
        },
    )
    gateway = await start_upstream_gateway(nursery, mock)
    async with client(gateway) as sdk:
        completion = await sdk.chat.completions.create(model="epiloop", messages=[user("run id")])
    assert completion.choices[0].message.content == "Sorry."
    result = sent(mock, 1)["messages"][-1]
    assert result["role"] == "tool"
    assert result["content"].startswith("Error: Unknown tool 'exec'")


async def test_runtime_stops_after_max_tool_iterations(nursery: trio.Nursery) -> None:
    loop = Scenario(tokens=[], tool_calls=[("c", "current_time", "{}")])
    mock = await start_mock(nursery, {"gpt-test": loop})
    gateway = await start_upstream_gateway(
        nursery, mock, {"agents": {"defaults": {"maxToolIterations": 3}}}
    )
    async with client(gateway) as sdk:
        with pytest.raises(openai.InternalServerError) as caught:
            await sdk.chat.completions.create(model="epiloop", messages=[user("loop")])
    assert caught.value.code == "max_tool_iterations"
    assert len(mock.requests) == 3


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


async def test_runtime_client_tool_call_round_trip(nursery: trio.Nursery) -> None:
    mock = await start_mock(
        nursery,
        {
            "gpt-test": [
                Scenario(tokens=[], tool_calls=[("call_w", "get_weather", '{"city": "Paris"}')]),
                Scenario(tokens=["It is sunny in Paris."]),
            ]
        },
    )
    gateway = await start_upstream_gateway(nursery, mock)
    history: list[Any] = [user("weather in Paris?")]
    async with client(gateway) as sdk:
        first = await sdk.chat.completions.create(
            model="epiloop", messages=history, tools=[WEATHER_TOOL], user="tool-user"
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        assert choice.message.tool_calls is not None
        call = choice.message.tool_calls[0]
        assert call.type == "function"
        assert (call.id, call.function.name) == ("call_w", "get_weather")
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        history += [
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": "call_w", "content": "sunny, 21C"},
        ]
        second = await sdk.chat.completions.create(
            model="epiloop", messages=history, tools=[WEATHER_TOOL], user="tool-user"
        )
    assert second.choices[0].message.content == "It is sunny in Paris."
    upstream = sent(mock, 1)["messages"]
    assert isinstance(upstream, list)
    assert [m["role"] for m in upstream] == ["system", "user", "assistant", "tool"]
    assert upstream[-1] == {"role": "tool", "tool_call_id": "call_w", "content": "sunny, 21C"}
    session = await gateway.runtime.sessions.get(
        (await gateway.runtime.sessions.list_sessions())[0].key
    )
    assert session is not None
    assert [e.role for e in session.transcript] == ["user", "assistant", "tool", "assistant"]


async def test_runtime_client_tool_call_streams_as_deltas(nursery: trio.Nursery) -> None:
    mock = await start_mock(
        nursery,
        {
            "gpt-test": Scenario(
                tokens=["Let me check."], tool_calls=[("c9", "get_weather", '{"city": "Oslo"}')]
            )
        },
    )
    gateway = await start_upstream_gateway(nursery, mock)
    async with client(gateway) as sdk:
        stream = await sdk.chat.completions.create(
            model="epiloop", messages=[user("weather?")], tools=[WEATHER_TOOL], stream=True
        )
        assert isinstance(stream, openai.AsyncStream)
        chunks = [chunk async for chunk in stream]
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id == "c9"
    assert deltas[0].function is not None
    assert deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert {d.index for d in deltas} == {0}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me check."


async def test_runtime_client_tool_name_conflict_is_refused(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery, {})
    gateway = await start_upstream_gateway(nursery, mock)
    tool: Any = {**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "name": "read_file"}}
    async with client(gateway) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.chat.completions.create(model="epiloop", messages=[user("x")], tools=[tool])
    assert caught.value.code == "tool_name_conflict"
    assert caught.value.param == "tools[0].function.name"


async def test_runtime_sessions_survive_a_restart(tmp_path: Path) -> None:
    database = tmp_path / "sessions.sqlite"
    mock_scenarios = {"gpt-test": Scenario(tokens=["first answer"])}
    async with trio.open_nursery() as nursery:
        mock = await start_mock(nursery, mock_scenarios)
        async with open_sqlite_store(database) as store:
            gateway = await start_upstream_gateway(nursery, mock, sessions=store)
            async with client(gateway) as sdk:
                await sdk.chat.completions.create(
                    model="epiloop", messages=[user("remember 42")], user="alice"
                )
            nursery.cancel_scope.cancel()  # the gateway stops
    async with trio.open_nursery() as nursery:
        mock = await start_mock(nursery, {"gpt-test": Scenario(tokens=["it was 42"])})
        async with open_sqlite_store(database) as store:
            gateway = await start_upstream_gateway(nursery, mock, sessions=store)
            async with client(gateway) as sdk:
                # A client that sends only its new message (like a CLI): appended.
                answer = await sdk.chat.completions.create(
                    model="epiloop", messages=[user("what was it?")], user="alice"
                )
            assert answer.choices[0].message.content == "it was 42"
            upstream = sent(mock, 0)["messages"]
            assert [m["content"] for m in upstream] == [
                "You are a helpful assistant.",
                "remember 42",
                "first answer",
                "what was it?",
            ]
            sessions = await store.list_sessions()
            assert len(sessions) == 1
            session = await store.get(sessions[0].key)
            assert session is not None
            assert [e.content for e in session.transcript] == [
                "remember 42",
                "first answer",
                "what was it?",
                "it was 42",
            ]
            nursery.cancel_scope.cancel()


async def test_runtime_resent_history_is_not_duplicated(nursery: trio.Nursery) -> None:
    mock = await start_mock(
        nursery, {"gpt-test": [Scenario(tokens=["A1"]), Scenario(tokens=["A2"])]}
    )
    gateway = await start_upstream_gateway(nursery, mock)
    headers = {"x-epiloop-session-key": "full-history"}
    async with client(gateway) as sdk:
        await sdk.chat.completions.create(
            model="epiloop", messages=[user("Q1")], extra_headers=headers
        )
        await sdk.chat.completions.create(
            model="epiloop",
            messages=[user("Q1"), {"role": "assistant", "content": "A1"}, user("Q2")],
            extra_headers=headers,
        )
    session = await gateway.runtime.sessions.get("full-history")
    assert session is not None
    assert [e.content for e in session.transcript] == ["Q1", "A1", "Q2", "A2"]
    upstream = sent(mock, 1)["messages"]
    assert [m["content"] for m in upstream][1:] == ["Q1", "A1", "Q2"]


async def test_runtime_one_session_runs_one_at_a_time(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery, {"gpt-test": Scenario(tokens=["a", "b", "c"], pace=0.1)})
    gateway = await start_upstream_gateway(nursery, mock)
    headers = {**gateway.headers, "x-epiloop-session-key": "serial"}

    async def ask(http: httpx.AsyncClient, text: str) -> None:
        response = await http.post(
            f"{gateway.api_url}/chat/completions",
            json={"messages": [user(text)]},
            headers=headers,
        )
        assert response.status_code == 200

    with trio.fail_after(BOUND):
        async with httpx.AsyncClient() as http, trio.open_nursery() as requests:
            requests.start_soon(ask, http, "one")
            await trio.sleep(0.05)
            requests.start_soon(ask, http, "two")
    first, second = mock.requests
    assert first.completed_at is not None
    assert second.received_at >= first.completed_at
    session = await gateway.runtime.sessions.get("serial")
    assert session is not None
    assert [e.content for e in session.transcript] == ["one", "abc", "two", "abc"]


async def test_runtime_busy_session_answers_409_with_retry_after(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery, {"gpt-test": Scenario(tokens=["slow"], first_token_delay=2)})
    gateway = await start_upstream_gateway(nursery, mock, {"session": {"queueTimeoutSeconds": 0.2}})
    headers = {**gateway.headers, "x-epiloop-session-key": "busy"}
    url = f"{gateway.api_url}/chat/completions"
    async with httpx.AsyncClient() as http, trio.open_nursery() as requests:
        requests.start_soon(lambda: http.post(url, json={"messages": [user("a")]}, headers=headers))
        with trio.fail_after(BOUND):
            while not mock.requests:
                await trio.sleep(0.01)
        refused = await http.post(url, json={"messages": [user("b")]}, headers=headers)
        requests.cancel_scope.cancel()
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "session_busy"
    assert int(refused.headers["retry-after"]) >= 1


async def test_runtime_over_capacity_answers_429_at_once(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery, {"gpt-test": Scenario(tokens=["slow"], first_token_delay=2)})
    gateway = await start_upstream_gateway(
        nursery, mock, {"agents": {"defaults": {"maxConcurrent": 1, "maxQueued": 0}}}
    )
    url = f"{gateway.api_url}/chat/completions"
    async with httpx.AsyncClient() as http, trio.open_nursery() as requests:
        requests.start_soon(
            lambda: http.post(url, json={"messages": [user("a")]}, headers=gateway.headers)
        )
        with trio.fail_after(BOUND):
            while not mock.requests:
                await trio.sleep(0.01)
        with trio.fail_after(1):  # refused at once, not after the running request
            refused = await http.post(url, json={"messages": [user("b")]}, headers=gateway.headers)
        requests.cancel_scope.cancel()
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "gateway_overloaded"
    assert "retry-after" in refused.headers


# -- upstream faults: what the client sees, and what the session recorded --------------------


async def ask_raw(
    gateway: RunningGateway, *, stream: bool, session: str = "fault"
) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{gateway.api_url}/chat/completions",
            json={"stream": stream, "messages": [user("question")]},
            headers={**gateway.headers, "x-epiloop-session-key": session},
        )


async def stored(gateway: RunningGateway, key: str = "fault") -> list[tuple[str, str, str]]:
    session = await gateway.runtime.sessions.get(key)
    assert session is not None
    return [(e.role, e.content, e.status) for e in session.transcript]


def stream_events(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("status_500", "upstream_http_error"),
        ("status_400", "upstream_http_error"),
        ("close_immediately", None),
        ("wrong_content_type", "bad_upstream_response"),
    ],
)
async def test_runtime_fault_before_first_token_is_an_http_error(
    nursery: trio.Nursery, fault: str, code: str | None
) -> None:
    mock = await start_mock(nursery, {"gpt-test": Scenario(fault=fault)})  # type: ignore[arg-type]  # a Fault literal
    gateway = await start_upstream_gateway(nursery, mock)
    response = await ask_raw(gateway, stream=False)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    if code is not None:
        assert error["code"] == code
    assert await stored(gateway) == [
        ("user", "question", "completed"),
        ("assistant", "", "failed"),
    ]
    assert gateway.runtime.admission.statistics().running == 0


@pytest.mark.parametrize("fault", ["reset_mid_stream", "malformed_sse", "error_event"])
async def test_runtime_fault_after_first_token_is_in_band(
    nursery: trio.Nursery, fault: str
) -> None:
    mock = await start_mock(
        nursery,
        {"gpt-test": Scenario(tokens=["one ", "two ", "three"], fault=fault, fault_after=2)},  # type: ignore[arg-type]  # a Fault literal
    )
    gateway = await start_upstream_gateway(
        nursery, mock, {"models": {"providers": {"up": {"maxRetries": 3}}}}
    )
    response = await ask_raw(gateway, stream=True)
    events = stream_events(response)
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["type"] == "upstream_error"
    assert len(mock.requests) == 1  # no retry after the first token
    assert await stored(gateway) == [
        ("user", "question", "completed"),
        ("assistant", "one two ", "failed"),
    ]


async def test_runtime_hang_before_first_token_hits_the_deadline(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery, {"gpt-test": Scenario(fault="hang_before_first_token")})
    gateway = await start_upstream_gateway(
        nursery, mock, {"models": {"providers": {"up": {"firstTokenTimeoutSeconds": 0.3}}}}
    )
    response = await ask_raw(gateway, stream=True)
    events = stream_events(response)
    assert json.loads(events[-1])["error"]["code"] == "upstream_timeout"
    with trio.fail_after(BOUND):
        await mock.requests[0].closed.wait()  # the upstream connection was let go


async def test_runtime_hang_mid_stream_hits_the_idle_deadline(nursery: trio.Nursery) -> None:
    mock = await start_mock(
        nursery, {"gpt-test": Scenario(tokens=["a", "b", "c"], fault="hang_mid_stream")}
    )
    gateway = await start_upstream_gateway(
        nursery, mock, {"models": {"providers": {"up": {"idleTimeoutSeconds": 0.3}}}}
    )
    response = await ask_raw(gateway, stream=True)
    assert json.loads(stream_events(response)[-1])["error"]["code"] == "upstream_timeout"
    assert (await stored(gateway))[-1] == ("assistant", "ab", "failed")


async def test_runtime_retries_429_then_answers(nursery: trio.Nursery) -> None:
    mock = await start_mock(
        nursery,
        {"gpt-test": Scenario(tokens=["ok"], fault="status_429", retry_after="0", fail_times=2)},
    )
    gateway = await start_upstream_gateway(
        nursery, mock, {"models": {"providers": {"up": {"maxRetries": 2}}}}
    )
    response = await ask_raw(gateway, stream=False)
    assert response.json()["choices"][0]["message"]["content"] == "ok"
    assert len(mock.requests) == 3
    assert await stored(gateway) == [
        ("user", "question", "completed"),
        ("assistant", "ok", "completed"),
    ]


async def test_runtime_falls_back_to_the_next_model(nursery: trio.Nursery) -> None:
    mock = await start_mock(
        nursery,
        {
            "gpt-test": Scenario(fault="status_503", retry_after="0"),
            "gpt-small": Scenario(tokens=["from the fallback"]),
        },
    )
    gateway = await start_upstream_gateway(
        nursery,
        mock,
        {
            "models": {"providers": {"up": {"maxRetries": 1}}},
            "agents": {"defaults": {"fallbacks": ["up/gpt-small"]}},
        },
    )
    response = await ask_raw(gateway, stream=True)
    text = "".join(
        json.loads(e)["choices"][0]["delta"].get("content", "")
        for e in stream_events(response)[:-1]
        if json.loads(e)["choices"]
    )
    assert text == "from the fallback"
    assert [sent(mock, i)["model"] for i in range(len(mock.requests))] == [
        "gpt-test",
        "gpt-test",
        "gpt-small",
    ]


async def test_runtime_connection_refused_is_a_502(nursery: trio.Nursery) -> None:
    with trio.socket.socket() as probe:  # a port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway = await start_gateway(
        nursery,
        {
            "models": {
                "providers": {
                    "up": {"api": "openai-chat", "baseUrl": f"http://127.0.0.1:{port}/v1"}
                }
            },
            "agents": {"defaults": {"model": "up/x"}},
        },
        sessions=MemorySessionStore(),
    )
    response = await ask_raw(gateway, stream=False)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"


async def test_runtime_disconnect_cancels_the_upstream_request(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery, {"gpt-test": Scenario(tokens=["x"] * 100, pace=0.05)})
    gateway = await start_upstream_gateway(nursery, mock)
    async with (
        httpx.AsyncClient() as http,
        http.stream(
            "POST",
            f"{gateway.api_url}/chat/completions",
            json={"stream": True, "messages": [user("go")]},
            headers={**gateway.headers, "x-epiloop-session-key": "gone"},
        ) as response,
    ):
        async for line in response.aiter_lines():
            if '"content":"x' in line:
                break
    with trio.fail_after(BOUND):
        await mock.requests[0].closed.wait()
    assert mock.requests[0].closed_by == "client"
    assert mock.requests[0].tokens_sent < 100
    with trio.fail_after(BOUND):
        while (session := await gateway.runtime.sessions.get("gone")) is None:
            await trio.sleep(0.01)
    assert session.last_status == "aborted"


# -- what an upstream can make the gateway hold ----------------------------------------------


async def test_runtime_endless_upstream_line_fails_in_band_and_health_stays_up(
    nursery: trio.Nursery,
) -> None:
    # 2 MiB of line at 16 KiB every 10 ms: the bad upstream streams for 1.3 s or more.
    mock = await start_mock(
        nursery,
        {"gpt-test": Scenario(tokens=["one ", "two ", "x"], fault="endless_line", pace=0.01)},
    )
    gateway = await start_upstream_gateway(
        nursery, mock, {"models": {"providers": {"up": {"maxEventBytes": 2 * 1024 * 1024}}}}
    )
    responses: list[httpx.Response] = []
    healthy_while_streaming = 0

    async def ask() -> None:
        # The client hears nothing while the line grows: no read timeout of its own.
        async with httpx.AsyncClient(timeout=None) as http:
            response = await http.post(
                f"{gateway.api_url}/chat/completions",
                json={"stream": True, "messages": [user("question")]},
                headers={**gateway.headers, "x-epiloop-session-key": "fault"},
            )
        responses.append(response)

    with trio.fail_after(BOUND * 3):
        async with trio.open_nursery() as inner, httpx.AsyncClient() as http:
            inner.start_soon(ask)
            while not mock.requests or mock.requests[0].tokens_sent < 2:
                await trio.sleep(0.01)
            record = mock.requests[0]  # its endless line is on the way now
            while record.closed_at is None and not responses:
                with trio.fail_after(BOUND):  # generous: a starved loop would not answer at all
                    health = await http.get(f"{gateway.url}/healthz")
                assert health.status_code == 200
                if record.closed_at is None:
                    healthy_while_streaming += 1
                await trio.sleep(0.2)
    assert healthy_while_streaming >= 1
    events = stream_events(responses[0])
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "bad_upstream_response")
    assert "maxEventBytes" in error["message"]
    assert (await stored(gateway))[-1] == ("assistant", "one two ", "failed")
    with trio.fail_after(BOUND):
        await record.closed.wait()  # the upstream connection was let go


async def test_runtime_endless_upstream_line_without_streaming_is_a_502(
    nursery: trio.Nursery,
) -> None:
    mock = await start_mock(nursery, {"gpt-test": Scenario(fault="endless_line", fault_after=0)})
    gateway = await start_upstream_gateway(
        nursery, mock, {"models": {"providers": {"up": {"maxEventBytes": 64 * 1024}}}}
    )
    with trio.fail_after(BOUND):
        response = await ask_raw(gateway, stream=False)
        await mock.requests[0].closed.wait()
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_upstream_response"


async def test_runtime_deeply_nested_upstream_json_is_one_log_line(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    mock = await start_mock(nursery, {"gpt-test": Scenario(fault="deep_json", fault_after=0)})
    gateway = await start_upstream_gateway(nursery, mock)
    with caplog.at_level(logging.INFO, logger="trio_gateway"), trio.fail_after(BOUND):
        response = await ask_raw(gateway, stream=False)
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "bad_upstream_response")
    assert "nested too deeply" in error["message"]
    assert [r for r in caplog.records if r.exc_info is not None] == []  # no traceback
    failures = [r.getMessage() for r in caplog.records if "bad_upstream_response" in r.getMessage()]
    upstream_failures = [line for line in failures if line.startswith("upstream.stream.failed")]
    assert len(upstream_failures) == 1, failures
    assert "\n" not in upstream_failures[0]
    assert "provider.crashed" not in caplog.text


@pytest.mark.parametrize("stream", [True, False])
async def test_runtime_endless_valid_answer_stops_at_max_output_chars(
    nursery: trio.Nursery, stream: bool
) -> None:
    mock = await start_mock(
        nursery, {"gpt-test": Scenario(tokens=["word "], fault="endless_stream")}
    )
    gateway = await start_upstream_gateway(
        nursery, mock, {"agents": {"defaults": {"maxOutputChars": 2000}}}
    )
    with trio.fail_after(BOUND):
        response = await ask_raw(gateway, stream=stream)
        await mock.requests[0].closed.wait()  # the endless answer was let go
    if stream:
        events = stream_events(response)
        assert "[DONE]" not in events
        error = json.loads(events[-1])["error"]
        text = "".join(
            json.loads(event)["choices"][0]["delta"].get("content") or "" for event in events[:-1]
        )
        assert text == "word " * 400  # every character up to the cap, none past it
    else:
        assert response.status_code == 502
        error = response.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "output_too_large")
    assert "2000 characters" in error["message"]
    assert "maxOutputChars" in error["message"]
    assert (await stored(gateway))[-1] == ("assistant", "word " * 400, "failed")


async def test_runtime_tool_call_arguments_over_the_limit_stop_the_run(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    arguments = json.dumps({"path": "big.txt", "content": "x" * 3000})
    mock = await start_mock(
        nursery,
        {
            "gpt-test": [
                Scenario(tokens=[], tool_calls=[("c1", "write_file", arguments)]),
                Scenario(tokens=["written"]),
            ]
        },
    )
    gateway = await start_upstream_gateway(
        nursery, mock, {"tools": {"maxArgumentChars": 1024}}, state_dir=tmp_path
    )
    with trio.fail_after(BOUND):
        response = await ask_raw(gateway, stream=False)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "tool_arguments_too_large"
    assert "'write_file'" in error["message"]
    assert "maxArgumentChars" in error["message"]
    assert len(mock.requests) == 1
    assert not (tmp_path / "workspaces" / "main" / "big.txt").exists()  # the tool never ran


@pytest.mark.parametrize(("calls", "allowed"), [(4, True), (5, False)])
async def test_runtime_tool_calls_per_turn_are_bounded(
    nursery: trio.Nursery, calls: int, allowed: bool
) -> None:
    turn = Scenario(tokens=[], tool_calls=[(f"c{i}", "current_time", "{}") for i in range(calls)])
    mock = await start_mock(nursery, {"gpt-test": [turn, Scenario(tokens=["done"])]})
    gateway = await start_upstream_gateway(nursery, mock, {"tools": {"maxCallsPerTurn": 4}})
    with trio.fail_after(BOUND):
        response = await ask_raw(gateway, stream=True)
    events = stream_events(response)
    if allowed:
        assert events[-1] == "[DONE]"
        assert len(mock.requests) == 2
        results = sent(mock, 1)["messages"][-calls:]
        assert [m["role"] for m in results] == ["tool"] * calls
        return
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "too_many_tool_calls")
    assert "more than 4 tool calls in one answer (tools.maxCallsPerTurn)" in error["message"]
    assert len(mock.requests) == 1  # no tool ran, the model was not called again


async def test_runtime_tool_result_over_the_limit_reaches_the_model_truncated(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    workspace = trio.Path(tmp_path / "workspaces" / "main")
    await workspace.mkdir(parents=True)
    await (workspace / "big.txt").write_text("0123456789" * 1000)
    mock = await start_mock(
        nursery,
        {
            "gpt-test": [
                Scenario(
                    tokens=[],
                    tool_calls=[("c1", "read_file", '{"path": "big.txt", "max_bytes": 100000}')],
                ),
                Scenario(tokens=["read"]),
            ]
        },
    )
    gateway = await start_upstream_gateway(
        nursery, mock, {"tools": {"maxResultChars": 2048}}, state_dir=tmp_path
    )
    with trio.fail_after(BOUND):
        response = await ask_raw(gateway, stream=False)
    assert response.json()["choices"][0]["message"]["content"] == "read"
    result = sent(mock, 1)["messages"][-1]
    assert result["role"] == "tool"
    kept, note = result["content"].split("\n", 1)
    assert kept == ("0123456789" * 205)[:2048]
    assert note == (
        "[truncated by the gateway: showed the first 2048 of 10000 characters; "
        "ask for less at a time]"
    )
