"""Retries before the first token, then fallback along the model chain."""

from __future__ import annotations

import itertools

import pytest
import trio

from trio_gateway.agent.failover import ModelTarget, RetryPolicy, call_with_failover
from trio_gateway.errors import UpstreamError
from trio_gateway.providers import Completion, Emit, ModelEvent, ModelRequest, TextDelta


class FlakyProvider:
    """Fails its first ``failures`` calls with ``error`` (after emitting ``emit_before``)."""

    def __init__(self, failures: int, error: UpstreamError, *, emit_before: str = "") -> None:
        self.failures = failures
        self.error = error
        self.emit_before = emit_before
        self.calls: list[tuple[float, str]] = []

    async def stream(self, request: ModelRequest, emit: Emit) -> Completion:
        self.calls.append((trio.current_time(), request.model))
        if len(self.calls) <= self.failures:
            if self.emit_before:
                await emit(TextDelta(self.emit_before))
            raise self.error
        await emit(TextDelta(f"answer from {request.model}"))
        return Completion("stop")


def retryable(status: int = 503, retry_after: float | None = None) -> UpstreamError:
    return UpstreamError("upstream down", status=status, retryable=True, retry_after=retry_after)


def target(provider: FlakyProvider, model: str, retries: int = 2) -> ModelTarget:
    return ModelTarget(f"p/{model}", provider, model, RetryPolicy(retries, 1.0, 10.0))


async def collect(chain: list[ModelTarget]) -> tuple[list[str], str]:
    texts: list[str] = []

    async def emit(event: ModelEvent) -> None:
        assert isinstance(event, TextDelta)
        texts.append(event.text)

    _, used = await call_with_failover(chain, ModelRequest(model="", messages=()), emit)
    return texts, used.ref


async def test_failover_retries_with_exponential_backoff(autojump_clock: trio.abc.Clock) -> None:
    provider = FlakyProvider(2, retryable())
    texts, used = await collect([target(provider, "m")])
    assert texts == ["answer from m"]
    assert used == "p/m"
    starts = [at for at, _ in provider.calls]
    assert [b - a for a, b in itertools.pairwise(starts)] == pytest.approx([1.0, 2.0])


async def test_failover_honours_retry_after(autojump_clock: trio.abc.Clock) -> None:
    provider = FlakyProvider(1, retryable(429, retry_after=7.5))
    await collect([target(provider, "m")])
    assert provider.calls[1][0] - provider.calls[0][0] == pytest.approx(7.5)


async def test_failover_falls_back_after_retries_run_out(autojump_clock: trio.abc.Clock) -> None:
    primary = FlakyProvider(100, retryable())
    backup = FlakyProvider(0, retryable())
    texts, used = await collect([target(primary, "big", retries=1), target(backup, "small")])
    assert len(primary.calls) == 2
    assert texts == ["answer from small"]
    assert used == "p/small"


async def test_failover_does_not_retry_what_cannot_succeed(autojump_clock: trio.abc.Clock) -> None:
    primary = FlakyProvider(100, UpstreamError("bad key", status=401, retryable=False))
    backup = FlakyProvider(0, retryable())
    _, used = await collect([target(primary, "a"), target(backup, "b")])
    assert len(primary.calls) == 1
    assert used == "p/b"


async def test_failover_never_retries_after_the_first_token(
    autojump_clock: trio.abc.Clock,
) -> None:
    primary = FlakyProvider(1, retryable(), emit_before="partial")
    backup = FlakyProvider(0, retryable())
    with pytest.raises(UpstreamError):
        await collect([target(primary, "a"), target(backup, "b")])
    assert len(primary.calls) == 1
    assert backup.calls == []


async def test_failover_raises_the_last_error_when_all_fail(autojump_clock: trio.abc.Clock) -> None:
    first = FlakyProvider(100, UpstreamError("first", status=500, retryable=True))
    last = FlakyProvider(100, UpstreamError("last", status=502, retryable=True))
    with pytest.raises(UpstreamError) as caught:
        await collect([target(first, "a", retries=0), target(last, "b", retries=0)])
    assert caught.value.message == "last"


def test_retry_policy_delay_is_capped() -> None:
    policy = RetryPolicy(10, 1.0, 5.0)
    assert [policy.delay(n, None) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay(0, 30.0) == 30.0


async def test_failover_moves_on_when_retry_after_is_too_long(
    autojump_clock: trio.abc.Clock,
) -> None:
    primary = FlakyProvider(100, retryable(429, retry_after=3600))
    backup = FlakyProvider(0, retryable())
    start = trio.current_time()
    _, used = await collect([target(primary, "a"), target(backup, "b")])
    assert used == "p/b"
    assert len(primary.calls) == 1
    assert trio.current_time() == start
