"""Client connections whose writes have deadlines.

hypercorn writes to a client with ``send_all`` inside a shielded cancel scope and has no write
timeout: a client that stops reading (its TCP receive window stays full) pins the writing task,
its socket and the request's in-flight slot until it goes away, and a graceful shutdown waits
for it forever. :class:`BoundedListener` hands hypercorn connections
(:class:`BoundedStream`) whose every write must make progress within the stall deadline and
must end by the drain deadline, which :meth:`WriteLimits.drain_by` sets when shutdown starts.
A write that misses its deadline closes the connection; hypercorn then sees a disconnect and
the request's handler is cancelled.

A deadline inside hypercorn's shield still applies: the shield keeps out cancellation from the
enclosing scopes, not the scope opened inside it.

Imports trio only (no quart, no hypercorn).
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import trio

__all__ = ["BoundedListener", "BoundedStream", "WriteLimits"]

logger = logging.getLogger(__name__)


@contextmanager
def _as_stream_errors() -> Iterator[None]:
    """OSError from the socket as trio's stream errors (what ``SocketStream.send_all`` raises)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.ENOTSOCK):
            raise trio.ClosedResourceError("the connection was already closed") from None
        raise trio.BrokenResourceError(f"the connection broke: {exc}") from exc


class WriteLimits:
    """The deadlines of every write of one server: ``stall_seconds`` per slice, and the drain
    deadline (none until shutdown starts). ``live_stall_seconds``, when given, is read at each
    write instead (the gateway passes its config in force, so a reload applies)."""

    def __init__(
        self, stall_seconds: float = 0.0, *, live_stall_seconds: Callable[[], float] | None = None
    ) -> None:
        self._stall_seconds = stall_seconds
        self._live = live_stall_seconds
        self.drain_deadline = math.inf
        self._writing: set[trio.CancelScope] = set()

    @property
    def stall_seconds(self) -> float:
        return self._live() if self._live is not None else self._stall_seconds

    def drain_by(self, deadline: float) -> None:
        """Every write, those under way included, must end by ``deadline`` (trio time)."""
        self.drain_deadline = min(self.drain_deadline, deadline)
        for scope in self._writing:
            scope.deadline = min(scope.deadline, self.drain_deadline)

    def _scope(self) -> trio.CancelScope:
        deadline = min(trio.current_time() + self.stall_seconds, self.drain_deadline)
        return trio.CancelScope(deadline=deadline)


class BoundedStream(trio.abc.HalfCloseableStream):
    """A TCP connection to a client whose ``send_all`` has deadlines (see the module doc)."""

    def __init__(self, stream: trio.SocketStream, limits: WriteLimits) -> None:
        self._stream = stream
        self._limits = limits

    @property
    def socket(self) -> trio.socket.SocketType:
        """The connection's socket (hypercorn reads the addresses from it)."""
        return self._stream.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        limits = self._limits
        sock = self._stream.socket
        with memoryview(data) as view:
            if not view:
                await self._stream.send_all(b"")  # a checkpoint, or an error if closed
                return
            sent = 0
            while sent < len(view):
                # A fresh stall deadline for each step the client lets through.
                scope = limits._scope()
                limits._writing.add(scope)
                try:
                    with scope, _as_stream_errors(), view[sent:] as remaining:
                        sent += await sock.send(remaining)
                finally:
                    limits._writing.discard(scope)
                if scope.cancelled_caught:
                    await self._write_timed_out(scope)

    async def _write_timed_out(self, scope: trio.CancelScope) -> NoReturn:
        limits = self._limits
        # Part of the data may be gone: the connection cannot go on.
        reason = "shutdown_grace" if scope.deadline >= limits.drain_deadline else "stall"
        logger.info(
            "connection.write_timeout reason=%s stall_seconds=%g", reason, limits.stall_seconds
        )
        await self._stream.aclose()
        raise trio.BrokenResourceError(f"the client did not read in time ({reason})")

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


class BoundedListener(trio.abc.Listener[BoundedStream]):
    """Accepts TCP connections as :class:`BoundedStream`s."""

    def __init__(self, listener: trio.SocketListener, limits: WriteLimits) -> None:
        self._listener = listener
        self._limits = limits

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._listener.socket

    async def accept(self) -> BoundedStream:
        return BoundedStream(await self._listener.accept(), self._limits)

    async def aclose(self) -> None:
        await self._listener.aclose()
