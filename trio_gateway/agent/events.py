"""The typed events an agent run emits, in order.

``RunStarted``, then any number of ``TextDelta`` (shared with the providers: it is passed through
untouched on the hot path), then exactly one of ``RunFinished`` (with the stop reason and the
usage of every model call) or ``RunFailed``. A cancelled run emits no final event: its consumer
is gone or is the one that cancelled it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GatewayError
from ..providers.base import FinishReason, TextDelta, TokenUsage

__all__ = ["RunEvent", "RunFailed", "RunFinished", "RunStarted", "TextDelta"]


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_id: str
    agent_id: str
    session_key: str
    model: str


@dataclass(frozen=True, slots=True)
class RunFinished:
    finish_reason: FinishReason
    usage: TokenUsage


@dataclass(frozen=True, slots=True)
class RunFailed:
    error: GatewayError


RunEvent = RunStarted | TextDelta | RunFinished | RunFailed
