"""A mock LLM upstream: OpenAI Chat Completions and Anthropic Messages over raw HTTP/1.1.

Test and benchmark tooling, not part of the gateway. It is a plain trio TCP server speaking
HTTP/1.1 through h11 (no web framework), so it costs little CPU per streamed event and a
benchmark measures the gateway rather than its fake upstream.

What it serves, for every request, is a :class:`Scenario` picked by the request's ``model``
(``scenarios["default"]`` otherwise): text tokens, reasoning pieces and tool calls, streamed as
SSE with a first-token delay and a pace, or one JSON answer when the request does not ask to
stream, and optionally a fault (an HTTP error, a hang, a TCP reset, garbage, ...). This module
owns the server: connections, pacing, faults that act on the connection, and the records; the
answers' bytes come from :mod:`benchmarks.mock_answers`, which also defines :class:`Scenario`
(re-exported here, so ``from benchmarks.mock_upstream import MockUpstream, Scenario`` is all a
test needs).

It records every request (:class:`RecordedRequest`) with the time the server saw its connection
close, so a test can measure how fast a cancelled client really stops the upstream's work. Each
connection runs a reader task beside the response writer: a client that closes (FIN or RST) is
noticed at once, even while a response is being streamed, and the writer is cancelled.

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/messages``. ``serve()`` reports the
server's root URL (``http://127.0.0.1:<port>``, without ``/v1``).

It imports nothing from ``trio_gateway``: it speaks the upstream protocols from their specs.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import h11
import msgspec
import trio

from .mock_answers import (
    STATUS_FAULTS,
    Frames,
    anthropic_frames,
    anthropic_message,
    check_body,
    count_events,
    count_prompt_words,
    error_body,
    openai_completion,
    openai_frames,
)
from .mock_answers import Fault as Fault
from .mock_answers import Scenario as Scenario

__all__ = ["Fault", "MockUpstream", "MockUpstreamStatistics", "RecordedRequest", "Scenario"]


#: Bound on closing a connection, shielded from cancellation.
_CLOSE_BOUND = 1.0


@dataclass
class RecordedRequest:
    """One request as the mock received it, and what became of its connection."""

    method: str
    path: str
    #: Lower-case names; repeated headers joined with ``", "``.
    headers: dict[str, str]
    #: The parsed JSON body (``None`` when it was not JSON).
    body: object
    received_at: float
    #: The scenario key that answered (the model, or ``"default"``).
    scenario: str = "default"
    #: The fault applied to this request, if any.
    fault: Fault | None = None
    #: Token events (text, reasoning, tool-call pieces) written so far.
    tokens_sent: int = 0
    #: When the whole response was written (``None``: never).
    completed_at: float | None = None
    #: When the server saw the connection close (``trio.current_time()``).
    closed_at: float | None = None
    #: ``"client"`` (EOF/reset seen by the server) or ``"server"`` (the mock closed it).
    closed_by: Literal["client", "server"] | None = None
    closed: trio.Event = field(default_factory=trio.Event, repr=False, compare=False)

    @property
    def json(self) -> dict[str, object]:
        """The body as a JSON object (an assertion error if it is anything else)."""
        assert isinstance(self.body, dict), self.body
        return self.body


@dataclass(frozen=True, slots=True)
class MockUpstreamStatistics:
    open_connections: int
    total_connections: int
    requests: int


class _ClientGone(Exception):
    """The client closed the connection while the mock was writing."""


class _Connection:
    __slots__ = ("closed_at", "closed_by", "h11", "records", "reset", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)
        self.records: list[RecordedRequest] = []
        self.closed_at: float | None = None
        self.closed_by: Literal["client", "server"] | None = None
        self.reset = False

    def mark_closed(self, by: Literal["client", "server"]) -> None:
        if self.closed_at is None:
            self.closed_at = trio.current_time()
            self.closed_by = by

    async def send(self, *events: h11.Event) -> None:
        data = b"".join(self.h11.send(event) or b"" for event in events)
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.mark_closed("client")
            raise _ClientGone from exc


class MockUpstream:
    """The mock server. Run ``serve`` with ``await nursery.start(upstream.serve)``."""

    def __init__(
        self, scenarios: Mapping[str, Scenario | Sequence[Scenario]] | None = None
    ) -> None:
        #: Scenarios by request model; ``"default"`` answers every other model.
        #: By model: one scenario for every request, or a script of scenarios played one per
        #: request in order (the last one repeats), for multi-call exchanges such as tool use.
        self.scenarios: dict[str, Scenario | Sequence[Scenario]] = dict(scenarios or {})
        self._played: dict[str, int] = {}
        self.scenarios.setdefault("default", Scenario())
        self.requests: list[RecordedRequest] = []
        self.open_connections = 0
        self.total_connections = 0
        self.url = ""
        self._faults_applied: dict[str, int] = {}

    @property
    def openai_base_url(self) -> str:
        """The ``baseUrl`` of an ``openai-chat`` provider pointing here."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The ``baseUrl`` of an ``anthropic-messages`` provider pointing here."""
        return self.url

    def statistics(self) -> MockUpstreamStatistics:
        return MockUpstreamStatistics(
            self.open_connections, self.total_connections, len(self.requests)
        )

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1, a free port; report the root URL; serve until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve_connection, listeners)
            task_status.started(self.url)

    # -- connections --------------------------------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = _Connection(stream)
        self.open_connections += 1
        self.total_connections += 1
        try:
            async with trio.open_nursery() as nursery:
                send_channel, receive_channel = trio.open_memory_channel[bytes](8)
                nursery.start_soon(self._read_loop, conn, send_channel, nursery.cancel_scope)
                with contextlib.suppress(_ClientGone):
                    await self._http_loop(conn, receive_channel)
                nursery.cancel_scope.cancel(reason="the connection is done")
        finally:
            if conn.reset:
                # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.mark_closed("server")
            with trio.move_on_after(_CLOSE_BOUND, shield=True):
                await stream.aclose()
            self.open_connections -= 1
            for record in conn.records:
                record.closed_at = conn.closed_at
                record.closed_by = conn.closed_by
                record.closed.set()

    async def _read_loop(
        self,
        conn: _Connection,
        send_channel: trio.MemorySendChannel[bytes],
        connection_scope: trio.CancelScope,
    ) -> None:
        """Read the socket for the whole connection; on EOF or reset, stop the writer too."""
        async with send_channel:
            while True:
                try:
                    data = await conn.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    conn.mark_closed("client")
                    connection_scope.cancel(reason="the client closed the connection")
                    return
                await send_channel.send(data)

    async def _http_loop(
        self, conn: _Connection, receive_channel: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        while True:
            received = await self._read_request(conn, receive_channel)
            if received is None:
                return
            request, body = received
            keep_going = await self._respond(conn, request, body)
            if not keep_going or conn.h11.our_state is not h11.DONE:
                return
            try:
                conn.h11.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(
        self, conn: _Connection, receive_channel: trio.MemoryReceiveChannel[bytes]
    ) -> tuple[h11.Request, bytes] | None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError:
                await self._send_simple(conn, 400, b"bad request", close=True)
                return None
            if event is h11.NEED_DATA:
                try:
                    data = await receive_channel.receive()
                except trio.EndOfChannel:
                    return None
                conn.h11.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            else:  # ConnectionClosed or PAUSED
                return None

    async def _send_simple(
        self, conn: _Connection, status: int, body: bytes, *, close: bool = False
    ) -> None:
        headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
        if close:
            headers.append(("connection", "close"))
        with contextlib.suppress(h11.LocalProtocolError):
            await conn.send(
                h11.Response(status_code=status, headers=headers),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )

    # -- requests -----------------------------------------------------------------------------

    async def _respond(self, conn: _Connection, request: h11.Request, raw_body: bytes) -> bool:
        """Answer one request; return whether the connection may serve another."""
        path = request.target.decode("latin-1").partition("?")[0]
        if path not in ("/v1/chat/completions", "/v1/messages"):
            await self._send_simple(conn, 404, b"not found")
            return True
        if request.method != b"POST":
            await self._send_simple(conn, 405, b"method not allowed")
            return True
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        try:
            body: object = msgspec.json.decode(raw_body)
        except msgspec.DecodeError:
            body = None
        record = RecordedRequest(
            method=request.method.decode("latin-1"),
            path=path,
            headers=headers,
            body=body,
            received_at=trio.current_time(),
        )
        self.requests.append(record)
        conn.records.append(record)
        anthropic = path == "/v1/messages"
        problem = check_body(body, anthropic=anthropic)
        if problem is not None:
            await self._send_json(
                conn, 400, error_body(problem, "invalid_request_error", anthropic)
            )
            return True
        assert isinstance(body, dict)
        model = body["model"]
        assert isinstance(model, str)
        key = model if model in self.scenarios else "default"
        scenario = self._next_scenario(key)
        record.scenario = key
        fault = self._take_fault(key, scenario)
        record.fault = fault

        if fault == "close_immediately":
            conn.mark_closed("server")
            return False
        if fault == "hang_before_headers":
            await trio.sleep_forever()
        if fault is not None and fault in STATUS_FAULTS:
            status, openai_type, anthropic_type = STATUS_FAULTS[fault]
            extra: list[tuple[str, str]] = []
            if scenario.retry_after is not None and status in (429, 503):
                extra.append(("retry-after", scenario.retry_after))
            error_type = anthropic_type if anthropic else openai_type
            message = f"mock upstream fault {fault}"
            await self._send_json(conn, status, error_body(message, error_type, anthropic), extra)
            record.completed_at = trio.current_time()
            return True
        if fault == "wrong_content_type":
            page = b"<html><body>Not an API</body></html>"
            await conn.send(
                h11.Response(
                    status_code=200,
                    headers=[
                        ("content-type", "text/html; charset=utf-8"),
                        ("content-length", str(len(page))),
                    ],
                ),
                h11.Data(data=page),
                h11.EndOfMessage(),
            )
            record.completed_at = trio.current_time()
            return True

        usage = scenario.usage or (count_prompt_words(body), count_events(scenario))
        if body.get("stream") is True:
            if anthropic:
                frames = anthropic_frames(scenario, model, usage)
            else:
                options = body.get("stream_options")
                include_usage = isinstance(options, dict) and options.get("include_usage") is True
                frames = openai_frames(scenario, model, usage, include_usage=include_usage)
            return await self._stream(conn, record, scenario, fault, frames)
        if anthropic:
            answer = anthropic_message(scenario, model, usage)
        else:
            answer = openai_completion(scenario, model, usage)
        return await self._send_whole(conn, record, scenario, fault, answer)

    def _next_scenario(self, key: str) -> Scenario:
        entry = self.scenarios[key]
        if isinstance(entry, Scenario):
            return entry
        played = self._played.get(key, 0)
        self._played[key] = played + 1
        return entry[min(played, len(entry) - 1)]

    def _take_fault(self, key: str, scenario: Scenario) -> Fault | None:
        if scenario.fault is None:
            return None
        applied = self._faults_applied.get(key, 0)
        if scenario.fail_times is not None and applied >= scenario.fail_times:
            return None
        self._faults_applied[key] = applied + 1
        return scenario.fault

    async def _send_json(
        self,
        conn: _Connection,
        status: int,
        payload: object,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        data = msgspec.json.encode(payload)
        headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
        headers.extend(extra_headers)
        await conn.send(
            h11.Response(status_code=status, headers=headers),
            h11.Data(data=data),
            h11.EndOfMessage(),
        )

    async def _stream(
        self,
        conn: _Connection,
        record: RecordedRequest,
        scenario: Scenario,
        fault: Fault | None,
        frames: Frames,
    ) -> bool:
        headers = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
        ]
        await conn.send(h11.Response(status_code=200, headers=headers))
        if frames.head:
            await conn.send(h11.Data(data=frames.head))
        if fault == "endless_stream":
            tokens = [payload for payload, is_token in frames.body if is_token]
            assert tokens, "an endless stream needs token events"
            for payload in itertools.cycle(tokens):
                if scenario.pace > 0:
                    await trio.sleep(scenario.pace)
                record.tokens_sent += 1
                await conn.send(h11.Data(data=payload))
        mid_stream = fault in (
            "hang_mid_stream",
            "reset_mid_stream",
            "malformed_sse",
            "error_event",
            "endless_line",
            "deep_json",
            "empty_events",
        )
        injected = False
        first = True
        for payload, is_token in frames.body:
            if is_token:
                if first and fault == "hang_before_first_token":
                    await trio.sleep_forever()
                if mid_stream and not injected and record.tokens_sent >= scenario.fault_after:
                    injected = True
                    if not await self._inject(conn, fault, frames, scenario.pace):
                        return False
                delay = scenario.first_token_delay if first else scenario.pace
                if delay > 0:
                    await trio.sleep(delay)
                first = False
                record.tokens_sent += 1
            await conn.send(h11.Data(data=payload))
        if fault == "hang_before_first_token" and first:
            await trio.sleep_forever()
        if (
            mid_stream
            and not injected
            and not await self._inject(conn, fault, frames, scenario.pace)
        ):
            return False
        await conn.send(h11.Data(data=frames.tail), h11.EndOfMessage())
        record.completed_at = trio.current_time()
        return True

    async def _inject(
        self, conn: _Connection, fault: Fault | None, frames: Frames, pace: float
    ) -> bool:
        """Play a mid-stream fault; return whether the stream goes on afterwards."""
        if fault == "hang_mid_stream":
            await trio.sleep_forever()
        if fault == "reset_mid_stream":
            conn.reset = True
            conn.mark_closed("server")
            return False
        if fault == "malformed_sse":
            await conn.send(h11.Data(data=b"data: {this is not json\n\n"))
            return True
        if fault == "empty_events":
            await conn.send(h11.Data(data=frames.empty * 100_000))
            return True
        if fault == "deep_json":
            depth = 100_000
            deep = b'data: {"deep":' + b"[" * depth + b"]" * depth + b"}\n\n"
            await conn.send(h11.Data(data=deep))
            return True
        if fault == "endless_line":
            await conn.send(h11.Data(data=b'data: {"endless":"'))
            piece = b"x" * (16 * 1024)
            while True:
                if pace > 0:
                    await trio.sleep(pace)
                await conn.send(h11.Data(data=piece))
        # error_event: the error, then the end of the body without the normal ending.
        await conn.send(h11.Data(data=frames.error), h11.EndOfMessage())
        return False

    async def _send_whole(
        self,
        conn: _Connection,
        record: RecordedRequest,
        scenario: Scenario,
        fault: Fault | None,
        answer: object,
    ) -> bool:
        """A non-streaming answer; faults act on its body as they would on a stream."""
        data = msgspec.json.encode(answer)
        if fault == "hang_before_first_token":
            await trio.sleep_forever()
        if scenario.first_token_delay > 0:
            await trio.sleep(scenario.first_token_delay)
        if fault == "malformed_sse":
            data = b"{this is not json"
        if fault == "error_event":
            data = msgspec.json.encode(error_body("mock upstream error", "server_error", False))
        headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
        await conn.send(h11.Response(status_code=200, headers=headers))
        if fault in ("hang_mid_stream", "reset_mid_stream"):
            await conn.send(h11.Data(data=data[: len(data) // 2]))
            if fault == "hang_mid_stream":
                await trio.sleep_forever()
            conn.reset = True
            conn.mark_closed("server")
            return False
        await conn.send(h11.Data(data=data), h11.EndOfMessage())
        record.tokens_sent = count_events(scenario)
        record.completed_at = trio.current_time()
        return True
