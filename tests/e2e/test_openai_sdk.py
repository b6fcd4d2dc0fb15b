"""The official openai SDK against a real gateway: sync and async, streaming and not."""

from __future__ import annotations

import openai
import pytest
import trio
from gateway_harness import TOKEN, RunningGateway, start_gateway

from benchmarks.scripted_provider import Fail, Say, ScriptedProvider
from trio_gateway.errors import ProviderError


def async_client(gateway: RunningGateway, api_key: str = TOKEN) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.api_url, api_key=api_key, max_retries=0)


def sync_client(gateway: RunningGateway, api_key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api_url, api_key=api_key, max_retries=0)


async def test_sdk_async_completion_echoes_the_last_user_message(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    async with async_client(gateway) as client:
        completion = await client.chat.completions.create(
            model="epiloop:main",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "first answer"},
                {"role": "user", "content": "hello  there   world"},
            ],
        )
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "epiloop:main"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == "hello  there   world"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    # Echo counts words: 5 (agent prompt) + 2 + 2 + 2 + 3 in, 3 out.
    assert completion.usage.prompt_tokens == 14
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == 17


async def test_sdk_async_stream_delivers_role_content_finish_and_usage(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery)
    async with async_client(gateway) as client:
        stream = await client.chat.completions.create(
            model="epiloop",
            messages=[{"role": "user", "content": "one two three four"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    assert {chunk.created for chunk in chunks} == {chunks[0].created}
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk.model == "epiloop" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert all(reason is None for reason in finishes[:-1])
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 4
    assert usage_chunk.usage.prompt_tokens == 5 + 4


async def test_sdk_async_stream_without_include_usage_sends_no_usage_chunk(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery)
    async with async_client(gateway) as client:
        stream = await client.chat.completions.create(
            model="epiloop", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)


async def test_sdk_sync_client_completion_and_stream(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)

    def use_sync_client() -> tuple[str | None, str]:
        with sync_client(gateway) as client:
            completion = client.chat.completions.create(
                model="agent:helper", messages=[{"role": "user", "content": "sync hello"}]
            )
            stream = client.chat.completions.create(
                model="agent:helper",
                messages=[{"role": "user", "content": "sync stream"}],
                stream=True,
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return completion.choices[0].message.content, streamed

    content, streamed = await trio.to_thread.run_sync(use_sync_client)
    assert content == "sync hello"
    assert streamed == "sync stream"


async def test_sdk_unknown_agent_raises_not_found_listing_agents(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    async with async_client(gateway) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(
                model="epiloop:nobody", messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.code == "model_not_found"
    assert "epiloop:main" in caught.value.message
    assert "epiloop:helper" in caught.value.message


async def test_sdk_wrong_key_raises_authentication_error(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    async with async_client(gateway, api_key="wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(
                model="epiloop", messages=[{"role": "user", "content": "hi"}]
            )


async def test_sdk_invalid_request_raises_bad_request_naming_the_param(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery)
    async with async_client(gateway) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="epiloop", messages=[{"role": "user", "content": "hi"}], temperature=5
            )
    assert caught.value.param == "temperature"


async def test_sdk_stream_error_after_first_byte_raises_api_error(nursery: trio.Nursery) -> None:
    provider = ScriptedProvider([Say("partial "), Fail(ProviderError("upstream exploded"))])
    gateway = await start_gateway(nursery, providers={"local": provider})
    received: list[str] = []
    async with async_client(gateway) as client:
        stream = await client.chat.completions.create(
            model="epiloop", messages=[{"role": "user", "content": "hi"}], stream=True
        )

        async def consume() -> None:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)

        with pytest.raises(openai.APIError) as caught:
            await consume()
    assert received == ["partial "]
    assert "upstream exploded" in caught.value.message


async def test_sdk_lists_agents_as_models(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    async with async_client(gateway) as client:
        models = await client.models.list()
    assert [model.id for model in models.data] == ["epiloop:main", "epiloop:helper"]
    assert all(model.owned_by == "epiloop" for model in models.data)


async def test_sdk_retrieves_an_agent_model_and_refuses_unknown_ones(
    nursery: trio.Nursery,
) -> None:
    gateway = await start_gateway(nursery)
    async with async_client(gateway) as client:
        helper = await client.models.retrieve("epiloop:helper")
        default = await client.models.retrieve("epiloop")
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-4o")
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("agent:ghost")
    assert helper.id == "epiloop:helper"
    assert default.id == "epiloop:main"
