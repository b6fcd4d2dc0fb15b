"""A mock LLM upstream: OpenAI Chat Completions and Anthropic Messages over raw HTTP/1.1.

Test and benchmark tooling, not part of the gateway. It is a plain trio TCP server speaking
HTTP/1.1 through h11 (no web framework), so it costs little CPU per streamed event and a
benchmark measures the gateway rather than its fake upstream.

What it serves, for every request, is a :class:`Scenario` picked by the request's ``model``
(``scenarios["default"]`` otherwise): text tokens, reasoning pieces and tool calls, streamed as
SSE with a first-token delay and a pace, or one JSON answer when the request does not ask to
stream, and optionally a fault (an HTTP error, a hang, a TCP reset, garbage, ...).

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
import math
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import h11
import msgspec
import trio

__all__ = ["Fault", "MockUpstream", "MockUpstreamStatistics", "RecordedRequest", "Scenario"]

Fault = Literal[
    # Send the response headers (and the role chunk / message_start), then hang.
    "hang_before_first_token",
    # Read the request, then hang without sending any response.
    "hang_before_headers",
    # Stream ``fault_after`` token events, then hang.
    "hang_mid_stream",
    # Stream ``fault_after`` token events, then abort the connection with a TCP RST.
    "reset_mid_stream",
    # Close the connection right after reading the request, without any response.
    "close_immediately",
    # Stream ``fault_after`` token events, then a ``data:`` line that is not JSON.
    "malformed_sse",
    # Stream ``fault_after`` token events, then an in-band SSE error event; no end marker.
    "error_event",
    # Stream ``fault_after`` token events, then a ``data:`` line that never ends: 16 KiB pieces
    # without a newline (``pace`` apart) until the client closes.
    "endless_line",
    # Stream the token events over and over (``pace`` apart), never ending, until the client
    # closes: a valid answer of unbounded length.
    "endless_stream",
    # Stream ``fault_after`` token events, then an event whose JSON is nested 100,000 deep.
    "deep_json",
    # Stream ``fault_after`` token events, then 100,000 valid events that carry no output
    # (OpenAI: no choices; Anthropic: pings) in one write, then the rest of the stream.
    "empty_events",
    # HTTP errors with a provider-shaped JSON error body; 429 and 503 carry ``Retry-After``.
    "status_400",
    "status_429",
    "status_500",
    "status_503",
    # 200 with an HTML body.
    "wrong_content_type",
]

_STATUS_FAULTS: dict[str, tuple[int, str, str]] = {
    # fault: (status, OpenAI error type, Anthropic error type)
    "status_400": (400, "invalid_request_error", "invalid_request_error"),
    "status_429": (429, "rate_limit_error", "rate_limit_error"),
    "status_500": (500, "server_error", "api_error"),
    "status_503": (503, "server_error", "overloaded_error"),
}

#: OpenAI finish reasons and the Anthropic stop reasons the mock sends for them.
_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}

#: Bound on closing a connection, shielded from cancellation.
_CLOSE_BOUND = 1.0


@dataclass
class Scenario:
    """What the mock answers to one request."""

    #: Text pieces, streamed one SSE event each.
    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    #: Seconds between the response headers and the first token event.
    first_token_delay: float = 0.0
    #: Seconds between two token events.
    pace: float = 0.0
    #: ``(prompt_tokens, completion_tokens)``; ``None``: prompt words and streamed events.
    usage: tuple[int, int] | None = None
    #: ``(id, name, arguments JSON)``; arguments stream as a few deltas each.
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)
    #: OpenAI ``reasoning_content`` deltas / Anthropic thinking deltas, before the text.
    reasoning: list[str] = field(default_factory=list)
    #: OpenAI finish reason (mapped for Anthropic; unknown names are sent as they are).
    #: ``None``: ``"tool_calls"`` when there are tool calls, else ``"stop"``.
    finish_reason: str | None = None
    fault: Fault | None = None
    #: Token events sent before a mid-stream fault.
    fault_after: int = 2
    #: The ``Retry-After`` header value of ``status_429`` / ``status_503``.
    retry_after: str | None = None
    #: Apply the fault to the first N requests of this scenario only; ``None``: always.
    fail_times: int | None = None

    @property
    def effective_finish_reason(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"


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
        problem = _check_body(body, anthropic=anthropic)
        if problem is not None:
            await self._send_json(
                conn, 400, _error_body(problem, "invalid_request_error", anthropic)
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
        if fault is not None and fault in _STATUS_FAULTS:
            status, openai_type, anthropic_type = _STATUS_FAULTS[fault]
            extra: list[tuple[str, str]] = []
            if scenario.retry_after is not None and status in (429, 503):
                extra.append(("retry-after", scenario.retry_after))
            error_type = anthropic_type if anthropic else openai_type
            message = f"mock upstream fault {fault}"
            await self._send_json(conn, status, _error_body(message, error_type, anthropic), extra)
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

        usage = scenario.usage or (_count_prompt_words(body), _count_events(scenario))
        if body.get("stream") is True:
            if anthropic:
                frames = _anthropic_frames(scenario, model, usage)
            else:
                options = body.get("stream_options")
                include_usage = isinstance(options, dict) and options.get("include_usage") is True
                frames = _openai_frames(scenario, model, usage, include_usage=include_usage)
            return await self._stream(conn, record, scenario, fault, frames)
        if anthropic:
            answer = _anthropic_message(scenario, model, usage)
        else:
            answer = _openai_completion(scenario, model, usage)
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
        frames: _Frames,
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
        self, conn: _Connection, fault: Fault | None, frames: _Frames, pace: float
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
            data = msgspec.json.encode(_error_body("mock upstream error", "server_error", False))
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
        record.tokens_sent = _count_events(scenario)
        record.completed_at = trio.current_time()
        return True


# -- request checks and counting -------------------------------------------------------------


def _check_body(body: object, *, anthropic: bool) -> str | None:
    """What is wrong with a request body, as the upstream would say it; ``None``: nothing."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    if not isinstance(body.get("model"), str):
        return "model: a string is required"
    if not isinstance(body.get("messages"), list):
        return "messages: an array is required"
    if anthropic and not isinstance(body.get("max_tokens"), int):
        return "max_tokens: an integer is required"
    return None


