"""Stored responses across two gateway instances sharing one PostgreSQL database: a reader on
the other instance replays and follows a background run from the store, and a cancel sent to
the other instance reaches the run through the cluster's abort."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import trio
from e2e.test_responses_stored import GatedProvider, numbers, text_of
from gateway_harness import TOKEN, RunningGateway, start_gateway

from benchmarks.scripted_provider import Hang, Say, ScriptedProvider
from trio_gateway.config.schema import PostgresConfig, SessionConfig
from trio_gateway.providers import Provider
from trio_gateway.sessions import SessionStore, open_session_store

BOUND = 20


def _config(dsn: str, instance: str) -> dict[str, Any]:
    return {
        "gateway": {
            "instanceId": instance,
            "http": {"endpoints": {"responses": {"enabled": True, "pollSeconds": 0.05}}},
        },
        "session": {
            "store": "postgres",
            "postgres": {"dsn": dsn, "leaseSeconds": 2, "poolSize": 4},
        },
    }


@asynccontextmanager
async def shared_store(dsn: str, tmp_path: Path) -> AsyncIterator[SessionStore]:
    config = SessionConfig(store="postgres", postgres=PostgresConfig(dsn=dsn, pool_size=4))
    async with open_session_store(config, tmp_path) as store:
        yield store


async def two_gateways(
    nursery: trio.Nursery, dsn: str, store: SessionStore, a: Provider, b: Provider
) -> tuple[RunningGateway, RunningGateway]:
    first = await start_gateway(nursery, _config(dsn, "i0"), providers={"local": a}, sessions=store)
    second = await start_gateway(
        nursery, _config(dsn, "i1"), providers={"local": b}, sessions=store
    )
    return first, second


def client_for(gateway: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.api_url, api_key=TOKEN, max_retries=0)


async def test_background_response_resumes_on_another_instance(pg_dsn: str, tmp_path: Path) -> None:
    provider = GatedProvider(["one", " two"], [" three"])
    async with shared_store(pg_dsn, tmp_path) as store, trio.open_nursery() as nursery:
        a, b = await two_gateways(nursery, pg_dsn, store, provider, ScriptedProvider([]))
        with trio.fail_after(BOUND):
            async with client_for(a) as on_a, client_for(b) as on_b:
                stream = await on_a.responses.create(
                    model="epiloop:main", input="go", background=True, stream=True
                )
                first = []
                async for event in stream:
                    first.append(event)
                    if event.type == "response.output_text.delta" and event.delta == " two":
                        break
                await stream.close()
                response_id = first[0].response.id  # type: ignore[union-attr]
                resumed = await on_b.responses.retrieve(
                    response_id, stream=True, starting_after=first[-1].sequence_number
                )
                provider.gate.set()  # the rest comes live, through the store
                rest = [event async for event in resumed]
                polled = await on_b.responses.retrieve(response_id)
        nursery.cancel_scope.cancel()
    whole = first + rest
    assert numbers(whole) == list(range(len(whole)))
    assert text_of(whole) == "one two three"
    assert rest[-1].type == "response.completed"
    assert polled.status == "completed"


async def test_cancel_on_another_instance_stops_the_run(pg_dsn: str, tmp_path: Path) -> None:
    provider = ScriptedProvider([Say("partial"), Hang()])
    async with shared_store(pg_dsn, tmp_path) as store, trio.open_nursery() as nursery:
        a, b = await two_gateways(nursery, pg_dsn, store, provider, ScriptedProvider([]))
        with trio.fail_after(BOUND):
            async with client_for(a) as on_a, client_for(b) as on_b:
                created = await on_a.responses.create(
                    model="epiloop:main", input="go", background=True
                )
                await provider.call_started.wait()
                cancelled = await on_b.responses.cancel(created.id)
        nursery.cancel_scope.cancel()
    assert provider.calls[0].outcome == "cancelled"
    assert cancelled.status == "cancelled"
    assert cancelled.output_text == "partial"
