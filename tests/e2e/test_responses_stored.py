"""Stored responses with the official openai SDK against a real gateway: background runs that
survive their reader, resumed with ``starting_after`` (no gap, no duplicate), polling, replay
after the end, retention, cancel, delete, input items, ``previous_response_id`` across three
turns, another agent's response, and resumable chat completion streams with ``Last-Event-ID``.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
import trio
from gateway_harness import TOKEN, RunningGateway, start_gateway
from openai.types.responses import ResponseStreamEvent

from benchmarks.scripted_provider import Hang, Say, ScriptedProvider
from trio_gateway.providers.base import Completion, Emit, ModelRequest, TextDelta, TokenUsage
from trio_gateway.server.control_methods import status
from trio_gateway.sessions import MemorySessionStore
from trio_gateway.wire.control import NoParams

BOUND = 10  # seconds
ENABLED: dict[str, Any] = {"gateway": {"http": {"endpoints": {"responses": {"enabled": True}}}}}


def client_for(gateway: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.api_url, api_key=TOKEN, max_retries=0)


class GatedProvider:
    """Says ``first``, waits for :attr:`gate`, then says ``then``: a run that is still going
    when its first reader goes away."""

    def __init__(self, first: list[str], then: list[str]) -> None:
        self.first, self.then = first, then
        self.gate = trio.Event()
        self.finished = trio.Event()
        self.cancelled = False

    async def stream(self, request: ModelRequest, emit: Emit) -> Completion:
        try:
            for word in self.first:
                await emit(TextDelta(word))
                await trio.lowlevel.checkpoint()
            await self.gate.wait()
            for word in self.then:
                await emit(TextDelta(word))
                await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            self.cancelled = True
            raise
        self.finished.set()
        return Completion("stop", TokenUsage(7, len(self.first) + len(self.then)))


def numbers(events: list[ResponseStreamEvent]) -> list[int]:
    return [event.sequence_number for event in events]


def text_of(events: list[ResponseStreamEvent]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


async def test_background_response_resumes_after_its_reader_is_killed(
    nursery: trio.Nursery,
) -> None:
    provider = GatedProvider(["one", " two", " three"], [" four", " five"])
    gateway = await start_gateway(nursery, ENABLED, providers={"local": provider})
    first: list[ResponseStreamEvent] = []
    with trio.fail_after(BOUND):
        async with client_for(gateway) as client:
            stream = await client.responses.create(
                model="epiloop:main", input="count", background=True, stream=True
            )
            async for event in stream:
                first.append(event)
                if event.type == "response.output_text.delta" and event.delta == " two":
                    break
            await stream.close()  # the first reader goes away mid-run
            response_id = first[0].response.id  # type: ignore[union-attr]
            await trio.sleep(0.05)
            assert not provider.cancelled  # a background run does not stop with its reader
            provider.gate.set()
            resumed = await client.responses.retrieve(
                response_id, stream=True, starting_after=first[-1].sequence_number
            )
            rest = [event async for event in resumed]
            final = await client.responses.retrieve(response_id)
    assert first[0].type == "response.created"
    assert first[0].response.background is True
    whole = first + rest
    assert numbers(whole) == list(range(len(whole)))  # no gap, no duplicate across the resume
    assert rest[-1].type == "response.completed"
    assert text_of(whole) == "one two three four five"
    assert final.status == "completed"
    assert final.output_text == "one two three four five"
    assert final.usage is not None
    assert final.usage.output_tokens == 5


async def test_background_response_polls_then_replays_after_the_end(
    nursery: trio.Nursery,
) -> None:
    provider = GatedProvider(["a", " b"], [" c"])
    gateway = await start_gateway(nursery, ENABLED, providers={"local": provider})
    with trio.fail_after(BOUND):
        async with client_for(gateway) as client:
            created = await client.responses.create(
                model="epiloop:main", input="go", background=True
            )
            assert created.status in ("queued", "in_progress")
            assert created.background is True
            polled = await client.responses.retrieve(created.id)
            assert polled.status == "in_progress"
            provider.gate.set()
            await provider.finished.wait()
            while (polled := await client.responses.retrieve(created.id)).status == "in_progress":
                await trio.sleep(0.01)
            replay = [e async for e in await client.responses.retrieve(created.id, stream=True)]
            tail = [
                e
                async for e in await client.responses.retrieve(
                    created.id, stream=True, starting_after=3
                )
            ]
    assert polled.status == "completed"
    assert polled.output_text == "a b c"
    assert numbers(replay) == list(range(len(replay)))
    assert replay[0].type == "response.created"
    assert replay[-1].type == "response.completed"
    assert text_of(replay) == "a b c"
    assert numbers(tail) == list(range(4, len(replay)))


async def test_stored_response_is_gone_after_its_retention(nursery: trio.Nursery) -> None:
    config = {
        "gateway": {"http": {"endpoints": {"responses": {"enabled": True, "retentionSeconds": 1}}}}
    }
    gateway = await start_gateway(nursery, config)
    with trio.fail_after(BOUND):
        async with client_for(gateway) as client:
            response = await client.responses.create(model="epiloop:main", input="hello")
            assert (await client.responses.retrieve(response.id)).output_text == "hello"
            await trio.sleep(1.1)
            with pytest.raises(openai.NotFoundError) as caught:
                await client.responses.retrieve(response.id)
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve(response.id, stream=True, starting_after=0)
    assert "past its retention" in str(caught.value)


async def test_cancel_stops_a_background_run_and_is_idempotent(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("partial"), Hang()])
    gateway = await start_gateway(nursery, ENABLED, providers={"local": provider})
    with trio.fail_after(BOUND):
        async with client_for(gateway) as client:
            created = await client.responses.create(
                model="epiloop:main", input="go", background=True
            )
            await provider.call_started.wait()
            # The control plane sees it like any other run.
            seen = await status(gateway.runtime, NoParams())
            started = trio.current_time()
            cancelled = await client.responses.cancel(created.id)
            stopped_after = trio.current_time() - started
            again = await client.responses.cancel(created.id)
            polled = await client.responses.retrieve(created.id)
            events = [e async for e in await client.responses.retrieve(created.id, stream=True)]
    assert [(run.source, run.run_id[-32:]) for run in seen.runs] == [
        ("responses", created.id.removeprefix("resp_"))
    ]
    assert provider.calls[0].outcome == "cancelled"
    assert stopped_after < 1.0
    assert cancelled.status == "cancelled"
    assert cancelled.output_text == "partial"
    assert cancelled.usage is not None  # an aborted run's usage is reported
    assert again.status == polled.status == "cancelled"
    assert events[-1].type == "response.failed"
    assert numbers(events) == list(range(len(events)))
    (session,) = await gateway.runtime.sessions.list_sessions()
    assert session.last_status == "aborted"  # the partial turn is recorded, with its usage


async def test_delete_removes_a_stored_response(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, ENABLED)
    with trio.fail_after(BOUND):
        async with client_for(gateway) as client:
            response = await client.responses.create(model="epiloop:main", input="keep me")
            await client.responses.delete(response.id)
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve(response.id)
            with pytest.raises(openai.NotFoundError):
                await client.responses.delete(response.id)
    assert await gateway.runtime.sessions.get_response(response.id) is None


async def test_input_items_lists_the_request_input(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, ENABLED)
    with trio.fail_after(BOUND):
        async with client_for(gateway) as client:
            response = await client.responses.create(
                model="epiloop:main",
                input=[
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "reply"},
                    {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
                ],
            )
            page = await client.responses.input_items.list(response.id, order="asc")
            newest = await client.responses.input_items.list(response.id, limit=1)
    listed = [item.model_dump() for item in page.data]
    assert [item["content"][0]["text"] for item in listed] == ["first", "reply", "second"]
    assert [item["role"] for item in listed] == ["user", "assistant", "user"]
    assert [item.model_dump()["content"][0]["text"] for item in newest.data] == ["second"]
    assert newest.has_more is True


async def test_previous_response_id_continues_the_conversation_over_three_turns(
    nursery: trio.Nursery,
) -> None:
    provider = ScriptedProvider([Say("noted")])
    gateway = await start_gateway(nursery, ENABLED, providers={"local": provider})
    with trio.fail_after(BOUND):
        async with client_for(gateway) as client:
            one = await client.responses.create(model="epiloop:main", input="my name is Ada")
            two = await client.responses.create(
                model="epiloop:main", input="I like trio", previous_response_id=one.id
            )
            three = await client.responses.create(
                model="epiloop:main", input="who am I?", previous_response_id=two.id
            )
            # A branch: continuing the first response again ignores the later turns.
            branch = await client.responses.create(
                model="epiloop:main", input="again", previous_response_id=one.id
            )
    assert three.previous_response_id == two.id
    seen = [(m.role, m.content) for m in provider.calls[2].request.messages if m.role != "system"]
    assert seen == [
        ("user", "my name is Ada"),
        ("assistant", "noted"),
        ("user", "I like trio"),
        ("assistant", "noted"),
        ("user", "who am I?"),
    ]
    branched = [
        (m.role, m.content) for m in provider.calls[3].request.messages if m.role != "system"
    ]
    assert branched == [("user", "my name is Ada"), ("assistant", "noted"), ("user", "again")]
    assert branch.status == "completed"


async def test_previous_response_id_unknown_or_of_another_agent_is_refused(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery, ENABLED)
    with trio.fail_after(BOUND):
        async with client_for(gateway) as client:
            with pytest.raises(openai.NotFoundError) as unknown:
                await client.responses.create(
                    model="epiloop:main", input="hi", previous_response_id="resp_nope"
                )
            helper = await client.responses.create(model="epiloop:helper", input="hi")
            with pytest.raises(openai.NotFoundError) as foreign:
                await client.responses.create(
                    model="epiloop:main", input="hi", previous_response_id=helper.id
                )
            # Another agent's response is not found either (the default agent here)...
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve(helper.id)
            # ...but is, for its own agent.
            mine = await client.responses.retrieve(
                helper.id, extra_headers={"x-epiloop-agent-id": "helper"}
            )
    assert unknown.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert foreign.value.body["code"] == "response_not_found"  # type: ignore[index]
    assert mine.output_text == "hi"


async def test_unstored_response_is_not_kept(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery, ENABLED)
    with trio.fail_after(BOUND):
        async with client_for(gateway) as client:
            response = await client.responses.create(
                model="epiloop:main", input="forget me", store=False
            )
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve(response.id)
    assert response.output_text == "forget me"


# --- resumable chat completion streams ---------------------------------------------------------


def _sse_events(text: str) -> list[tuple[int, str]]:
    """(id, data) of each SSE event in ``text``."""
    found = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            found.append((int(fields["id"]), fields["data"]))
    return found


async def test_resumable_chat_stream_survives_its_client_and_resumes_with_last_event_id(
    nursery: trio.Nursery,
) -> None:
    provider = GatedProvider(["one", " two"], [" three"])
    gateway = await start_gateway(nursery, providers={"local": provider})
    headers = {**gateway.headers, "x-epiloop-resumable": "true"}
    body = {"model": "epiloop:main", "messages": [{"role": "user", "content": "go"}]}
    with trio.fail_after(BOUND):
        async with httpx.AsyncClient(base_url=gateway.api_url) as client:
            received = ""
            async with client.stream(
                "POST", "/chat/completions", json={**body, "stream": True}, headers=headers
            ) as response:
                assert response.status_code == 200
                async for text in response.aiter_text():
                    received += text
                    if '" two"' in received:
                        break
            # The client went away: the run goes on.
            await trio.sleep(0.05)
            assert not provider.cancelled
            first = _sse_events(received)
            completion_id = json.loads(first[0][1])["id"]
            provider.gate.set()
            resumed = await client.get(
                f"/chat/completions/{completion_id}/stream",
                headers={**gateway.headers, "Last-Event-ID": str(first[-1][0])},
            )
            replayed = await client.get(
                f"/chat/completions/{completion_id}/stream", headers=gateway.headers
            )
            missing = await client.get("/chat/completions/chatcmpl-nope/stream", headers=headers)
    rest = _sse_events(resumed.text)
    whole = first + rest
    assert [number for number, _ in whole] == list(range(len(whole)))
    assert rest[-1][1] == "[DONE]"
    pieces = [json.loads(data)["choices"][0]["delta"].get("content") for _, data in whole[:-1]]
    assert "".join(p for p in pieces if p) == "one two three"
    assert _sse_events(replayed.text) == whole
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "response_not_found"


async def test_background_run_of_a_closing_gateway_is_stored_as_failed() -> None:
    provider = ScriptedProvider([Say("partial"), Hang()])
    store = MemorySessionStore()
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            gateway = await start_gateway(
                nursery, ENABLED, providers={"local": provider}, sessions=store
            )
            async with client_for(gateway) as client:
                created = await client.responses.create(
                    model="epiloop:main", input="go", background=True
                )
                await provider.call_started.wait()
            nursery.cancel_scope.cancel()  # the gateway and its runtime close
    stored = await store.get_response(created.id)
    assert stored is not None
    assert stored.status == "failed"
    body = json.loads(stored.body)
    assert body["status"] == "failed"
    assert "stopped before the run ended" in body["error"]["message"]
    assert provider.calls[0].outcome == "cancelled"


async def test_cancel_right_after_create_stops_the_run(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Hang()])
    gateway = await start_gateway(nursery, ENABLED, providers={"local": provider})
    with trio.fail_after(BOUND):
        async with client_for(gateway) as client:
            created = await client.responses.create(
                model="epiloop:main", input="go", background=True
            )
            cancelled = await client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
