"""Bearer credential checks, and the ``Origin`` check of browser connections. Pure: no I/O, no
framework.

``gateway.auth.mode`` selects what a request's ``Authorization: Bearer <secret>`` is compared
with: the token, the password, or nothing at all (mode ``none``, allowed on loopback only). The
comparison is constant-time over SHA-256 digests, so neither the secret's content nor its length
leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections import OrderedDict, deque
from collections.abc import Sequence

from .config import AuthConfig
from .errors import AuthenticationError, ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = [
    "FailedAuthLimiter",
    "IPNetwork",
    "bearer_token",
    "check_authorization",
    "check_exposure",
    "check_secret",
    "client_address",
    "is_loopback_host",
    "limiter_exempt",
    "needs_secret",
    "origin_allowed",
]


def bearer_token(header: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer ...`` header (scheme case-insensitive)."""
    if not header:
        return None
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credential.strip() or None


def check_authorization(auth: AuthConfig, header: str | None) -> None:
    """Raise :class:`AuthenticationError` unless ``header`` carries the configured secret."""
    if auth.mode == "none":
        return
    given = bearer_token(header)
    if given is None:
        raise AuthenticationError(
            f"Missing bearer credential: send 'Authorization: Bearer <your gateway {auth.mode}>'."
        )
    _check(auth, given, "bearer credential")


def check_secret(auth: AuthConfig, token: str | None, password: str | None) -> None:
    """Check credentials given as fields (the control plane's ``connect``), not a header."""
    if auth.mode == "none":
        return
    given = token if auth.mode == "token" else password
    if not given:
        raise AuthenticationError(f"Missing credential: send the gateway {auth.mode}.")
    _check(auth, given, "credential")


def _check(auth: AuthConfig, given: str, what: str) -> None:
    secret = auth.secret
    if secret is None or not _same(given, secret):
        raise AuthenticationError(f"Invalid {what} (gateway auth mode: {auth.mode}).")


def _same(given: str, secret: str) -> bool:
    return hmac.compare_digest(
        hashlib.sha256(given.encode("utf-8")).digest(),
        hashlib.sha256(secret.encode("utf-8")).digest(),
    )


_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host[:port]`` (IPv6 in brackets), lowercased, the port defaulted;
    ``None`` if it is not one."""
    netloc = netloc.lower()
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            return None
        host, rest = netloc[: end + 1], netloc[end + 1 :]
    else:
        host, colon, port = netloc.partition(":")
        rest = colon + port
    if rest and not rest.startswith(":"):
        return None
    port = rest[1:] or _DEFAULT_PORTS[scheme]
    if not host or not (port.isascii() and port.isdigit()):
        return None
    return host, int(port)


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a WebSocket upgrade with this ``Origin`` header may proceed.

    No ``Origin``: not a browser (the CLI, an SDK), allowed; the credential check decides. A
    browser sends one, and the page's own origin is the one whose ``host[:port]`` equals the
    ``Host`` header the connection came with (scheme default ports aside). Any other origin must
    be listed in ``allowed`` (``gateway.controlUi.allowedOrigins``); ``null`` (a sandboxed or
    file page) never is.
    """
    if origin is None:
        return True
    given = origin.strip().rstrip("/").lower()
    if any(given == entry.strip().rstrip("/").lower() for entry in allowed):
        return True
    scheme, sep, netloc = given.partition("://")
    if not sep or scheme not in _DEFAULT_PORTS or host is None:
        return False
    page = _host_port(netloc, scheme)
    return page is not None and page == _host_port(host.strip(), scheme)


def needs_secret(auth: AuthConfig) -> bool:
    """True when the mode checks a secret but none is configured."""
    return auth.mode != "none" and auth.secret is None


def check_exposure(host: str, auth: AuthConfig) -> None:
    """Refuse to serve ``host`` beyond loopback without a credential check.

    The one rule for start-up and for every reload (by signal, CLI or control plane): mode
    ``none`` is allowed on loopback only, and a mode that checks a secret needs one.
    """
    if is_loopback_host(host):
        return
    if auth.mode == "none":
        raise ConfigError(
            f'refusing to bind {host}: gateway.auth.mode is "none", which is allowed on '
            'loopback only. Use mode "token" with a token (gateway.auth.token or '
            'EPILOOP_GATEWAY_TOKEN), or bind "loopback".',
            path="gateway.bind",
        )
    if needs_secret(auth):
        variable = "EPILOOP_GATEWAY_TOKEN" if auth.mode == "token" else "EPILOOP_GATEWAY_PASSWORD"
        raise ConfigError(
            f"refusing to bind {host}: auth mode {auth.mode!r} but no {auth.mode} is set "
            f"(gateway.auth.{auth.mode} or {variable}).",
            path="gateway.bind",
        )


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and the loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class FailedAuthLimiter:
    """Counts failed credential checks per client address in a sliding window.

    Pure bookkeeping: the caller says what time it is (``now``) and what the limits are, so the
    limits follow config reloads and tests need no clock. At most ``max_clients`` addresses are
    tracked; the least recently failing is forgotten first.
    """

    def __init__(self, *, max_clients: int = 10_000) -> None:
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._max_clients = max_clients

    def retry_after(
        self, client: str, *, now: float, max_failures: int, window_seconds: float
    ) -> float | None:
        """Seconds until ``client`` may try again, or ``None`` when it may try now."""
        failures = self._failures.get(client)
        if failures is None:
            return None
        while failures and failures[0] <= now - window_seconds:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        if len(failures) < max_failures:
            return None
        return failures[-max_failures] + window_seconds - now

    def record_failure(self, client: str, *, now: float) -> None:
        failures = self._failures.pop(client, None) or deque(maxlen=1000)
        failures.append(now)
        self._failures[client] = failures  # most recent last
        while len(self._failures) > self._max_clients:
            self._failures.popitem(last=False)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> str:
    """The address a request comes from: the peer, or, when the peer is a trusted proxy, the
    nearest address in ``X-Forwarded-For`` that is not one of the trusted proxies."""
    if peer is None:
        return "unknown"
    hops = _hops(forwarded_for)
    if not hops or not _in(peer, trusted):
        return peer
    for hop in reversed(hops):
        if not _in(hop, trusted):
            return hop
    return hops[0]


def limiter_exempt(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> bool:
    """True when the failed-auth limiter leaves the request alone: only a direct loopback peer.

    A request that carries ``X-Forwarded-For`` is never exempt, whether or not its peer is a
    trusted proxy and whatever address it names: a proxy on the same host (listed in
    ``trustedProxies`` or not) passes on whatever its client wrote, and a real local client
    does not send the header.
    """
    del trusted  # the answer does not depend on it: any forwarded request is limited
    if peer is None or not is_loopback_host(peer):
        return False
    return not _hops(forwarded_for)


def _hops(forwarded_for: str | None) -> list[str]:
    if not forwarded_for:
        return []
    return [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]


def _in(address: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in networks)
