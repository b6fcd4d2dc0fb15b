"""A finished run's result as JSON, the form the shared run registry keeps it in (so that
``agent.wait`` and an idempotent retry reaching another instance get it). Pure; the inverse
functions :func:`encode_result` and :func:`decode_result`.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import GatewayError
from ..messages import ToolCall
from ..providers.base import TokenUsage
from .events import RunResult

__all__ = ["decode_result", "encode_result"]

_STATUSES = ("completed", "failed", "aborted")
_FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")


class KeptError(GatewayError):
    """A finished run's error as another instance kept it: its code and message."""


def encode_result(result: RunResult) -> dict[str, object]:
    """A finished result (as :class:`~trio_gateway.agent.active.ActiveRuns` keeps it) as JSON."""
    error = result.error
    return {
        "status": result.status,
        "text": result.text,
        "finishReason": result.finish_reason,
        "usage": [result.usage.prompt_tokens, result.usage.completion_tokens],
        "error": None if error is None else {"code": error.code, "message": error.message},
        "textDropped": result.text_dropped,
        "toolCalls": [[call.id, call.name, call.arguments] for call in result.tool_calls],
    }


def decode_result(data: Mapping[str, object]) -> RunResult:
    """The inverse of :func:`encode_result` (the error comes back with its code and message)."""
    usage = data.get("usage")
    prompt, completion = usage if isinstance(usage, list) and len(usage) == 2 else (0, 0)
    error_data = data.get("error")
    error: GatewayError | None = None
    if isinstance(error_data, dict):
        code = error_data.get("code")
        error = KeptError(
            str(error_data.get("message", "")), code=None if code is None else str(code)
        )
    calls = data.get("toolCalls")
    tool_calls: tuple[ToolCall, ...] = ()
    if isinstance(calls, list):
        tool_calls = tuple(ToolCall(str(c[0]), str(c[1]), str(c[2])) for c in calls)
    status = data.get("status")
    finish = data.get("finishReason")
    return RunResult(
        status if status in _STATUSES else "failed",  # type: ignore[arg-type]  # checked
        str(data.get("text", "")),
        finish if finish in _FINISH_REASONS else None,  # type: ignore[arg-type]  # checked
        TokenUsage(int(str(prompt)), int(str(completion))),
        error,
        tool_calls=tool_calls,
        text_dropped=bool(data.get("textDropped", False)),
    )
