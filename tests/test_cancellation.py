"""Reading back why a run was cancelled, from real ``trio.Cancelled`` exceptions."""

from __future__ import annotations

import pytest
import trio

from trio_gateway.cancellation import (
    CONTROL_CLOSING,
    GATEWAY_SHUTTING_DOWN,
    INTERRUPTED,
    STREAM_ABANDONED,
    STREAM_STALLED,
    WORKER_SHUTTING_DOWN,
    CancelCause,
    cancel_cause,
)


async def _cancelled_by(reason: str | None) -> trio.Cancelled:
    """The exception a task sees when an enclosing scope is cancelled with ``reason``."""
    with trio.CancelScope() as outer:
        try:
            with trio.CancelScope():  # inherits the outer scope's cause
                outer.cancel(reason=reason)
                await trio.sleep_forever()
        except trio.Cancelled as exc:
            caught = exc
            raise
    return caught


async def _cancelled_by_deadline() -> trio.Cancelled:
    with trio.move_on_after(0):
        try:
            await trio.sleep_forever()
        except trio.Cancelled as exc:
            caught = exc
            raise
    return caught


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        (None, "client_disconnect"),  # quart-trio, when the client goes away
        (STREAM_ABANDONED, "client_disconnect"),
        (STREAM_STALLED, "stall"),
        (GATEWAY_SHUTTING_DOWN, "shutdown"),
        (WORKER_SHUTTING_DOWN, "shutdown"),
        (INTERRUPTED, "interrupt"),
        (CONTROL_CLOSING + "auth_expired", "connection_closed"),
        ("some other reason", "other"),
    ],
)
async def test_cancel_cause_of_an_explicit_cancel(reason: str | None, cause: CancelCause) -> None:
    exc = await _cancelled_by(reason)
    assert cancel_cause(exc, draining=False) == cause
    assert cancel_cause(exc, draining=True) == cause


async def test_cancel_cause_of_a_deadline_is_shutdown_only_while_draining() -> None:
    exc = await _cancelled_by_deadline()
    assert cancel_cause(exc, draining=True) == "shutdown"
    assert cancel_cause(exc, draining=False) == "other"


async def test_cancel_cause_of_keyboard_interrupt_and_of_errors() -> None:
    assert cancel_cause(KeyboardInterrupt(), draining=False) == "interrupt"
    assert cancel_cause(RuntimeError("a bug"), draining=False) is None
    stalled = await _cancelled_by(STREAM_STALLED)
    assert cancel_cause(BaseExceptionGroup("g", [stalled]), draining=False) == "stall"
    mixed = BaseExceptionGroup("g", [stalled, RuntimeError("a bug")])
    assert cancel_cause(mixed, draining=False) is None
