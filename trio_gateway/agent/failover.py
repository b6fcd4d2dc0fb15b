"""Retries and fallback around one model call.

An agent has a chain of models: its ``model`` then its ``fallbacks``. A call goes to the first;
while nothing has been emitted yet, a *retryable* upstream failure (429, 5xx, connection errors,
timeouts) is retried with exponential backoff (``retryDelaySeconds``, doubled each time, capped
at ``retryMaxDelaySeconds``, and never sooner than the upstream's ``Retry-After``) up to
``maxRetries`` times; then, or at once for a failure that retrying cannot fix, the next model in
the chain is tried — at once, too, when the upstream asks to wait longer than
``retryMaxDelaySeconds``. Once the first event has been emitted there is no retry and no fallback:
the client has seen output, so the error is surfaced as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import trio

from .. import metrics
from ..config import AgentConfig, Config
from ..config.schema import EchoProviderConfig
from ..errors import ProviderError, UpstreamError
from ..providers.base import Completion, Emit, ModelEvent, ModelRequest, Provider

__all__ = ["ModelTarget", "RetryPolicy", "call_with_failover", "model_chain"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 0
    delay_seconds: float = 0.5
    max_delay_seconds: float = 20.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before retry number ``attempt`` (0-based)."""
        backoff = min(self.max_delay_seconds, self.delay_seconds * 2.0**attempt)
        return max(backoff, retry_after or 0.0)


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """One link of the chain: ``ref`` is ``"<provider>/<model>"``."""

    ref: str
    provider: Provider
    model: str
    retry: RetryPolicy
    #: Whether the model accepts images (``"image"`` among its configured ``input`` kinds).
    images: bool = False


async def call_with_failover(
    chain: Sequence[ModelTarget], request: ModelRequest, emit: Emit
) -> tuple[Completion, ModelTarget]:
    """Call the chain as described in the module docstring; return the completion and the
    link that produced it. Raises the last link's error when every link failed."""
    assert chain, "an agent always has a model"
    last_error: ProviderError | None = None
    for target in chain:
        attempt = 0
        call_request = replace(request, model=target.model)
        while True:
            emitted = False

            async def tracking_emit(event: ModelEvent) -> None:
                nonlocal emitted
                emitted = True
                await emit(event)

            try:
                completion = await target.provider.stream(call_request, tracking_emit)
            except UpstreamError as exc:
                metrics.UPSTREAM_ERRORS.labels(
                    target.ref.partition("/")[0], exc.code or "error"
                ).inc()
                if emitted:
                    raise
                last_error = exc
                too_long = (exc.retry_after or 0.0) > target.retry.max_delay_seconds
                if exc.retryable and attempt < target.retry.max_retries and not too_long:
                    delay = target.retry.delay(attempt, exc.retry_after)
                    logger.info(
                        "model.retry model=%s attempt=%d delay_s=%.2f status=%s",
                        target.ref,
                        attempt + 1,
                        delay,
                        exc.status,
                    )
                    await trio.sleep(delay)
                    attempt += 1
                    continue
                logger.info(
                    "model.failed model=%s status=%s retryable=%s",
                    target.ref,
                    exc.status,
                    exc.retryable,
                )
                break
            return completion, target
    assert last_error is not None
    raise last_error


def model_chain(
    agent: AgentConfig, config: Config, providers: Mapping[str, Provider]
) -> tuple[ModelTarget, ...]:
    """``agent``'s chain: its model then its fallbacks (or the defaults'), each with its
    provider from ``providers`` and that provider's retry policy."""
    defaults = config.agents.defaults
    fallbacks = agent.fallbacks if agent.fallbacks is not None else defaults.fallbacks
    chain = []
    for ref in (agent.model or defaults.model, *fallbacks):
        provider_name, _, model = ref.partition("/")
        provider = providers.get(provider_name)
        if provider is None:
            raise ProviderError(f"No provider named {provider_name!r} is available.")
        settings = config.models.providers.get(provider_name)
        retry = RetryPolicy()
        if settings is not None and not isinstance(settings, EchoProviderConfig):
            retry = RetryPolicy(
                settings.max_retries,
                settings.retry_delay_seconds,
                settings.retry_max_delay_seconds,
            )
        images = settings is not None and settings.accepts_images(model)
        chain.append(ModelTarget(ref, provider, model, retry, images))
    return tuple(chain)
