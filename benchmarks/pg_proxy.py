"""A TCP relay in front of PostgreSQL that counts the client's round trips.

Benchmark tooling for the ``cluster`` scenario: the gateway connects to the relay (a DSN with
``sslmode=disable`` and ``gssencmode=disable``, so the protocol is readable), the relay to the
server, and it passes every byte on unchanged. On the client side it follows the frontend
protocol's framing (a start-up packet without a type byte, then ``type, int32 length, body``
messages) and counts the messages after which a client waits for the server: ``Q`` (a simple
query) and ``S`` (``Sync``, the end of an extended-protocol exchange, which is what psycopg
sends for a parameterized statement; a pipeline of several statements ends with one Sync, so
it counts once, as the one round trip it is). Nothing is parsed on the server side.

It also names what ran: the text of each statement executed (a ``Bind`` names a statement
whose text an earlier ``Parse`` gave, a prepared one included; a simple query carries its text),
cut to its first words (and what it reads ``FROM``), so a report can say which statements a run
costs.

``statistics()`` returns the counts so far; the scenario subtracts an idle window's counts
(heartbeats, the listener) from a window with runs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import trio

__all__ = ["CountingProxy", "ProxyStatistics"]

_BUFFER = 65536
#: Round-trip messages of the frontend protocol.
_ROUND_TRIPS = frozenset(b"QS")


@dataclass(frozen=True, slots=True)
class ProxyStatistics:
    connections: int
    round_trips: int
    #: Every frontend message, by type letter.
    messages: dict[str, int]
    #: Statements executed, by their first words.
    statements: dict[str, int]


def _first_words(query: bytes, words: int = 4) -> str:
    """A statement's name: its first words, and what it reads ``FROM`` when that comes later
    (``SELECT s.key, s.agent_id, ... FROM epiloop_record_turn(``)."""
    parts = query.decode("utf-8", errors="replace").split()
    name = " ".join(parts[:words])
    upper = [part.upper() for part in parts]
    if "FROM" in upper:
        after = upper.index("FROM") + 1
        if words <= after < len(parts):
            name += f" {parts[after]}" if after == words else f" ... FROM {parts[after]}"
    return name


class _FrontendCounter:
    """Follows the client's message framing across reads (sans-IO)."""

    def __init__(self, counts: dict[str, int], statements: dict[str, int]) -> None:
        self._counts = counts
        self._statements = statements
        self._names: dict[bytes, str] = {}
        self._buffer = b""
        self._startup = True

    def _executed(self, text: str) -> None:
        self._statements[text] = self._statements.get(text, 0) + 1

    def _message(self, kind: int, body: bytes) -> None:
        if kind == ord("Q"):
            self._executed(_first_words(body.split(b"\0", 1)[0]))
        elif kind == ord("P"):
            name, rest = body.split(b"\0", 1)
            self._names[name] = _first_words(rest.split(b"\0", 1)[0])
        elif kind == ord("B"):
            _portal, statement, _ = body.split(b"\0", 2)
            self._executed(self._names.get(statement, "?"))

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if self._startup:
                # SSLRequest / GSSENCRequest / StartupMessage: int32 length, no type byte.
                if len(self._buffer) < 4:
                    return
                (length,) = struct.unpack("!I", self._buffer[:4])
                if len(self._buffer) < length:
                    return
                code = struct.unpack("!I", self._buffer[4:8])[0] if length >= 8 else 0
                self._buffer = self._buffer[length:]
                # An SSL or GSS request (refused: sslmode=disable) comes before the real one.
                self._startup = code in (80877103, 80877104)
                continue
            if len(self._buffer) < 5:
                return
            kind = self._buffer[0]
            (length,) = struct.unpack("!I", self._buffer[1:5])
            if len(self._buffer) < 1 + length:
                return
            body = self._buffer[5 : 1 + length]
            self._buffer = self._buffer[1 + length :]
            self._message(kind, body)
            letter = chr(kind)
            self._counts[letter] = self._counts.get(letter, 0) + 1


class CountingProxy:
    """Serve with ``await nursery.start(proxy.serve)``; it reports its port."""

    def __init__(self, server_host: str, server_port: int) -> None:
        self._server = (server_host, server_port)
        self._counts: dict[str, int] = {}
        self._statements: dict[str, int] = {}
        self._connections = 0
        self.port = 0

    def statistics(self) -> ProxyStatistics:
        counts = dict(self._counts)
        trips = sum(n for letter, n in counts.items() if ord(letter) in _ROUND_TRIPS)
        return ProxyStatistics(self._connections, trips, counts, dict(self._statements))

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._relay, listeners)
            task_status.started(self.port)

    async def _relay(self, client: trio.SocketStream) -> None:
        self._connections += 1
        counter = _FrontendCounter(self._counts, self._statements)
        try:
            server = await trio.open_tcp_stream(*self._server)
        except OSError:
            await client.aclose()
            return
        async with client, server, trio.open_nursery() as nursery:

            async def pump(source: trio.SocketStream, sink: trio.SocketStream, count: bool) -> None:
                try:
                    while data := await source.receive_some(_BUFFER):
                        if count:
                            counter.feed(data)
                        await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel(reason="one side of the relay closed")

            nursery.start_soon(pump, client, server, True)
            nursery.start_soon(pump, server, client, False)
