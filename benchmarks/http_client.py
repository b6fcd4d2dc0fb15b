"""The benchmarks' HTTP/1.1 client: a sans-IO response parser, request bytes, and the few trio
calls that hold one request open.

Benchmark tooling, and the only HTTP client of the suite's load side (the floor relays talk to
the mock upstream through the gateway's own transport, ``trio_gateway.providers.http11``, on
purpose: they measure it). The load generator must cost far less per streamed event than the
gateway it measures, so this is not a general client: it sends one prebuilt request at a time on
a keep-alive connection and parses the answer with :class:`ResponseParser`, which takes bytes
and returns the body's payload bytes (chunked transfer coding and ``Content-Length`` bodies;
no trailers, no 1xx, no ``Transfer-Encoding`` other than ``chunked``). The parser is plain
synchronous code, like h11; the load generator's ``epoll`` loop drives it directly (its hot
path), and :func:`connect`, :func:`send_all` and :func:`receive_head` drive it over trio
sockets for the streams it holds open.
"""

from __future__ import annotations

import socket
from enum import Enum

import trio

__all__ = [
    "RECEIVE_SIZE",
    "ProtocolError",
    "ResponseParser",
    "build_request",
    "connect",
    "receive_head",
    "send_all",
]

#: Bytes asked for per read.
RECEIVE_SIZE = 65536


class ProtocolError(Exception):
    """The server sent something this parser does not accept."""


class _State(Enum):
    HEAD = 1
    LENGTH = 2
    CHUNK_SIZE = 3
    CHUNK_DATA = 4
    CHUNK_END = 5
    TRAILER = 6
    UNTIL_CLOSE = 7
    DONE = 8


_MAX_HEAD = 64 * 1024


def build_request(
    method: str, host: str, path: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    """The bytes of one HTTP/1.1 request with a ``Content-Length`` body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ResponseParser:
    """One HTTP/1.1 response: ``feed`` bytes, get body payload bytes back.

    After the head is parsed, ``status`` and ``headers`` (lower-case names) are set. ``complete``
    turns true at the end of the body; ``keep_alive`` says whether the connection may carry
    another request then. Bytes after the end of the response are an error (no pipelining).
    """

    __slots__ = (
        "_buffer",
        "_remaining",
        "_state",
        "complete",
        "headers",
        "keep_alive",
        "status",
    )

    def __init__(self) -> None:
        self._state = _State.HEAD
        self._buffer = b""
        self._remaining = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self.keep_alive = True

    @property
    def head_done(self) -> bool:
        return self._state is not _State.HEAD

    def feed(self, data: bytes) -> bytes:
        """Parse ``data``; return the body payload it completed (possibly empty)."""
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        out: list[bytes] = []
        position = 0
        end = len(data)
        while position < end:
            state = self._state
            if state is _State.CHUNK_SIZE:
                newline = data.find(b"\r\n", position)
                if newline < 0:
                    self._keep(data, position)
                    break
                size_text = data[position:newline].split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError as exc:
                    raise ProtocolError(f"bad chunk size {size_text!r}") from exc
                position = newline + 2
                if size == 0:
                    self._state = _State.TRAILER
                else:
                    self._remaining = size
                    self._state = _State.CHUNK_DATA
            elif state is _State.CHUNK_DATA or state is _State.LENGTH:
                take = min(self._remaining, end - position)
                out.append(data[position : position + take])
                position += take
                self._remaining -= take
                if self._remaining == 0:
                    if state is _State.LENGTH:
                        self._finish()
                    else:
                        self._state = _State.CHUNK_END
            elif state is _State.CHUNK_END:
                if end - position < 2:
                    self._keep(data, position)
                    break
                if data[position : position + 2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                position += 2
                self._state = _State.CHUNK_SIZE
            elif state is _State.HEAD:
                head_end = data.find(b"\r\n\r\n", position)
                if head_end < 0:
                    if end - position > _MAX_HEAD:
                        raise ProtocolError("response head too large")
                    self._keep(data, position)
                    break
                self._parse_head(data[position:head_end])
                position = head_end + 4
            elif state is _State.TRAILER:
                newline = data.find(b"\r\n", position)
                if newline < 0:
                    self._keep(data, position)
                    break
                if newline == position:
                    self._finish()
                position = newline + 2
            elif state is _State.UNTIL_CLOSE:
                out.append(data[position:])
                position = end
            else:
                raise ProtocolError("data after the end of the response")
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def feed_eof(self) -> None:
        """The connection closed: that ends a body delimited by the close, else it is an error."""
        if self._state is _State.UNTIL_CLOSE:
            self._finish()
            self.keep_alive = False
        elif self._state is not _State.DONE:
            raise ProtocolError("connection closed before the response was complete")

    def _keep(self, data: bytes, position: int) -> None:
        self._buffer = data[position:]

    def _finish(self) -> None:
        self._state = _State.DONE
        self.complete = True

    def _parse_head(self, head: bytes) -> None:
        status_line, *header_lines = head.split(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError(f"bad status line {status_line!r}")
        try:
            self.status = int(parts[1])
        except ValueError as exc:
            raise ProtocolError(f"bad status line {status_line!r}") from exc
        for line in header_lines:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ProtocolError(f"bad header line {line!r}")
            key = name.strip().lower().decode("latin-1")
            text = value.strip().decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text
        connection = self.headers.get("connection", "").lower()
        if "close" in connection or parts[0] == b"HTTP/1.0":
            self.keep_alive = False
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._state = _State.CHUNK_SIZE
        elif "content-length" in self.headers:
            try:
                self._remaining = int(self.headers["content-length"])
            except ValueError as exc:
                raise ProtocolError("bad Content-Length") from exc
            self._state = _State.LENGTH
            if self._remaining == 0:
                self._finish()
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self._finish()
        else:
            self._state = _State.UNTIL_CLOSE
            self.keep_alive = False


# -- trio: one request held open ----------------------------------------------------------------


async def connect(host: str, port: int) -> trio.socket.SocketType:
    """A TCP connection to ``host:port`` with ``TCP_NODELAY`` (closed again when it fails)."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


async def receive_head(sock: trio.socket.SocketType, parser: ResponseParser) -> bytes:
    """Read until ``parser`` has the response head and the first body bytes, or the whole
    response when its body is empty; return those body bytes (:class:`ProtocolError` when the
    connection closes first)."""
    body = b""
    while not body and not parser.complete:
        data = await sock.recv(RECEIVE_SIZE)
        if not data:
            parser.feed_eof()  # raises unless the close ended the response
            break
        body = parser.feed(data)
    return body
