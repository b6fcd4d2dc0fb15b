"""How the control client's failures are named: the ``code`` of a gateway that could not be
reached or refused the credentials, and the :class:`~trio_gateway.errors.ControlPlaneError` for a
connection the gateway closed (its close code, the meaning ``wire.control`` gives it).

This module imports nothing from the server and does no I/O.
"""

from __future__ import annotations

from trio_websocket import CloseReason

from ..errors import ControlPlaneError
from ..wire import control as protocol

__all__ = ["AUTH_FAILED", "GATEWAY_UNREACHABLE", "ControlError", "closed_error", "is_auth_failure"]

#: ``code`` when the gateway could not be reached at all.
GATEWAY_UNREACHABLE = "gateway_unreachable"
#: ``code`` when the credentials were refused (a ``connect`` error or close code 4001).
AUTH_FAILED = "auth_failed"

#: The public name for control-plane errors (the class lives in the one error tree).
ControlError = ControlPlaneError


def is_auth_failure(error: ControlPlaneError) -> bool:
    """True when the gateway refused the credentials."""
    return (
        error.code in (AUTH_FAILED, "invalid_api_key")
        or error.close_code == protocol.AUTH_FAILED.code
    )


def closed_error(reason: CloseReason | None, *, url: str) -> ControlPlaneError:
    """The error for a connection that closed with ``reason`` (``None``: no close frame)."""
    code = protocol.CONNECTION_LOST.code if reason is None else reason.code
    said = (reason.reason if reason is not None else None) or ""
    known = protocol.closing_for_code(code)
    closing = protocol.CONNECTION_CLOSED if known is None else known
    name, meaning = closing.name, closing.meaning
    if code >= 4000 and said and known is None:
        name = said
    detail = f"{code} {said}".strip()
    return ControlPlaneError(
        f"the gateway at {url} closed the connection ({detail}): {meaning}",
        code=name,
        close_code=code,
        close_reason=said or None,
    )
