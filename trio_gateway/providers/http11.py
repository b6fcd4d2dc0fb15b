"""A lean HTTP/1.1 transport for httpx: h11 on trio streams, with a keep-alive pool.

The upstream read is the gateway's hottest loop: every streamed token is one small chunk of an
upstream response. httpx's default transport (httpcore) costs about 88 µs of CPU per chunk on
the benchmark machine (a cancel scope and an exception-mapping context manager per read, and
nine layers of wrappers); this transport reads a chunk with one ``recv`` and one
``h11.next_event``. It speaks httpx's transport interface (``httpx.Request`` in,
``httpx.Response`` out, httpx's exceptions), so callers and tests can swap transports; the
gateway's upstream client calls it directly.

What it does, and on purpose no more:

* HTTP/1.1 over TCP, TLS for ``https`` (httpx's own default SSL context: the same trust store
  and ``SSL_CERT_FILE`` handling as a plain ``httpx.AsyncClient``), ALPN ``http/1.1``.
* One request at a time per connection; a response read to its end goes back to the pool
  (at most ``max_keepalive`` idle connections in all, newest reused first); anything else
  closes it at once (a cancelled read, an error, a response left half read), so an upstream
  whose answer is abandoned sees its connection close right away and stops generating.
* While a request's connection is in use, a disconnect of the gateway's own client shuts it
  down at once (:mod:`trio_gateway.disconnects`), before the cancellation of the run reaches
  the task reading it.
* A pooled connection the server has closed meanwhile (readable while idle) is dropped before
  use instead of failing the request; one whose last answer came with extra bytes is never
  pooled (they would be read as the next answer).
* httpx's ``connect``, ``read`` and ``write`` timeouts apply (``pool`` has nothing to wait for:
  there is no connection limit). The gateway itself sets only ``connect`` and uses trio cancel
  scopes for the rest.
* Errors are httpx's: ``ConnectError``/``ConnectTimeout``, ``ReadError``/``WriteError``,
  ``ReadTimeout``/``WriteTimeout``, ``RemoteProtocolError`` and ``UnsupportedProtocol``, so
  callers translate one exception family whichever transport runs.

Not supported: HTTP/2 (the gateway speaks HTTP/1.1 upstream on purpose, see
:mod:`.upstream`), ``Expect: 100-continue`` and request bodies that must be streamed without
being held (a request body is written as its stream yields it, in writes of 64 KiB or more).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import Callable
from typing import Any, Self

import h11
import httpx
import trio

from .. import disconnects

__all__ = ["Http11Transport"]

#: Bytes asked for per read.
_READ_SIZE = 64 * 1024
#: A request is written in pieces of at least this size (or whole).
_WRITE_SIZE = 64 * 1024
#: Reads that found data at once before one yields to the scheduler anyway: a flood from a
#: fast upstream must not keep other tasks (and deadlines) from running.
_YIELD_EVERY_READS = 16
_DEFAULT_PORTS = {"http": 80, "https": 443}

_Origin = tuple[str, str, int]
#: No deadline: a cancel scope costs about 10 µs to enter and leave, so none is made.
_NO_DEADLINE = contextlib.nullcontext()


def _deadline(seconds: float | None) -> contextlib.AbstractContextManager[object]:
    """``trio.fail_after(seconds)``, or nothing at all for ``None``."""
    return _NO_DEADLINE if seconds is None else trio.fail_after(seconds)


class _Connection:
    """One upstream connection and its h11 state.

    A plain TCP connection is driven on its socket directly (a non-blocking ``recv``, and
    ``wait_readable`` only when nothing is there): trio's ``SocketStream`` wraps each read in
    three more awaits, a context manager and a scheduler round trip even when data is ready,
    which showed on every streamed token, and its waiting read chain held 1.8 KiB more per idle
    stream. A TLS connection keeps its ``trio.SSLStream``.
    """

    __slots__ = ("h11", "origin", "sock", "stream", "unyielded")

    def __init__(
        self, origin: _Origin, *, sock: socket.socket | None, stream: trio.abc.Stream | None
    ) -> None:
        self.origin = origin
        self.sock = sock
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        #: Reads in a row that returned at once, without a yield to the scheduler.
        self.unyielded = 0

    async def receive(self) -> bytes:
        """The next bytes from the server (``b""`` at its end of the stream)."""
        sock = self.sock
        if sock is None:
            return bytes(await self._stream().receive_some(_READ_SIZE))
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            data = sock.recv(_READ_SIZE)
        except BlockingIOError:
            pass
        else:
            self.unyielded += 1
            if self.unyielded >= _YIELD_EVERY_READS:
                self.unyielded = 0
                await trio.lowlevel.cancel_shielded_checkpoint()  # the data is not lost
            return data
        self.unyielded = 0
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(_READ_SIZE)
            except BlockingIOError:
                pass

    async def send_all(self, data: bytes | bytearray) -> None:
        sock = self.sock
        if sock is None:
            await self._stream().send_all(data)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        with memoryview(data) as view:
            sent, total = 0, len(view)
            while sent < total:
                try:
                    sent += sock.send(view[sent:])
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)

    def _stream(self) -> trio.abc.Stream:
        if self.stream is None:
            raise trio.ClosedResourceError("the upstream connection is closed")
        return self.stream

    def shutdown(self) -> None:
        """Tell the server at once that this connection is done (its owner still closes it);
        safe from any task and at any time."""
        stream = self.stream
        while isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        sock = self.sock or (stream.socket if isinstance(stream, trio.SocketStream) else None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def fileno(self) -> int:
        stream = self.stream
        if self.sock is not None:
            return self.sock.fileno()
        while isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        if isinstance(stream, trio.SocketStream):
            return stream.socket.fileno()
        return -1  # an unknown stream: never reused

    def is_idle_and_healthy(self) -> bool:
        """False when the server closed this idle connection or sent something unasked."""
        fileno = self.fileno()
        if fileno < 0:
            return False
        poller = select.poll()
        poller.register(fileno, select.POLLIN)
        return not poller.poll(0)

    async def close(self) -> None:
        """Close at once (no TLS close_notify exchange): the connection is of no further use."""
        sock, self.sock = self.sock, None
        if sock is not None:
            trio.lowlevel.notify_closing(sock)  # a task waiting on it gets ClosedResourceError
            sock.close()
        stream, self.stream = self.stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)


def _detach(stream: trio.SocketStream) -> socket.socket:
    """The standard socket under ``stream`` (which is unusable afterwards)."""
    trio_socket = stream.socket
    family, kind, proto = trio_socket.family, trio_socket.type, trio_socket.proto
    sock = socket.socket(family, kind, proto, fileno=trio_socket.detach())
    sock.setblocking(False)
    return sock


class Http11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 for :class:`httpx.AsyncClient` (``transport=Http11Transport()``).

    ``max_keepalive`` bounds the idle connections kept for reuse; ``ssl_context`` defaults to
    httpx's default context, built on the first ``https`` request.
    """

    def __init__(
        self, *, max_keepalive: int = 64, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._max_keepalive = max_keepalive
        self._ssl_context = ssl_context
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._closed = False

    # -- the pool ---------------------------------------------------------------------------

    def _checkout(self, origin: _Origin) -> tuple[_Connection | None, list[_Connection]]:
        """A healthy idle connection to ``origin`` (or ``None``), and the stale ones found."""
        stale: list[_Connection] = []
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if connection.is_idle_and_healthy():
                return connection, stale
            stale.append(connection)
        return None, stale

    async def _checkin(self, connection: _Connection) -> None:
        state = connection.h11
        if (
            self._closed
            or self._idle_count >= self._max_keepalive
            or state.our_state is not h11.DONE
            or state.their_state is not h11.DONE
            or state.trailing_data != (b"", False)  # bytes after the answer: not reusable
        ):
            await connection.close()
            return
        state.start_next_cycle()
        self._idle.setdefault(connection.origin, []).append(connection)
        self._idle_count += 1

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle, self._idle_count = self._idle, {}, 0
        for connections in idle.values():
            for connection in connections:
                await connection.close()

    # -- one request ------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        url = request.url
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{scheme}://'.", request=request
            )
        if not url.host:
            raise httpx.UnsupportedProtocol("Request URL is missing a host.", request=request)
        origin = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})

        connection, stale = self._checkout(origin)
        if stale:
            # Out of the pool now: closed here, before anything that can fail or be cancelled.
            with trio.CancelScope(shield=True):
                for old in stale:
                    await old.close()
        if connection is None:
            connection = await self._connect(origin, request, timeouts.get("connect"))
        unregister = disconnects.register(connection.shutdown)
        try:
            await self._send_request(connection, request, timeouts.get("write"))
            response = await self._receive_head(connection, request, timeouts.get("read"))
        except BaseException:
            unregister()
            with trio.CancelScope(shield=True):
                await connection.close()
            raise
        return httpx.Response(
            response.status_code,
            headers=response.headers.raw_items(),
            stream=_ResponseBody(self, connection, timeouts.get("read"), unregister),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason},
        )

    async def _connect(
        self, origin: _Origin, request: httpx.Request, connect_timeout: float | None
    ) -> _Connection:
        scheme, host, port = origin
        try:
            with _deadline(connect_timeout):
                stream = await trio.open_tcp_stream(host, port)  # sets TCP_NODELAY
                if scheme == "http":
                    return _Connection(origin, sock=_detach(stream), stream=None)
                if self._ssl_context is None:
                    # Loading the trust store takes a while: not on the event loop.
                    self._ssl_context = await trio.to_thread.run_sync(httpx.create_ssl_context)
                tls = trio.SSLStream(
                    stream, self._ssl_context, server_hostname=host, https_compatible=True
                )
                try:
                    await tls.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(tls)
                    raise
                return _Connection(origin, sock=None, stream=tls)
        except trio.TooSlowError as exc:
            raise httpx.ConnectTimeout(
                f"connecting took longer than {connect_timeout:g} seconds", request=request
            ) from exc
        except (OSError, trio.BrokenResourceError) as exc:
            cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
            raise httpx.ConnectError(str(cause) or type(cause).__name__, request=request) from exc

    async def _send_request(
        self, connection: _Connection, request: httpx.Request, write_timeout: float | None
    ) -> None:
        state = connection.h11
        try:
            with _deadline(write_timeout):
                out = bytearray(
                    state.send(
                        h11.Request(
                            method=request.method,
                            target=request.url.raw_path,
                            headers=request.headers.raw,
                        )
                    )
                    or b""
                )
                body = request.stream
                assert isinstance(body, httpx.AsyncByteStream), "an AsyncClient request"
                async for part in body:
                    out += state.send(h11.Data(data=part)) or b""
                    if len(out) >= _WRITE_SIZE:
                        await connection.send_all(out)
                        out.clear()
                out += state.send(h11.EndOfMessage()) or b""
                await connection.send_all(out)
        except trio.TooSlowError as exc:
            raise httpx.WriteTimeout("sending the request timed out", request=request) from exc
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpx.WriteError(_reason(exc), request=request) from exc

    async def _receive_head(
        self, connection: _Connection, request: httpx.Request, read_timeout: float | None
    ) -> h11.Response:
        state = connection.h11
        try:
            with _deadline(read_timeout):
                while True:
                    event = state.next_event()
                    if event is h11.NEED_DATA:
                        data = await connection.receive()
                        if not data:  # before a complete head, the end is always an error
                            raise httpx.RemoteProtocolError(
                                "Server disconnected without sending a response.",
                                request=request,
                            )
                        state.receive_data(data)
                    elif type(event) is h11.Response:
                        return event
                    elif type(event) is not h11.InformationalResponse:
                        raise httpx.RemoteProtocolError(  # PAUSED: a client never sees it here
                            f"Unexpected {type(event).__name__} before the response.",
                            request=request,
                        )
        except trio.TooSlowError as exc:
            raise httpx.ReadTimeout("waiting for the response timed out", request=request) from exc
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpx.ReadError(_reason(exc), request=request) from exc