def _count_prompt_words(body: dict[str, object]) -> int:
    words = 0
    messages = body.get("messages")
    assert isinstance(messages, list)
    system = body.get("system")
    if isinstance(system, str):
        words += len(system.split())
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    words += len(text.split())
    return words


def _count_events(scenario: Scenario) -> int:
    return (
        len(scenario.tokens)
        + len(scenario.reasoning)
        + sum(1 + len(_split_arguments(arguments)) for _, _, arguments in scenario.tool_calls)
    )


def _split_arguments(arguments: str) -> list[str]:
    """Tool-call arguments as the deltas they stream in: three pieces (fewer when short)."""
    if not arguments:
        return []
    size = max(1, math.ceil(len(arguments) / 3))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def _error_body(message: str, error_type: str, anthropic: bool) -> dict[str, object]:
    if anthropic:
        return {"type": "error", "error": {"type": error_type, "message": message}}
    return {"error": {"message": message, "type": error_type, "param": None, "code": None}}


# -- streamed frames --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Frames:
    """One stream, encoded ahead of time so the send loop only sleeps and writes."""

    head: bytes
    #: ``(payload, is_token)``: token events count for pacing and ``fault_after``.
    body: list[tuple[bytes, bool]]
    tail: bytes
    #: An in-band error event in the dialect of the stream.
    error: bytes
    #: A valid event that carries no output.
    empty: bytes


_encode = msgspec.json.encode
_ids = itertools.count(1)


