"""Per-request helpers for routes: the cleanups the ASGI wrapper runs when a request is over,
the bearer check, and whether a connection reached a loopback address.

A streaming response outlives its route function, and quart may never start sending its body
(the client can leave first). Resources the route takes for the response (a run's admission
ticket) are registered here; :class:`~trio_gateway.server.app.GatewayApp` runs them once the
whole request, response included, is finished, whatever happened.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping
from weakref import WeakKeyDictionary

from quart import request

from .. import metrics
from ..agent import AgentRuntime
from ..auth import (
    FailedAuthLimiter,
    check_authorization,
    client_address,
    is_loopback_host,
    limiter_exempt,
)
from ..errors import AuthenticationError, AuthRateLimitedError

__all__ = ["CLEANUPS_KEY", "authorize", "guard_credentials", "on_loopback", "request_cleanups"]

#: Each served runtime's failed-auth bookkeeping (the HTTP routes and the control plane share it).
_limiters: WeakKeyDictionary[AgentRuntime, FailedAuthLimiter] = WeakKeyDictionary()

#: The key of the cleanup list in the ASGI scope.
CLEANUPS_KEY = "epiloop.cleanups"


def request_cleanups() -> list[Callable[[], None]]:
    """The current request's cleanup list (synchronous callables, run in order)."""
    cleanups = request.scope.get(CLEANUPS_KEY)
    assert isinstance(cleanups, list), "requests are served through GatewayApp"
    return cleanups


def on_loopback(scope: Mapping[str, object]) -> bool:
    """Whether the connection reached a loopback address (or a UNIX socket, which has no port)."""
    server = scope.get("server")
    if not isinstance(server, list | tuple) or len(server) != 2:
        return False
    host, port = server
    return port is None or (isinstance(host, str) and is_loopback_host(host))


def authorize(runtime: AgentRuntime) -> None:
    """Check the current request's bearer credential against the live config."""
    auth = runtime.config.gateway.auth
    guard_credentials(
        runtime,
        request.scope,
        request.headers.get("X-Forwarded-For"),
        lambda: check_authorization(auth, request.headers.get("Authorization")),
        transport="http",
    )


def guard_credentials(
    runtime: AgentRuntime,
    scope: Mapping[str, object],
    forwarded_for: str | None,
    check: Callable[[], None],
    *,
    transport: str,
) -> None:
    """Run the credential ``check`` under the failed-auth limiter.

    A client address (behind ``gateway.trustedProxies``, the one they forwarded) that failed
    ``maxFailures`` times within ``windowSeconds`` gets 429 with ``Retry-After`` without its
    credentials being checked. Only a direct loopback peer is never limited: an address a
    trusted proxy forwards is, whatever it says.
    """
    config = runtime.config.gateway
    limit = config.auth.rate_limit
    client = scope.get("client")
    peer = client[0] if isinstance(client, list | tuple) and client else None
    trusted = [ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies]
    peer_host = peer if isinstance(peer, str) else None
    address = client_address(peer_host, forwarded_for, trusted)
    limited = limit.enabled and not limiter_exempt(peer_host, forwarded_for, trusted)
    limiter = _limiters.setdefault(runtime, FailedAuthLimiter())
    now = time.monotonic()
    if limited:
        wait = limiter.retry_after(
            address, now=now, max_failures=limit.max_failures, window_seconds=limit.window_seconds
        )
        if wait is not None:
            metrics.AUTH_FAILURES.labels(transport).inc()
            raise AuthRateLimitedError(
                "Too many failed authentication attempts from this address; retry later.",
                retry_after=wait,
            )
    try:
        check()
    except AuthenticationError:
        metrics.AUTH_FAILURES.labels(transport).inc()
        if limited:
            limiter.record_failure(address, now=now)
        raise
