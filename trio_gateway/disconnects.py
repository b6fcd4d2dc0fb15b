"""Dropping upstream work the moment a client is known to be gone.

When an HTTP client disconnects, quart-trio learns it in one task and cancels the request's
tasks; the cancellation reaches a run's upstream read one or two scheduling rounds later, and
under load each round can take a few milliseconds. The server layer opens a hook list per
request (:func:`open_request_hooks`) and runs it synchronously where the disconnect is first
seen (:func:`run_hooks`); the upstream transport registers, for as long as a connection is in
use by the request, a hook that shuts the connection down (:func:`register`), so the upstream
sees the close in the same step. The run's cancellation follows as before and closes the
connection for good.

The list travels in a context variable: a run's tasks are started from the request's task and
inherit its context (so they share the list), and code outside an HTTP request (the control
plane, the CLI) has no list, so registering is a no-op there. A hook must be synchronous, quick
and safe to call at any time (it runs in another task); it is removed before its connection can
be reused for another request.

This module is shared by the server and provider layers and imports neither.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from contextvars import ContextVar, Token

__all__ = ["Hook", "open_request_hooks", "register", "reset_request_hooks", "run_hooks"]

logger = logging.getLogger(__name__)

Hook = Callable[[], None]

_hooks: ContextVar[list[Hook] | None] = ContextVar("epiloop_disconnect_hooks", default=None)


def open_request_hooks() -> tuple[list[Hook], Token[list[Hook] | None]]:
    """A new hook list for the current request (and the tasks it starts from now on)."""
    hooks: list[Hook] = []
    return hooks, _hooks.set(hooks)


def reset_request_hooks(token: Token[list[Hook] | None]) -> None:
    _hooks.reset(token)


def register(hook: Hook) -> Callable[[], None]:
    """Run ``hook`` if the current request's client goes away; returns the function that
    unregisters it (idempotent; a no-op outside a request)."""
    hooks = _hooks.get()
    if hooks is None:
        return _nothing
    hooks.append(hook)

    def unregister() -> None:
        with suppress(ValueError):  # already removed, or run
            hooks.remove(hook)

    return unregister


def run_hooks(hooks: list[Hook]) -> None:
    """Run (and forget) every registered hook; one that fails does not stop the others."""
    pending = hooks[:]
    hooks.clear()
    for hook in pending:
        try:
            hook()
        except Exception:
            logger.exception("disconnect.hook.failed")


def _nothing() -> None:
    pass
