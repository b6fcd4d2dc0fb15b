"""Bearer credential checks. Pure: no I/O, no framework.

``gateway.auth.mode`` selects what a request's ``Authorization: Bearer <secret>`` is compared
with: the token, the password, or nothing at all (mode ``none``, allowed on loopback only). The
comparison is constant-time over SHA-256 digests, so neither the secret's content nor its length
leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from .config import AuthConfig
from .errors import AuthenticationError

__all__ = [
    "bearer_token",
    "check_authorization",
    "check_secret",
    "is_loopback_host",
    "needs_secret",
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


def needs_secret(auth: AuthConfig) -> bool:
    """True when the mode checks a secret but none is configured."""
    return auth.mode != "none" and auth.secret is None


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and the loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
