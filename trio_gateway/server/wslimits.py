"""What a WebSocket client may cost the gateway before it has authenticated.

Two limits live here, both plain synchronous objects:

- :class:`MessageLimit`, the largest message one connection may send *now*. Every connection
  starts at ``gateway.ws.maxPreAuthFrameBytes``; the control plane raises it to
  ``gateway.ws.maxFrameBytes`` once ``connect`` succeeds. It is enforced while a message
  arrives, chunk by chunk, so a client that announces a huge frame is stopped after the limit,
  not after the frame.
- :class:`PendingHandshakes`, how many connections may be waiting to authenticate at once
  (``gateway.ws.maxUnauthenticatedConnections``).

Why the first one reaches into hypercorn: hypercorn (0.18, trio worker, wsproto) assembles each
message in a per-connection buffer and hands the application only whole messages, up to
``websocket_max_message_size``, one value for the whole server. The application therefore
cannot refuse a large frame from an unauthenticated client before it has been buffered, and
past hypercorn's own limit the buffer goes on growing with the rest of the frame while the
application is never told (hypercorn sends close 1009 and carries on).
:func:`install_message_limit` swaps that buffer for :class:`_BoundedBuffer`, which counts
bytes as they arrive, keeps none of an oversized message and tells the connection's owner at
once, so the gateway itself closes with 1009 and ends the connection (hypercorn's own close,
without a reason, may go first when the whole message arrived in one read). It also declines the
permessage-deflate extension: wsproto inflates each received chunk with no bound (up to about
1,000 times its size) before any limit could look at it. This relies on hypercorn internals:
the ASGI ``send`` callable being the bound ``WSStream.app_send``, and the stream's ``buffer``
and ``handshake`` attributes (``hypercorn.protocol.ws_stream``). pyproject.toml bounds hypercorn
below 0.19 for this; when the internals are not found, nothing is changed (with a warning), and
the gateway falls back to checking whole messages only.

Imports hypercorn and wsproto only; nothing from trio, quart or the rest of the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from io import BytesIO, StringIO
from typing import Final

from hypercorn.protocol.ws_stream import (
    FrameTooLargeError,
    Handshake,
    WebsocketBuffer,
    WSStream,
)
from wsproto.events import Message

__all__ = [
    "MESSAGE_LIMIT_KEY",
    "HandshakeSlot",
    "MessageLimit",
    "PendingHandshakes",
    "install_message_limit",
    "scope_message_limit",
]

logger = logging.getLogger(__name__)

#: The ASGI scope key under which a WebSocket connection's :class:`MessageLimit` travels from
#: the app wrapper (which sees hypercorn's ``send``) to the control plane (which authenticates).
MESSAGE_LIMIT_KEY: Final = "trio_gateway.message_limit"

_warned_missing_internals = False


class MessageLimit:
    """The largest message (in bytes, UTF-8 for text) one connection may send now.

    Once a message passes it, the limit stays *overflowed*: the connection is closing, and the
    callback given to :meth:`on_overflow` runs exactly once.
    """

    __slots__ = ("_callback", "_limit", "_overflowed")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._overflowed = False
        self._callback: Callable[[], None] | None = None

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def overflowed(self) -> bool:
        return self._overflowed

    def set_limit(self, limit: int) -> None:
        """A new limit for the messages that start or continue from now on."""
        self._limit = limit

    def on_overflow(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when a message passes the limit; at once if one already has."""
        self._callback = callback
        if self._overflowed:
            self._fire()

    def admit(self, size: int) -> bool:
        """Whether a message of ``size`` bytes so far is within the limit; ``False`` trips it."""
        if self._overflowed:
            return False
        if size <= self._limit:
            return True
        self._overflowed = True
        self._fire()
        return False

    def _fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


def _utf8_size(data: str | bytes) -> int:
    if isinstance(data, bytes) or data.isascii():
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))


class _BoundedBuffer(WebsocketBuffer):
    """hypercorn's message buffer, bounded by a :class:`MessageLimit` as the message arrives.

    Within the limit it buffers like hypercorn's (which then delivers the finished message).
    Over it, it drops what it held and every later chunk; at the end of such a message it raises
    ``FrameTooLargeError``, so hypercorn delivers nothing (and sends close 1009 itself if the
    gateway has not closed the connection yet).
    """

    def __init__(self, limit: MessageLimit) -> None:
        super().__init__(limit.limit)
        self._message_limit = limit

    def extend(self, event: Message) -> None:  # type: ignore[type-arg]  # wsproto's generic
        data: str | bytes = event.data
        size = _utf8_size(data)
        if self._message_limit.admit(self.length + size):
            if isinstance(data, str):
                if not isinstance(self.value, StringIO):
                    self.value = StringIO()
                self.value.write(data)
            else:
                if not isinstance(self.value, BytesIO):
                    self.value = BytesIO()
                self.value.write(data)
            self.length += size
            return
        self.clear()
        if event.message_finished:
            raise FrameTooLargeError()


def install_message_limit(send: object, limit: int) -> MessageLimit | None:
    """Bound the messages of the WebSocket connection whose ASGI ``send`` this is, and decline
    compression (whose inflating no limit covers).

    Call it before the connection is accepted (no message can have arrived yet). ``None`` when
    ``send`` is not hypercorn's (another server, or a hypercorn whose internals changed): then
    only whole messages are checked, by the application.
    """
    stream = getattr(send, "__self__", None)
    if (
        isinstance(stream, WSStream)
        and type(getattr(stream, "buffer", None)) is WebsocketBuffer
        and stream.buffer.value is None
        and isinstance(getattr(stream, "handshake", None), Handshake)
        and not stream.handshake.accepted
    ):
        message_limit = MessageLimit(limit)
        stream.buffer = _BoundedBuffer(message_limit)
        stream.handshake.extensions = None  # the client's offer of permessage-deflate: declined
        return message_limit
    global _warned_missing_internals
    if not _warned_missing_internals:
        _warned_missing_internals = True
        logger.warning(
            "ws.message_limit.unavailable server=%s: WebSocket messages are checked only once "
            "whole (is hypercorn 0.17/0.18 serving the gateway?)",
            type(stream).__qualname__ if stream is not None else type(send).__qualname__,
        )
    return None


class PendingHandshakes:
    """How many WebSocket connections are waiting to authenticate, under a cap."""

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def try_hold(self, cap: int) -> HandshakeSlot | None:
        """A slot for one more waiting connection; ``None`` when ``cap`` are already waiting."""
        if self._count >= cap:
            return None
        self._count += 1
        return HandshakeSlot(self)

    def _release(self) -> None:
        self._count -= 1


class HandshakeSlot:
    """One connection's place among those waiting to authenticate."""

    __slots__ = ("_pending",)

    def __init__(self, pending: PendingHandshakes) -> None:
        self._pending: PendingHandshakes | None = pending

    def release(self) -> None:
        """Give the place back (once the connection authenticated or ended); idempotent."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending._release()


def scope_message_limit(scope: Mapping[str, object]) -> MessageLimit | None:
    """The :class:`MessageLimit` installed for the connection of ``scope``, if any."""
    limit = scope.get(MESSAGE_LIMIT_KEY)
    return limit if isinstance(limit, MessageLimit) else None
