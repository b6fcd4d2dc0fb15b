"""The load generator: C concurrent chat completion requests, bounded in count and time.

Benchmark tooling; it runs in the benchmark runner's process, never in the gateway's. Each of
``concurrency`` slots sends one request at a time over a keep-alive HTTP/1.1 connection (the
suite's one client, :mod:`benchmarks.http_client`) until ``requests`` were started or
``max_seconds`` passed; requests still running ``drain_seconds`` later are cut and reported as
errors. Per request it records, on ``time.monotonic()``: the time to the response head, to the
first token, every gap between two tokens, the total time, tokens received and the error if any.

:class:`LoadClient` drives the sockets with ``epoll`` from a worker thread (so it costs a few
microseconds per streamed event and does not become the bottleneck); the caller stays in trio
(:func:`run_load`). Tokens are counted without parsing JSON: the mock upstream is given token
texts that each hold exactly one ``~`` (:data:`TOKEN_MARK`), a byte nothing else in a chat
completion stream contains (ids are URL-safe base64 or hex, models and roles are plain words).
Tokens that arrive in one read (or one coalesced chunk) share its arrival time: their gaps are 0.

:func:`open_streams` (trio) holds many streams open at once (memory per idle stream) and closes
them on exit; ``disconnect_after_tokens`` closes each connection after that many tokens and
records when (disconnect-to-upstream-cancel latency, matched with the mock's records by ``tag``).
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgspec
import trio

from .http_client import RECEIVE_SIZE as _RECEIVE_SIZE
from .http_client import (
    ProtocolError,
    ResponseParser,
    build_request,
    connect,
    receive_head,
    send_all,
)
from .upstream_server import TAG_PREFIX

__all__ = [
    "RESPONSES_TOKEN_MARK",
    "TOKEN_MARK",
    "LoadClient",
    "LoadResult",
    "LoadSpec",
    "OpenStreams",
    "RequestResult",
    "Target",
    "open_streams",
    "run_load",
]

TOKEN_MARK = b"~"
#: A token of a Responses stream: the event line of each text delta.
RESPONSES_TOKEN_MARK = b"event: response.output_text.delta\n"
_tags = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go: the gateway, or the mock upstream itself ("direct")."""

    name: str
    host: str
    port: int
    model: str
    path: str = "/v1/chat/completions"
    headers: dict[str, str] = field(default_factory=dict)
    #: ``"chat"`` (chat completions) or ``"responses"`` (``POST /v1/responses``: ``input``
    #: instead of ``messages``; a token is a ``response.output_text.delta`` event, the end is
    #: ``response.completed``: the final events repeat the whole text).
    api: str = "chat"
    #: More fields of the request body (``{"store": False}``...).
    extra_body: dict[str, object] = field(default_factory=dict)

    @property
    def token_mark(self) -> bytes:
        return RESPONSES_TOKEN_MARK if self.api == "responses" else TOKEN_MARK

    @property
    def done_mark(self) -> bytes:
        return b"event: response.completed" if self.api == "responses" else b"[DONE]"

    #: Each request names a session of its own (``x-epiloop-session-key: <tag>``): a stateful
    #: run, whose turn the gateway stores.
    stateful: bool = False

    def request(self, tag: str, *, stream: bool) -> bytes:
        conversation: dict[str, object] = (
            {"input": tag}
            if self.api == "responses"
            else {"messages": [{"role": "user", "content": tag}]}
        )
        body = msgspec.json.encode(
            {"model": self.model, **conversation, "stream": stream, **self.extra_body}
        )
        headers = {"Content-Type": "application/json", **self.headers}
        if self.stateful:
            headers["x-epiloop-session-key"] = tag
        if stream:
            headers["Accept"] = "text/event-stream"
        return build_request("POST", f"{self.host}:{self.port}", self.path, headers, body)