def _openai_frames(
    scenario: Scenario, model: str, usage: tuple[int, int], *, include_usage: bool
) -> _Frames:
    chunk_id = f"chatcmpl-mock{next(_ids)}".encode()
    prefix = (
        b'data: {"id":"'
        + chunk_id
        + b'","object":"chat.completion.chunk","created":'
        + str(int(time.time())).encode()
        + b',"model":'
        + _encode(model)
        + b',"choices":'
    )

    def choice(delta: bytes, finish: bytes = b"null") -> bytes:
        return prefix + b'[{"index":0,"delta":' + delta + b',"finish_reason":' + finish + b"}]}\n\n"

    body: list[tuple[bytes, bool]] = []
    for piece in scenario.reasoning:
        body.append((choice(b'{"reasoning_content":' + _encode(piece) + b"}"), True))
    for token in scenario.tokens:
        body.append((choice(b'{"content":' + _encode(token) + b"}"), True))
    for index, (call_id, name, arguments) in enumerate(scenario.tool_calls):
        start = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        body.append((choice(b'{"tool_calls":[' + _encode(start) + b"]}"), True))
        for piece in _split_arguments(arguments):
            delta = {"index": index, "function": {"arguments": piece}}
            body.append((choice(b'{"tool_calls":[' + _encode(delta) + b"]}"), True))
    tail = choice(b"{}", _encode(scenario.effective_finish_reason))
    if include_usage:
        prompt, completion = usage
        usage_json = _encode(
            {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
        )
        tail += prefix + b'[],"usage":' + usage_json + b"}\n\n"
    tail += b"data: [DONE]\n\n"
    error = b"data: " + _encode(_error_body("mock upstream error", "server_error", False)) + b"\n\n"
    head = choice(b'{"role":"assistant","content":""}')
    return _Frames(head, body, tail, error, prefix + b"[]}\n\n")


def _sse(event: str, payload: object) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _encode(payload) + b"\n\n"


def _anthropic_frames(scenario: Scenario, model: str, usage: tuple[int, int]) -> _Frames:
    prompt, completion = usage
    message: dict[str, object] = {
        "id": f"msg_mock{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": 1},
    }
    head = _sse("message_start", {"type": "message_start", "message": message})
    head += _sse("ping", {"type": "ping"})
    body: list[tuple[bytes, bool]] = []
    block = 0

    def delta_frame(index: bytes, delta: bytes) -> bytes:
        return (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
            + index
            + b',"delta":'
            + delta
            + b"}\n\n"
        )

    def stop_frame(index: int) -> bytes:
        return _sse("content_block_stop", {"type": "content_block_stop", "index": index})

    if scenario.reasoning:
        thinking = {"type": "thinking", "thinking": ""}
        body.append((_sse("content_block_start", _block_start(block, thinking)), False))
        index = str(block).encode()
        for piece in scenario.reasoning:
            delta = b'{"type":"thinking_delta","thinking":' + _encode(piece) + b"}"
            body.append((delta_frame(index, delta), True))
        signature = b'{"type":"signature_delta","signature":"bW9jaw=="}'
        body.append((delta_frame(index, signature), False))
        body.append((stop_frame(block), False))
        block += 1
    if scenario.tokens:
        text = {"type": "text", "text": ""}
        body.append((_sse("content_block_start", _block_start(block, text)), False))
        index = str(block).encode()
        for token in scenario.tokens:
            delta = b'{"type":"text_delta","text":' + _encode(token) + b"}"
            body.append((delta_frame(index, delta), True))
        body.append((stop_frame(block), False))
        block += 1
    for call_id, name, arguments in scenario.tool_calls:
        tool_use = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        body.append((_sse("content_block_start", _block_start(block, tool_use)), True))
        index = str(block).encode()
        for piece in _split_arguments(arguments):
            delta = b'{"type":"input_json_delta","partial_json":' + _encode(piece) + b"}"
            body.append((delta_frame(index, delta), True))
        body.append((stop_frame(block), False))
        block += 1
    finish = scenario.effective_finish_reason
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": _ANTHROPIC_STOP.get(finish, finish), "stop_sequence": None},
        "usage": {"output_tokens": completion},
    }
    tail = _sse("message_delta", message_delta) + _sse("message_stop", {"type": "message_stop"})
    error = _sse("error", _error_body("Overloaded", "overloaded_error", True))
    return _Frames(head, body, tail, error, _sse("ping", {"type": "ping"}))


def _block_start(index: int, block: Mapping[str, object]) -> dict[str, object]:
    return {"type": "content_block_start", "index": index, "content_block": block}


# -- whole answers ----------------------------------------------------------------------------


def _openai_completion(scenario: Scenario, model: str, usage: tuple[int, int]) -> object:
    message: dict[str, object] = {"role": "assistant", "content": "".join(scenario.tokens) or None}
    if scenario.reasoning:
        message["reasoning_content"] = "".join(scenario.reasoning)
    if scenario.tool_calls:
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            for call_id, name, arguments in scenario.tool_calls
        ]
    prompt, completion = usage
    return {
        "id": f"chatcmpl-mock{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": scenario.effective_finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def _anthropic_message(scenario: Scenario, model: str, usage: tuple[int, int]) -> object:
    content: list[object] = []
    if scenario.reasoning:
        thinking = "".join(scenario.reasoning)
        content.append({"type": "thinking", "thinking": thinking, "signature": "bW9jaw=="})
    if scenario.tokens:
        content.append({"type": "text", "text": "".join(scenario.tokens)})
    for call_id, name, arguments in scenario.tool_calls:
        arguments_value: object = msgspec.json.decode(arguments) if arguments else {}
        content.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments_value})
    finish = scenario.effective_finish_reason
    prompt, completion = usage
    return {
        "id": f"msg_mock{next(_ids)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _ANTHROPIC_STOP.get(finish, finish),
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": completion},
    }
