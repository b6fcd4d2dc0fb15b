"""Images in, end to end: the official openai SDK sends image parts to a real gateway whose
agents run on the mock upstream (OpenAI Chat Completions and Anthropic Messages), and the tests
check what the upstream received, what the session stored, and what is refused."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import openai
import pytest
import trio
from gateway_harness import TOKEN, RunningGateway, merge, start_gateway
from image_samples import JPEG, data_url, png

from benchmarks.mock_upstream import MockUpstream, Scenario
from trio_gateway.sessions import MemorySessionStore, open_sqlite_store

PNG = png(5, pad=200)
PNG_URL = data_url(PNG)
REMOTE = "https://images.example/cat.png"

VISION = {"id": "gpt-vision", "input": ["text", "image"]}


async def start_mock(nursery: trio.Nursery) -> MockUpstream:
    mock = MockUpstream({"default": Scenario(tokens=["I", " see"], usage=(5, 2))})
    await nursery.start(mock.serve)
    return mock


async def start_vision_gateway(
    nursery: trio.Nursery, mock: MockUpstream, override: dict[str, Any] | None = None, **kwargs: Any
) -> RunningGateway:
    base: dict[str, Any] = {
        "models": {
            "providers": {
                "up": {
                    "api": "openai-chat",
                    "baseUrl": mock.openai_base_url,
                    "apiKey": "sk-upstream",
                    "maxRetries": 0,
                    "models": [VISION, "gpt-text"],
                },
                "an": {
                    "api": "anthropic-messages",
                    "baseUrl": mock.anthropic_base_url,
                    "apiKey": "sk-ant",
                    "models": [{"id": "claude-vision", "input": ["text", "image"]}],
                },
            }
        },
        "agents": {
            "defaults": {"model": "up/gpt-vision"},
            "list": [
                {"id": "main", "default": True, "systemPrompt": "Look."},
                {"id": "claude", "model": "an/claude-vision"},
                {"id": "blind", "model": "up/gpt-text"},
            ],
        },
    }
    return await start_gateway(nursery, merge(base, override or {}), **kwargs)


def client(gateway: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.api_url, api_key=TOKEN, max_retries=0)


def look(url: str, text: str = "what is this?", **image: Any) -> Any:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url, **image}},
        ],
    }


def user_messages(body: Any) -> list[Any]:
    return [message for message in body["messages"] if message["role"] == "user"]


async def test_images_data_url_reaches_openai_upstream_as_an_image_part(
    nursery: trio.Nursery,
) -> None:
    mock = await start_mock(nursery)
    gateway = await start_vision_gateway(nursery, mock)
    async with client(gateway) as sdk:
        completion = await sdk.chat.completions.create(
            model="epiloop:main", messages=[look(PNG_URL, detail="high")]
        )
    assert completion.choices[0].message.content == "I see"
    (message,) = user_messages(mock.requests[0].json)
    assert message["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "high"}},
    ]


async def test_images_https_url_is_passed_on_as_a_url(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery)
    gateway = await start_vision_gateway(nursery, mock)
    async with client(gateway) as sdk:
        stream = await sdk.chat.completions.create(
            model="epiloop:main", messages=[look(REMOTE)], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "I see"
    (message,) = user_messages(mock.requests[0].json)
    assert message["content"][1] == {"type": "image_url", "image_url": {"url": REMOTE}}


async def test_images_reach_anthropic_upstream_as_image_blocks(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery)
    gateway = await start_vision_gateway(nursery, mock)
    async with client(gateway) as sdk:
        await sdk.chat.completions.create(
            model="epiloop:claude",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "compare"},
                        {"type": "image_url", "image_url": {"url": PNG_URL}},
                        {"type": "image_url", "image_url": {"url": REMOTE}},
                    ],
                }
            ],
        )
    body = mock.requests[0].json
    assert mock.requests[0].path == "/v1/messages"
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "compare"},
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": base64.b64encode(PNG).decode(),
                    },
                },
                {"type": "image", "source": {"type": "url", "url": REMOTE}},
            ],
        }
    ]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_images_stable_session_replays_the_image_and_stores_it_once(
    nursery: trio.Nursery, tmp_path: Path, kind: str
) -> None:
    mock = await start_mock(nursery)
    if kind == "memory":
        store: Any = MemorySessionStore()
    else:
        store = await nursery.start(_open_sqlite, tmp_path / "sessions.sqlite")
    gateway = await start_vision_gateway(nursery, mock, sessions=store)
    headers = {"x-epiloop-session-key": "agent:main:pictures"}
    async with client(gateway) as sdk:
        first = look(PNG_URL)
        await sdk.chat.completions.create(
            model="epiloop:main", messages=[first], extra_headers=headers
        )
        # The second turn sends only its new message: the stored image is replayed.
        await sdk.chat.completions.create(
            model="epiloop:main",
            messages=[{"role": "user", "content": "and now?"}],
            extra_headers=headers,
        )
        # A client that resends the whole history, image included, continues the session.
        await sdk.chat.completions.create(
            model="epiloop:main",
            messages=[
                first,
                {"role": "assistant", "content": "I see"},
                {"role": "user", "content": "and now?"},
                {"role": "assistant", "content": "I see"},
                {"role": "user", "content": "last one"},
            ],
            extra_headers=headers,
        )
    replayed = user_messages(mock.requests[1].json)
    assert replayed[0]["content"][1] == {"type": "image_url", "image_url": {"url": PNG_URL}}
    assert replayed[1] == {"role": "user", "content": "and now?"}
    third = user_messages(mock.requests[2].json)
    assert [m["content"] if isinstance(m["content"], str) else "image" for m in third] == [
        "image",
        "and now?",
        "last one",
    ]
    session = await store.get("agent:main:pictures")
    assert session is not None
    assert [entry.content for entry in session.transcript] == [
        "what is this?",
        "I see",
        "and now?",
        "I see",
        "last one",
        "I see",
    ]
    images = [image for entry in session.transcript for image in entry.images]
    assert [image.sha256 for image in images] == [hashlib.sha256(PNG).hexdigest()]
    if kind == "memory":
        assert list(store.images) == [hashlib.sha256(PNG).hexdigest()]


async def _open_sqlite(path: Path, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with open_sqlite_store(path) as store:
        task_status.started(store)
        await trio.sleep_forever()


async def assert_refused(
    gateway: RunningGateway, messages: list[Any], status: int, code: str, param: str, **kw: Any
) -> openai.APIStatusError:
    async with client(gateway) as sdk:
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(messages=messages, **{"model": "epiloop", **kw})
    error = caught.value
    assert error.status_code == status
    assert isinstance(error.body, dict)
    assert (error.body.get("code"), error.body.get("param")) == (code, param)
    assert param in str(error.body.get("message"))
    return error


async def test_images_refused_for_a_text_only_model(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery)
    gateway = await start_vision_gateway(nursery, mock)
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "hi"},
        look(PNG_URL),
    ]
    error = await assert_refused(
        gateway,
        messages,
        400,
        "image_input_unsupported",
        "messages[2].content[1]",
        model="epiloop:blind",
    )
    assert "'up/gpt-text'" in error.message
    assert not mock.requests


async def test_images_refused_when_the_bytes_are_not_what_the_label_says(
    nursery: trio.Nursery,
) -> None:
    mock = await start_mock(nursery)
    gateway = await start_vision_gateway(nursery, mock)
    html = data_url(b"<html><body>not an image</body></html>")
    await assert_refused(gateway, [look(html)], 400, "invalid_image", "messages[0].content[1]")
    jpeg_as_png = data_url(JPEG)
    error = await assert_refused(
        gateway, [look(jpeg_as_png)], 400, "invalid_image", "messages[0].content[1]"
    )
    assert "'image/jpeg'" in error.message
    assert not mock.requests


async def test_images_refused_when_too_large_or_too_many(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery)
    limits = {"maxBytes": 4096, "maxTotalBytes": 6000, "maxParts": 2}
    gateway = await start_vision_gateway(nursery, mock, {"gateway": {"http": {"images": limits}}})
    big = data_url(png(1, pad=5000))
    await assert_refused(gateway, [look(big)], 413, "image_too_large", "messages[0].content[1]")
    medium = data_url(png(2, pad=3500))
    await assert_refused(
        gateway,
        [look(medium), look(medium)],
        413,
        "images_too_large",
        "messages[1].content[1]",
    )
    small = data_url(png(3))
    await assert_refused(
        gateway,
        [look(small), {"role": "user", "content": "x"}, look(small), look(small)],
        400,
        "too_many_images",
        "messages[3].content[1]",
    )
    assert not mock.requests
    async with client(gateway) as sdk:  # within every limit: served
        await sdk.chat.completions.create(model="epiloop", messages=[look(small), look(medium)])
    assert len(mock.requests) == 1


async def test_images_fetch_refuses_a_loopback_address(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery)
    override = {
        "gateway": {"http": {"images": {"fetch": {"enabled": True}}}},
        "tools": {"httpFetch": {"allowHosts": ["127.0.0.1", "localhost"]}},
    }
    gateway = await start_vision_gateway(nursery, mock, override)
    for url in ("https://127.0.0.1/cat.png", "https://localhost:8443/cat.png"):
        error = await assert_refused(
            gateway, [look(url)], 400, "image_fetch_failed", "messages[0].content[1]"
        )
        assert "public addresses only" in error.message
    error = await assert_refused(
        gateway, [look(REMOTE)], 400, "image_fetch_failed", "messages[0].content[1]"
    )
    assert "tools.httpFetch.allowHosts" in error.message
    assert not mock.requests


async def test_images_session_limit_is_a_clear_413(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery)
    gateway = await start_vision_gateway(nursery, mock, {"session": {"maxImages": 1}})
    headers = {"x-epiloop-session-key": "agent:main:album"}
    async with client(gateway) as sdk:
        await sdk.chat.completions.create(
            model="epiloop", messages=[look(data_url(png(1)))], extra_headers=headers
        )
        # The same image again fits (it is the same image); another one does not.
        await sdk.chat.completions.create(
            model="epiloop", messages=[look(data_url(png(1)))], extra_headers=headers
        )
    await assert_refused(
        gateway,
        [look(data_url(png(2)))],
        413,
        "session_images_too_large",
        "messages[0].content[1]",
        extra_headers=headers,
    )
    assert len(mock.requests) == 2


async def test_images_echo_provider_describes_what_it_received(nursery: trio.Nursery) -> None:
    gateway = await start_gateway(nursery)
    async with client(gateway) as sdk:
        completion = await sdk.chat.completions.create(
            model="epiloop", messages=[look(PNG_URL, text="describe"), look(REMOTE, text="and")]
        )
    digest = hashlib.sha256(PNG).hexdigest()[:16]
    assert completion.choices[0].message.content == f"and\n[image 1: url {REMOTE}]"
    async with client(gateway) as sdk:
        completion = await sdk.chat.completions.create(
            model="epiloop", messages=[look(PNG_URL, text="describe")]
        )
    assert completion.choices[0].message.content == (
        f"describe\n[image 1: image/png, {len(PNG)} bytes, sha256 {digest}]"
    )


async def test_images_responses_input_image_reaches_the_upstream(nursery: trio.Nursery) -> None:
    mock = await start_mock(nursery)
    gateway = await start_vision_gateway(
        nursery, mock, {"gateway": {"http": {"endpoints": {"responses": {"enabled": True}}}}}
    )
    async with client(gateway) as sdk:
        looking: Any = [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this?"},
                    {"type": "input_image", "image_url": PNG_URL, "detail": "auto"},
                ],
            }
        ]
        response = await sdk.responses.create(model="epiloop:main", input=looking)
        assert response.output_text == "I see"
        blind: Any = [{"role": "user", "content": [{"type": "input_image", "image_url": PNG_URL}]}]
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.responses.create(model="epiloop:blind", input=blind)
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body.get("param") == "input[0].content[0]"
    (message,) = user_messages(mock.requests[0].json)
    assert message["content"][1] == {
        "type": "image_url",
        "image_url": {"url": PNG_URL, "detail": "auto"},
    }
