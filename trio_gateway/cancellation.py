"""Why a run was cancelled from outside: the reasons our cancel scopes give, read back.

trio carries the cause of a cancellation on the ``Cancelled`` exception (``source``: deadline,
explicit, nursery, KeyboardInterrupt; ``reason``: the text given to ``cancel(reason=...)``), and a
scope cancelled through its parent inherits the parent's cause. The scopes that can stop a run
from outside use the reasons defined here, and :func:`cancel_cause` turns an exception that ended
a run into one label of :data:`CAUSES` for ``epiloop_cancelled_runs_total``:

- ``client_disconnect``: the client went away. quart-trio cancels the request with no reason when
  the HTTP or WebSocket client disconnects; a streaming response abandoned by a failed send
  says :data:`STREAM_ABANDONED`.
- ``stall``: the client stopped reading a stream for ``gateway.http.streamStallSeconds``.
- ``shutdown``: the gateway is shutting down: a reason of :data:`SHUTDOWN_REASONS`, or a deadline
  (the end of the shutdown grace period) while the gateway drains.
- ``interrupt``: a ``KeyboardInterrupt`` reached the run, or SIGINT in ``epiloop agent --local``
  (on ``epiloop gateway``, SIGINT and SIGTERM start a shutdown).
- ``connection_closed``: the gateway closed the control connection the run belonged to.
- ``other``: any other cancellation (an outer deadline while serving, a failing sibling task).

Imports nothing from the package; pure.
"""

from __future__ import annotations

from typing import Final, Literal

import trio

__all__ = [
    "CAUSES",
    "CONTROL_CLOSING",
    "GATEWAY_SHUTTING_DOWN",
    "INTERRUPTED",
    "SHUTDOWN_REASONS",
    "STREAM_ABANDONED",
    "STREAM_STALLED",
    "WORKER_SHUTTING_DOWN",
    "CancelCause",
    "cancel_cause",
]

CancelCause = Literal[
    "client_disconnect", "stall", "shutdown", "interrupt", "connection_closed", "other"
]
CAUSES: Final[tuple[CancelCause, ...]] = (
    "client_disconnect",
    "stall",
    "shutdown",
    "interrupt",
    "connection_closed",
    "other",
)

#: A streaming response's send loop failed (the client is gone): its producer is cancelled.
STREAM_ABANDONED: Final = "the response stream was abandoned"
#: The client did not take an event within the stall deadline.
STREAM_STALLED: Final = "the client stopped reading the stream"
#: SIGINT stopped a run of ``epiloop agent --local``.
INTERRUPTED: Final = "SIGINT: the user interrupted the run"
#: Prefix of the reason given when the gateway closes a control connection.
CONTROL_CLOSING: Final = "control connection closing: "
#: The gateway is shutting down: what ``serve_gateway`` runs in the background stops.
GATEWAY_SHUTTING_DOWN: Final = "the gateway is shutting down"
#: One worker of ``hypercorn --workers`` is shutting down: its background work stops.
WORKER_SHUTTING_DOWN: Final = "the worker is shutting down"
#: The reasons given by the scopes that end when the gateway (or one worker) shuts down.
SHUTDOWN_REASONS: Final = frozenset({GATEWAY_SHUTTING_DOWN, WORKER_SHUTTING_DOWN})


def cancel_cause(exc: BaseException, *, draining: bool) -> CancelCause | None:
    """The cause of the cancellation ``exc`` stands for; ``None`` when it is not one (an error).

    ``draining``: whether the gateway was draining for shutdown when the run ended. A group
    counts as a cancellation only if everything in it is one; its first leaf gives the cause.
    """
    if isinstance(exc, BaseExceptionGroup):
        leaves = [
            cause for inner in exc.exceptions if (cause := cancel_cause(inner, draining=draining))
        ]
        if not leaves or len(leaves) != len(exc.exceptions):
            return None
        return leaves[0]
    if isinstance(exc, KeyboardInterrupt):
        return "interrupt"
    if not isinstance(exc, trio.Cancelled):
        return None
    reason = exc.reason
    if exc.source == "KeyboardInterrupt" or reason == INTERRUPTED:
        return "interrupt"
    if reason == STREAM_STALLED:
        return "stall"
    if reason in SHUTDOWN_REASONS:
        return "shutdown"
    if reason is not None and reason.startswith(CONTROL_CLOSING):
        return "connection_closed"
    if reason == STREAM_ABANDONED or (reason is None and exc.source == "explicit"):
        return "client_disconnect"
    if exc.source == "deadline" and draining:
        return "shutdown"
    return "other"
