"""Per-request state the ASGI wrapper owns: cleanups that must run when the request is over.

A streaming response outlives its route function, and quart may never start sending its body
(the client can leave first). Resources the route takes for the response (a run's admission
ticket) are registered here; :class:`~trio_gateway.server.app.GatewayApp` runs them once the
whole request, response included, is finished, whatever happened.
"""

from __future__ import annotations

from collections.abc import Callable

from quart import request

__all__ = ["CLEANUPS_KEY", "request_cleanups"]

#: The key of the cleanup list in the ASGI scope.
CLEANUPS_KEY = "epiloop.cleanups"


def request_cleanups() -> list[Callable[[], None]]:
    """The current request's cleanup list (synchronous callables, run in order)."""
    cleanups = request.scope.get(CLEANUPS_KEY)
    assert isinstance(cleanups, list), "requests are served through GatewayApp"
    return cleanups