@dataclass(frozen=True, slots=True)
class LoadSpec:
    concurrency: int
    #: Requests to start at most.
    requests: int
    #: No request starts after this many seconds.
    max_seconds: float
    stream: bool = True
    #: Close the connection after this many tokens (``None``: read the whole answer).
    disconnect_after_tokens: int | None = None
    #: Requests still running this long after ``max_seconds`` are cut (errors).
    drain_seconds: float = 30.0
    #: Reuse connections between requests.
    keep_alive: bool = True


@dataclass(slots=True)
class RequestResult:
    tag: str
    #: ``time.monotonic()`` when the request was about to be written.
    started_at: float
    status: int = 0
    #: Seconds from the start to the response head, the first token, the end.
    head_seconds: float | None = None
    ttft_seconds: float | None = None
    total_seconds: float | None = None
    tokens: int = 0
    gaps: list[float] = field(default_factory=list)
    error: str | None = None
    #: ``time.monotonic()`` when this client closed the connection on purpose.
    disconnected_at: float | None = None


@dataclass(slots=True)
class LoadResult:
    target: str
    spec: LoadSpec
    started_at: float
    ended_at: float
    results: list[RequestResult]

    @property
    def elapsed(self) -> float:
        return self.ended_at - self.started_at


class _Slot:
    """One of the ``concurrency`` request slots: a connection and the request on it."""

    __slots__ = (
        "connecting",
        "done_seen",
        "error_seen",
        "last",
        "parser",
        "pending",
        "result",
        "reused",
        "sock",
        "tail",
        "tokens",
    )

    def __init__(self, sock: socket.socket, result: RequestResult, *, reused: bool) -> None:
        self.sock = sock
        self.result = result
        self.reused = reused
        self.connecting = False
        self.pending = b""
        self.parser = ResponseParser()
        self.tokens = 0
        self.last = 0.0
        self.tail = b""
        self.done_seen = False
        self.error_seen = False


