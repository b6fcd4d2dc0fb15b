"""Opening a control client: :func:`open_control_client` parses the ``ws://``/``wss://`` URL,
opens the TCP (or TLS) stream itself, does the WebSocket upgrade and the ``connect`` exchange
under one deadline (``HANDSHAKE_BOUND_SECONDS``), starts the client's reader in a nursery the
client owns, and closes the socket and the stream on the way out (shielded, bounded).
trio-websocket's and the socket's exceptions are translated here, once.

This module imports nothing from the server.
"""

from __future__ import annotations

import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    wrap_client_stream,
)

from ..errors import ControlPlaneError
from .client import CLOSE_BOUND_SECONDS, ControlClient
from .failures import AUTH_FAILED, GATEWAY_UNREACHABLE

__all__ = ["HANDSHAKE_BOUND_SECONDS", "MAX_FRAME_BYTES", "open_control_client"]

logger = logging.getLogger(__name__)

#: Connecting and the ``connect`` exchange must finish within this long.
HANDSHAKE_BOUND_SECONDS = 15.0
#: The largest frame accepted from the gateway (a long transcript is one frame).
MAX_FRAME_BYTES = 64 * 1024 * 1024


@asynccontextmanager
async def open_control_client(
    url: str,
    *,
    token: str | None = None,
    password: str | None = None,
    client_name: str = "epiloop-cli",
) -> AsyncIterator[ControlClient]:
    """Connect to the control plane at ``url`` (``ws://host:port/ws``) and authenticate.

    Raises :class:`ControlPlaneError`: ``code`` ``gateway_unreachable`` when nothing answers at
    ``url``, ``auth_failed`` for refused credentials, ``handshake_timeout`` when connecting took
    longer than ``HANDSHAKE_BOUND_SECONDS``. On exit the socket is closed (which cancels any run
    the connection still owns on the gateway).
    """
    deadline = trio.current_time() + HANDSHAKE_BOUND_SECONDS
    target = _parse_url(url)
    logger.debug("control.connect.started url=%s", url)
    # The client opens (and closes) the TCP stream itself: trio-websocket leaves a client's
    # socket open when the gateway closed the connection first.
    stream = await _open_stream(target, deadline)
    try:
        async with trio.open_nursery() as nursery:
            client = await _start(
                nursery,
                stream,
                target,
                deadline,
                token=token,
                password=password,
                name=client_name,
            )
            logger.debug("control.connect.complete url=%s", url)
            try:
                await nursery.start(client._read_frames)
                yield client
            finally:
                with trio.move_on_after(CLOSE_BOUND_SECONDS, shield=True):
                    await client._ws.aclose()
                nursery.cancel_scope.cancel(reason="control client closed")
    except BaseExceptionGroup as group:
        _raise_sole(group)
    finally:
        with trio.move_on_after(CLOSE_BOUND_SECONDS, shield=True):
            await stream.aclose()


_Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


@dataclass(frozen=True, slots=True)
class _Url:
    url: str
    secure: bool
    host: str
    port: int
    #: The ``Host`` header.
    authority: str
    #: The request target: path and query.
    resource: str


def _parse_url(url: str) -> _Url:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ControlPlaneError(f"invalid URL {url!r}: {exc}", code="invalid_url") from exc
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ControlPlaneError(
            f"invalid URL {url!r}: expected ws://HOST:PORT/ws or wss://...", code="invalid_url"
        )
    secure = parts.scheme == "wss"
    host = parts.hostname
    port = port if port is not None else (443 if secure else 80)
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == (443 if secure else 80) else f"{shown}:{port}"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Url(url, secure, host, port, authority, resource)


async def _open_stream(target: _Url, deadline: float) -> _Stream:
    try:
        with trio.fail_at(deadline):
            if target.secure:
                return await trio.open_ssl_over_tcp_stream(
                    target.host,
                    target.port,
                    ssl_context=ssl.create_default_context(),
                    https_compatible=True,
                )
            return await trio.open_tcp_stream(target.host, target.port)
    except OSError as exc:
        raise ControlPlaneError(
            f"cannot reach the gateway at {target.url}: {_describe(exc)}",
            code=GATEWAY_UNREACHABLE,
        ) from exc
    except trio.TooSlowError as exc:
        raise _handshake_timeout(target.url) from exc


async def _start(
    nursery: trio.Nursery,
    stream: _Stream,
    target: _Url,
    deadline: float,
    *,
    token: str | None,
    password: str | None,
    name: str,
) -> ControlClient:
    """The WebSocket upgrade and the ``connect`` exchange."""
    url = target.url
    try:
        with trio.fail_at(deadline):
            try:
                ws = await wrap_client_stream(
                    nursery,
                    stream,
                    target.authority,
                    target.resource,
                    max_message_size=MAX_FRAME_BYTES,
                )
            except ConnectionRejected as exc:
                status = exc.status_code
                raise ControlPlaneError(
                    f"the gateway at {url} refused the WebSocket upgrade (HTTP {status})",
                    code=AUTH_FAILED if status in (401, 403) else "handshake_rejected",
                ) from exc
            except (HandshakeError, ConnectionClosed, trio.BrokenResourceError) as exc:
                raise ControlPlaneError(
                    f"cannot reach the gateway at {url}: {_describe(exc)}",
                    code=GATEWAY_UNREACHABLE,
                ) from exc
            client = ControlClient(url, ws)
            try:
                await client._handshake(token=token, password=password, name=name)
            except BaseException:
                with trio.move_on_after(CLOSE_BOUND_SECONDS, shield=True):
                    await ws.aclose()
                raise
    except trio.TooSlowError as exc:
        raise _handshake_timeout(url) from exc
    return client


def _handshake_timeout(url: str) -> ControlPlaneError:
    return ControlPlaneError(
        f"the gateway at {url} did not complete the handshake within "
        f"{HANDSHAKE_BOUND_SECONDS:g} seconds",
        code="handshake_timeout",
    )


def _describe(exc: BaseException) -> str:
    while isinstance(exc, HandshakeError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _raise_sole(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise the one real exception of a nursery's group (its own ``Cancelled`` aside).

    The client's nursery holds only its reader and trio-websocket's, neither of which raises;
    so a group is the caller's own exception, wrapped on its way out, and is unwrapped here so
    ``except ControlPlaneError`` works. Anything else is re-raised as the group.
    """
    real = [exc for exc in group.exceptions if not isinstance(exc, trio.Cancelled)]
    if len(real) == 1:
        inner = real[0]
    elif not real and len(group.exceptions) == 1:
        inner = group.exceptions[0]  # a lone Cancelled: the enclosing cancel scope's
    else:
        raise group
    context = inner.__context__
    try:
        raise inner
    finally:
        inner.__context__ = context
        del inner, context
