"""``POST /v1/responses`` with the official openai SDK against a real gateway: string input,
input items, a client function tool across two requests, streaming and not, the disabled
endpoint, bad input, and a disconnect that cancels the run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx
import openai
import pytest
import trio
from gateway_harness import TOKEN, RunningGateway, start_gateway
from openai.types.responses import (
    FunctionToolParam,
    Response,
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseStreamEvent,
)
from pydantic import TypeAdapter

from benchmarks.scripted_provider import Fail, Hang, Say, ScriptedProvider
from trio_gateway.errors import RunTimeoutError
from trio_gateway.messages import ToolCall
from trio_gateway.providers.base import (
    Completion,
    Emit,
    ModelRequest,
    TextDelta,
    TokenUsage,
    ToolCallDelta,
)

BOUND = 5  # seconds
ENABLED = {"gateway": {"http": {"endpoints": {"responses": {"enabled": True}}}}}
WEATHER_TOOL: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "strict": None,
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
_EVENT = TypeAdapter(ResponseStreamEvent)


def client_for(gateway: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.api_url, api_key=TOKEN, max_retries=0)


class WeatherProvider:
    """A provider that calls ``get_weather`` until it sees the tool's result, then answers
    with it: the model side of a client tool round trip."""

    def __init__(self) -> None:
        self.requests: list[ModelRequest] = []

    async def stream(self, request: ModelRequest, emit: Emit) -> Completion:
        self.requests.append(request)
        last = request.messages[-1]
        if last.role == "tool":
            for word in ("It", " is", f" {last.content}."):
                await emit(TextDelta(word))
            return Completion("stop", TokenUsage(10, 3))
        await emit(TextDelta("Let me check."))
        await emit(ToolCallDelta(0, "call_w1", "get_weather", '{"city":'))
        await emit(ToolCallDelta(0, None, None, '"Paris"}'))
        call = ToolCall("call_w1", "get_weather", '{"city":"Paris"}')
        return Completion("tool_calls", TokenUsage(8, 5), tool_calls=(call,))


def check_sequence(events: Sequence[Any]) -> None:
    """Strictly increasing sequence numbers from 0, with no gap."""
    assert [event.sequence_number for event in events] == list(range(len(events)))


async def test_responses_create_with_string_input(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, ENABLED)
    async with client_for(gateway) as client:
        response = await client.responses.create(
            model="epiloop:main",
            input="hello  there world",
            instructions="Be brief.",
            metadata={"ticket": "42"},
            temperature=0.5,
        )
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "epiloop:main"
    assert response.output_text == "hello  there world"
    assert response.metadata == {"ticket": "42"}
    assert response.instructions == "Be brief."
    assert response.temperature == 0.5
    (message,) = response.output
    assert message.type == "message"
    assert message.status == "completed"
    assert response.usage is not None
    # Echo counts words: 5 (agent prompt) + 2 (instructions) + 3 in, 3 out.
    assert (response.usage.input_tokens, response.usage.output_tokens) == (10, 3)
    assert response.usage.total_tokens == 13


async def test_responses_create_with_items_continues_the_conversation(
    nursery: trio.Nursery,
) -> None:
    provider = ScriptedProvider([Say("fine")])
    gateway = await start_gateway(nursery, ENABLED, providers={"local": provider})
    async with client_for(gateway) as client:
        response = await client.responses.create(
            model="epiloop",
            input=[
                {"role": "developer", "content": "Answer in one word."},
                {"role": "user", "content": [{"type": "input_text", "text": "how are you?"}]},
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_1",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "good", "annotations": []}],
                },
                {"role": "user", "content": "and now?"},
            ],
        )
    assert response.output_text == "fine"
    sent = [(m.role, m.content) for m in provider.calls[0].request.messages]
    assert sent == [
        ("system", "You are a helpful assistant."),
        ("developer", "Answer in one word."),
        ("user", "how are you?"),
        ("assistant", "good"),
        ("user", "and now?"),
    ]


async def test_responses_max_output_tokens_gives_an_incomplete_response(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery, ENABLED)
    async with client_for(gateway) as client:
        response = await client.responses.create(
            model="epiloop", input="one two three four five", max_output_tokens=2
        )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "one two "


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_client_tool_round_trip_on_one_session(
    nursery: trio.Nursery, stream: bool
) -> None:
    provider = WeatherProvider()
    gateway = await start_gateway(nursery, ENABLED, providers={"local": provider})
    session = {"x-epiloop-session-key": f"weather-{stream}"}
    first: Response
    async with client_for(gateway) as client:
        if stream:
            async with client.responses.stream(
                model="epiloop",
                input="Weather in Paris?",
                tools=[WEATHER_TOOL],
                extra_headers=session,
            ) as events:
                seen = [event async for event in events]
                first = await events.get_final_response()
            check_sequence(seen)
        else:
            first = await client.responses.create(
                model="epiloop",
                input="Weather in Paris?",
                tools=[WEATHER_TOOL],
                extra_headers=session,
            )
        assert first.status == "completed"
        assert [item.type for item in first.output] == ["message", "function_call"]
        call = first.output[-1]
        assert call.type == "function_call"
        assert (call.call_id, call.name, call.arguments) == (
            "call_w1",
            "get_weather",
            '{"city":"Paris"}',
        )
        assert first.output_text == "Let me check."
        history: Any = [
            {"role": "user", "content": "Weather in Paris?"},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ]
        second = await client.responses.create(
            model="epiloop",
            input=history,
            tools=[WEATHER_TOOL],
            extra_headers=session,
        )
    assert second.output_text == "It is sunny."
    assert [item.type for item in second.output] == ["message"]
    last_request = provider.requests[-1].messages
    assert last_request[-2].tool_calls == (ToolCall("call_w1", "get_weather", '{"city":"Paris"}'),)
    assert (last_request[-1].role, last_request[-1].content) == ("tool", "sunny")
    assert last_request[-1].tool_call_id == "call_w1"


async def test_responses_stream_events_in_order(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("Hel"), Say("lo")], usage=TokenUsage(4, 2))
    gateway = await start_gateway(nursery, ENABLED, providers={"local": provider})
    async with client_for(gateway) as client:
        stream = await client.responses.create(model="epiloop:main", input="hi", stream=True)
        events = [event async for event in stream]
    check_sequence(events)
    types = [event.type for event in events]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert types[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(event.delta for event in deltas) == "Hello"
    created, completed = events[0], events[-1]
    assert isinstance(created, ResponseCreatedEvent)
    assert isinstance(completed, ResponseCompletedEvent)
    assert completed.response.id == created.response.id
    assert completed.response.output_text == "Hello"
    assert completed.response.usage is not None
    assert (completed.response.usage.input_tokens, completed.response.usage.output_tokens) == (
        4,
        2,
    )


async def _raw_stream(gateway: RunningGateway, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``data`` of every event of a streamed response, each checked strictly against the
    SDK's event types, and each ``event:`` line matching its ``type``."""
    payloads: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient() as client,
        client.stream(
            "POST", f"{gateway.api_url}/responses", json=body, headers=gateway.headers
        ) as response,
    ):
        assert response.status_code == 200
        event_type = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event_type = line.removeprefix("event: ")
            elif line.startswith("data: "):
                payload = json.loads(line.removeprefix("data: "))
                assert payload["type"] == event_type
                _EVENT.validate_python(payload, strict=True)
                payloads.append(payload)
    return payloads