class LoadClient:
    """Runs :class:`LoadSpec` s against one target from a thread of its own, on ``epoll``.

    Not trio: at tens of thousands of streamed events per second the load generator must cost
    a few microseconds per event, and a plain readiness loop does (a trio task switch per event
    costs several times more). :meth:`run` blocks; call it with ``trio.to_thread.run_sync``
    (see :func:`run_load`). Keep-alive connections left at the end of a run are kept for the
    next one (a warm-up run leaves the connections the measured run then uses); :meth:`close`
    closes them.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self._idle: list[socket.socket] = []
        self._address = (target.host, target.port)

    def close(self) -> None:
        for sock in self._idle:
            sock.close()
        self._idle.clear()

    def run(self, spec: LoadSpec) -> LoadResult:
        return _Run(self, spec).run()


class _Run:
    def __init__(self, client: LoadClient, spec: LoadSpec) -> None:
        self.client = client
        self.target = client.target
        self.spec = spec
        self._token_mark = client.target.token_mark
        self._done_mark = client.target.done_mark
        self.epoll = select.epoll()
        self.slots: dict[int, _Slot] = {}
        self.results: list[RequestResult] = []
        self.left = spec.requests
        self.started = time.monotonic()
        self.stop_issuing_at = self.started + spec.max_seconds
        self.cut_at = self.stop_issuing_at + spec.drain_seconds
        #: Slots whose request failed and that start their next one from the loop (not from the
        #: failure handler: a target that refuses every connection would recurse).
        self.restart = 0

    def run(self) -> LoadResult:
        try:
            for _ in range(self.spec.concurrency):
                sock = self.client._idle.pop() if self.client._idle else None
                if not self._next_request(sock):
                    break
            epoll = self.epoll
            slots = self.slots
            while slots or self.restart:
                while self.restart:
                    self.restart -= 1
                    if not self._next_request(None):
                        self.restart = 0
                now = time.monotonic()
                if now >= self.cut_at:
                    for cut in list(slots.values()):
                        cut.result.error = "cut at the time bound"
                        self._drop(cut)
                    break
                for fd, mask in epoll.poll(min(self.cut_at - now, 1.0)):
                    found = slots.get(fd)
                    if found is None:
                        continue
                    slot = found
                    if slot.connecting or slot.pending:
                        if mask & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                            self._on_writable(slot)
                    else:
                        self._on_readable(slot)
        finally:
            for left in list(self.slots.values()):
                self._drop(left)
            self.epoll.close()
        return LoadResult(self.target.name, self.spec, self.started, time.monotonic(), self.results)

    # -- requests -------------------------------------------------------------------------------

    def _next_request(self, sock: socket.socket | None) -> bool:
        """Start the next request (on ``sock`` when given); ``False`` when none is left."""
        if self.left <= 0 or time.monotonic() >= self.stop_issuing_at:
            if sock is not None:
                self.client._idle.append(sock)
            return False
        self.left -= 1
        result = RequestResult(f"{TAG_PREFIX}{next(_tags)}", time.monotonic())
        self.results.append(result)
        self._start(result, sock)
        return True

    def _start(self, result: RequestResult, sock: socket.socket | None) -> None:
        request = self.target.request(result.tag, stream=self.spec.stream)
        if sock is not None:
            slot = _Slot(sock, result, reused=True)
            self.slots[sock.fileno()] = slot
            self.epoll.register(sock.fileno(), select.EPOLLIN)
            result.started_at = time.monotonic()
            self._send(slot, request)
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        slot = _Slot(sock, result, reused=False)
        slot.connecting = True
        slot.pending = request
        self.slots[sock.fileno()] = slot
        self.epoll.register(sock.fileno(), select.EPOLLOUT)
        result.started_at = time.monotonic()
        code = sock.connect_ex(self.client._address)
        if code not in (0, errno.EINPROGRESS):
            self._fail(slot, f"connect: {os.strerror(code)}")

    def _send(self, slot: _Slot, data: bytes) -> None:
        try:
            sent = slot.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(slot, f"send: {exc}")
            return
        slot.pending = data[sent:]
        self.epoll.modify(slot.sock.fileno(), select.EPOLLOUT if slot.pending else select.EPOLLIN)

    def _on_writable(self, slot: _Slot) -> None:
        if slot.connecting:
            code = slot.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(slot, f"connect: {os.strerror(code)}")
                return
            slot.connecting = False
        self._send(slot, slot.pending)

    def _on_readable(self, slot: _Slot) -> None:
        result = slot.result
        parser = slot.parser
        try:
            data = slot.sock.recv(_RECEIVE_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(slot, f"recv: {exc}")
            return
        now = time.monotonic()
        try:
            if not data:
                if slot.reused and not parser.head_done and not data:
                    # The server closed an idle keep-alive connection: retry on a new one.
                    self._drop(slot)
                    self._start(result, None)
                    return
                parser.feed_eof()
            payload = parser.feed(data) if data else b""
        except ProtocolError as exc:
            self._fail(slot, f"protocol: {exc}")
            return
        if result.head_seconds is None and parser.head_done:
            result.head_seconds = now - result.started_at
            result.status = parser.status
        if payload:
            # A mark split between two reads counts once: the part of it in the last read's
            # tail (shorter than the mark, so never a whole one) is searched again.
            mark = self._token_mark
            count = (slot.tail[len(slot.tail) - len(mark) + 1 :] + payload).count(mark)
            if count:
                if slot.tokens == 0:
                    result.ttft_seconds = now - result.started_at
                else:
                    result.gaps.append(now - slot.last)
                if count > 1:
                    result.gaps.extend([0.0] * (count - 1))
                slot.last = now
                slot.tokens += count
                limit = self.spec.disconnect_after_tokens
                if limit is not None and slot.tokens >= limit:
                    result.tokens = slot.tokens
                    result.disconnected_at = time.monotonic()
                    self._drop(slot)
                    self._next_request(None)
                    return
            if self.spec.stream:
                window = slot.tail + payload
                if not slot.done_seen and self._done_mark in window:
                    slot.done_seen = True
                if not slot.error_seen and b'{"error"' in window:
                    slot.error_seen = True
                slot.tail = window[-32:]
        if parser.complete or not data:
            self._complete(slot, now)

    def _complete(self, slot: _Slot, now: float) -> None:
        result = slot.result
        parser = slot.parser
        result.tokens = slot.tokens
        result.total_seconds = now - result.started_at
        if parser.status != 200:
            result.error = f"HTTP {parser.status}"
        elif slot.error_seen:
            result.error = "in-band error event"
        elif self.spec.stream and not slot.done_seen:
            result.error = "stream ended without [DONE]"
        if parser.complete and parser.keep_alive and self.spec.keep_alive:
            sock = slot.sock
            self.epoll.unregister(sock.fileno())
            del self.slots[sock.fileno()]
            self._next_request(sock)
        else:
            self._drop(slot)
            self._next_request(None)

    def _fail(self, slot: _Slot, error: str) -> None:
        slot.result.error = error
        slot.result.tokens = slot.tokens
        self._drop(slot)
        self.restart += 1

    def _drop(self, slot: _Slot) -> None:
        fd = slot.sock.fileno()
        if self.slots.pop(fd, None) is not None:
            self.epoll.unregister(fd)
        slot.sock.close()


async def run_load(client: LoadClient, spec: LoadSpec) -> LoadResult:
    """Run ``spec`` with ``client`` in a worker thread (bounded by the spec's own deadlines)."""
    return await trio.to_thread.run_sync(client.run, spec)


@dataclass(slots=True)
class OpenStreams:
    """Streams held open by :func:`open_streams`."""

    results: list[RequestResult]
    #: How many streams are being opened.
    expected: int
    #: How many have received their response head and first body bytes.
    ready: int = 0
    failed: int = 0
    #: Set once every stream is ready or failed.
    settled: trio.Event = field(default_factory=trio.Event)

    def _count(self, *, ready: bool) -> None:
        if ready:
            self.ready += 1
        else:
            self.failed += 1
        if self.ready + self.failed >= self.expected:
            self.settled.set()


async def _hold_stream(
    target: Target, result: RequestResult, streams: OpenStreams, limiter: trio.CapacityLimiter
) -> None:
    sock: trio.socket.SocketType | None = None
    try:
        async with limiter:
            sock = await connect(target.host, target.port)
            result.started_at = time.monotonic()
            await send_all(sock, target.request(result.tag, stream=True))
            parser = ResponseParser()
            await receive_head(sock, parser)
            result.status = parser.status
            result.head_seconds = time.monotonic() - result.started_at
        if parser.status != 200:
            result.error = f"HTTP {parser.status}"
            streams._count(ready=False)
            return
        streams._count(ready=True)
        await trio.sleep_forever()
    except (OSError, ProtocolError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        streams._count(ready=False)
    finally:
        if sock is not None:
            result.disconnected_at = time.monotonic()
            sock.close()


@asynccontextmanager
async def open_streams(
    target: Target, count: int, *, opening_at_once: int = 50
) -> AsyncIterator[OpenStreams]:
    """Open ``count`` streams (``opening_at_once`` being opened at a time) and hold them open
    until the block exits; then every connection is closed. Callers bound the waiting."""
    streams = OpenStreams([], count)
    if count <= 0:
        streams.settled.set()
    limiter = trio.CapacityLimiter(opening_at_once)
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            result = RequestResult(f"{TAG_PREFIX}{next(_tags)}", time.monotonic())
            streams.results.append(result)
            nursery.start_soon(_hold_stream, target, result, streams, limiter)
        try:
            yield streams
        finally:
            nursery.cancel_scope.cancel(reason="the held streams are no longer needed")
