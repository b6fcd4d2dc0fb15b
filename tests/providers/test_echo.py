"""The offline echo provider."""

from __future__ import annotations

import trio

from trio_gateway.providers import (
    Completion,
    EchoProvider,
    ModelEvent,
    ModelMessage,
    ModelRequest,
    TextDelta,
)


async def collect(provider: EchoProvider, request: ModelRequest) -> tuple[list[str], Completion]:
    pieces: list[str] = []

    async def emit(delta: ModelEvent) -> None:
        assert isinstance(delta, TextDelta)
        pieces.append(delta.text)

    completion = await provider.stream(request, emit)
    return pieces, completion


def request(*messages: ModelMessage, max_tokens: int | None = None) -> ModelRequest:
    return ModelRequest(model="echo", messages=messages, max_tokens=max_tokens)


def system(text: str) -> ModelMessage:
    return ModelMessage("system", text)


def user(text: str) -> ModelMessage:
    return ModelMessage("user", text)


async def test_echo_streams_the_last_user_message_word_by_word() -> None:
    pieces, completion = await collect(
        EchoProvider(pace_seconds=0),
        request(
            system("be nice"), user("old"), ModelMessage("assistant", "x"), user(" hi  you there ")
        ),
    )
    assert pieces == ["hi  ", "you ", "there"]
    assert completion.finish_reason == "stop"
    assert completion.usage.prompt_tokens == 2 + 1 + 1 + 3
    assert completion.usage.completion_tokens == 3


async def test_echo_honours_max_tokens_with_finish_reason_length() -> None:
    pieces, completion = await collect(
        EchoProvider(pace_seconds=0), request(user("a b c d"), max_tokens=2)
    )
    assert pieces == ["a ", "b "]
    assert completion.finish_reason == "length"


async def test_echo_without_user_message_answers_nothing() -> None:
    pieces, completion = await collect(EchoProvider(pace_seconds=0), request(system("s")))
    assert pieces == []
    assert completion.finish_reason == "stop"


async def test_echo_paces_words(autojump_clock: trio.abc.Clock) -> None:
    start = trio.current_time()
    await collect(EchoProvider(pace_seconds=0.5), request(user("a b c")))
    assert trio.current_time() - start == 1.5


async def test_echo_stops_when_cancelled(autojump_clock: trio.abc.Clock) -> None:
    pieces: list[str] = []

    async def emit(delta: ModelEvent) -> None:
        assert isinstance(delta, TextDelta)
        pieces.append(delta.text)

    with trio.move_on_after(1.2):
        await EchoProvider(pace_seconds=0.5).stream(request(user("a b c d e")), emit)
    assert pieces == ["a ", "b "]