async def test_responses_failed_run_ends_the_stream_with_error_and_failed(
    nursery: trio.Nursery,
) -> None:
    provider = ScriptedProvider([Say("partial"), Fail(RunTimeoutError("too slow"))])
    gateway = await start_gateway(nursery, ENABLED, providers={"local": provider})
    payloads = await _raw_stream(gateway, {"input": "hi", "stream": True})
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert [p["type"] for p in payloads[-3:]] == [
        "response.output_item.done",
        "error",
        "response.failed",
    ]
    assert payloads[-3]["item"]["status"] == "incomplete"
    assert (payloads[-2]["code"], payloads[-2]["message"]) == ("run_timeout", "too slow")
    failed = payloads[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "server_error"
    assert failed["output"][0]["content"][0]["text"] == "partial"


class ToolThenHangProvider:
    """Calls the agent's own ``current_time`` tool (a whole model call, with usage), then says
    a little and hangs."""

    def __init__(self) -> None:
        self.hanging = trio.Event()

    async def stream(self, request: ModelRequest, emit: Emit) -> Completion:
        if request.messages[-1].role != "tool":
            await emit(ToolCallDelta(0, "t1", "current_time", "{}"))
            call = ToolCall("t1", "current_time", "{}")
            return Completion("tool_calls", TokenUsage(8, 5), tool_calls=(call,))
        await emit(TextDelta("partial"))
        self.hanging.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_responses_aborted_run_reports_cancelled_with_its_usage(
    nursery: trio.Nursery,
) -> None:
    provider = ToolThenHangProvider()
    gateway = await start_gateway(nursery, ENABLED, providers={"local": provider})
    results: list[Response] = []
    async with client_for(gateway) as client, trio.open_nursery() as inner:

        async def create() -> None:
            results.append(await client.responses.create(model="epiloop", input="hi"))

        inner.start_soon(create)
        with trio.fail_after(BOUND):
            await provider.hanging.wait()
        assert gateway.runtime.active_runs.abort_all("stopped by the operator")
    (response,) = results
    assert response.status == "cancelled"
    assert response.output_text == "partial"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (8, 5)


async def test_responses_disabled_endpoint_answers_404(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    async with client_for(gateway) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.responses.create(model="epiloop", input="hi")
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "endpoint_disabled"
    assert "gateway.http.endpoints.responses.enabled" in error["message"]


async def test_responses_needs_the_bearer_credential(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, ENABLED)
    async with openai.AsyncOpenAI(
        base_url=gateway.api_url, api_key="wrong", max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.responses.create(model="epiloop", input="hi")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input[0].content[0].type",
        ),
        (
            {
                "input": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {
                        "role": "user",
                        "content": [{"type": "input_text", "text": "x"}, {"type": "input_file"}],
                    },
                ]
            },
            "input[2].content[1].type",
        ),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "hi", "background": True, "store": False}, "background"),
        ({"input": "hi", "temperature": "hot"}, "temperature"),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
        ),
        ({}, "input"),
        ({"input": "hi", "model": "epiloop:nobody"}, "model"),
    ],
)
async def test_responses_bad_input_is_a_400_naming_its_path(
    nursery: trio.Nursery, body: dict[str, Any], param: str
) -> None:
    gateway = await start_gateway(nursery, ENABLED)
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gateway.api_url}/responses", json=body, headers=gateway.headers
        )
    error = response.json()["error"]
    assert response.status_code == (404 if param == "model" else 400), error
    assert error["param"] == param


async def test_responses_client_tool_named_like_an_agent_tool_names_the_flat_path(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery, ENABLED)
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gateway.api_url}/responses",
            json={"input": "hi", "tools": [{"type": "function", "name": "current_time"}]},
            headers=gateway.headers,
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("tool_name_conflict", "tools[0].name")


async def test_responses_disconnect_mid_stream_cancels_the_run(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("first"), Hang()])
    gateway = await start_gateway(nursery, ENABLED, providers={"local": provider})
    async with client_for(gateway) as client:
        stream = await client.responses.create(model="epiloop", input="hi", stream=True)
        async for event in stream:
            if event.type == "response.output_text.delta":
                break
        await stream.close()
    with trio.fail_after(BOUND):
        await provider.call_ended.wait()
    assert provider.calls[0].outcome == "cancelled"
