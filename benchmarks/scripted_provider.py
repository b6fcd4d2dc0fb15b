"""A provider that plays a script: the fake for tests and benchmarks.

It lives here, beside the mock upstream, because it is test tooling: ``trio_gateway`` neither
imports nor exports it. Tests import it as ``benchmarks.scripted_provider``.

It is a real implementation of the provider protocol, not a mock: each call plays the same steps
(say some text, pause, fail, hang) and records what happened to it, including when and whether
it was cancelled, so tests can assert that a client disconnect really stopped the work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from trio_gateway.errors import GatewayError
from trio_gateway.providers.base import (
    Completion,
    Emit,
    FinishReason,
    ModelRequest,
    TextDelta,
    TokenUsage,
)

__all__ = ["Fail", "Hang", "Pause", "Say", "ScriptedProvider"]


@dataclass(frozen=True, slots=True)
class Say:
    text: str


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float


@dataclass(frozen=True, slots=True)
class Fail:
    error: GatewayError


@dataclass(frozen=True, slots=True)
class Hang:
    """Wait until cancelled."""


Step = Say | Pause | Fail | Hang


@dataclass
class CallRecord:
    """What happened to one call of the provider."""

    request: ModelRequest
    started_at: float
    ended_at: float | None = None
    outcome: str = "running"  # "completed" | "failed" | "cancelled"
    emitted: list[str] = field(default_factory=list)


class ScriptedProvider:
    """Plays ``steps`` on every call, then finishes with ``finish_reason`` and ``usage``."""

    def __init__(
        self,
        steps: Sequence[Step],
        *,
        finish_reason: FinishReason = "stop",
        usage: TokenUsage | None = None,
    ) -> None:
        self.steps = tuple(steps)
        self.finish_reason: FinishReason = finish_reason
        self.usage = usage
        self.calls: list[CallRecord] = []
        self.call_started = trio.Event()
        self.call_ended = trio.Event()

    async def stream(self, request: ModelRequest, emit: Emit) -> Completion:
        record = CallRecord(request=request, started_at=trio.current_time())
        self.calls.append(record)
        self.call_started.set()
        try:
            for step in self.steps:
                if isinstance(step, Say):
                    await emit(TextDelta(step.text))
                    record.emitted.append(step.text)
                    # A real upstream yields between tokens (it waits for the network).
                    await trio.lowlevel.checkpoint()
                elif isinstance(step, Pause):
                    await trio.sleep(step.seconds)
                elif isinstance(step, Fail):
                    raise step.error
                else:
                    await trio.sleep_forever()
            await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            record.outcome = "cancelled"
            raise
        except BaseException:
            record.outcome = "failed"
            raise
        else:
            record.outcome = "completed"
        finally:
            record.ended_at = trio.current_time()
            self.call_ended.set()
        usage = self.usage or TokenUsage(
            sum(len(m.content.split()) for m in request.messages), len(record.emitted)
        )
        return Completion(self.finish_reason, usage)