class _ResponseBody(httpx.AsyncByteStream):
    """The body of one response, read straight from its connection. It does not keep the
    request (its content can be large, and a stream can stay open for minutes), so its errors
    carry none."""

    def __init__(
        self,
        transport: Http11Transport,
        connection: _Connection,
        read_timeout: float | None,
        unregister: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._connection: _Connection | None = connection
        self._read_timeout = read_timeout
        self._unregister = unregister
        self._complete = False

    def __aiter__(self) -> Self:
        # An iterator object, not an async generator: a generator left suspended when the
        # reader stops early would be finalized later by trio (with a ResourceWarning), and
        # each chunk would cost one more frame switch.
        return self

    async def __anext__(self) -> bytes:
        if self._complete:
            raise StopAsyncIteration
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed()
        state = connection.h11
        try:
            while True:
                event: Any = state.next_event()
                if type(event) is h11.Data:
                    return bytes(event.data)
                if event is h11.NEED_DATA:
                    if self._read_timeout is None:
                        data = await connection.receive()
                    else:
                        with trio.fail_after(self._read_timeout):
                            data = await connection.receive()
                    state.receive_data(data)
                elif type(event) is h11.EndOfMessage:
                    self._complete = True
                    raise StopAsyncIteration
                else:
                    raise httpx.RemoteProtocolError(
                        "The server closed the connection in the middle of the response.",
                    )
        except trio.TooSlowError as exc:
            raise httpx.ReadTimeout("reading the response timed out") from exc
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpx.ReadError(_reason(exc)) from exc

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        self._unregister()  # before the connection can serve another request
        with trio.CancelScope(shield=True):
            if self._complete:
                await self._transport._checkin(connection)
            else:
                await connection.close()


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
    return str(cause) or type(cause).__name__
