"""The lean HTTP/1.1 transport, against scripted raw servers on 127.0.0.1 (plain and TLS), and
how an upstream client picks its transport (environment proxies).

Each test server answers every request on a connection with the next scripted reply (raw
bytes, so malformed answers are possible), and records how many connections it accepted and
when each one closed, so reuse and prompt closing are visible from outside.
"""

from __future__ import annotations

import base64
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import httpx
import msgspec
import pytest
import trio
import trustme

from trio_gateway import disconnects
from trio_gateway.config.schema import OpenAIChatProviderConfig
from trio_gateway.errors import UpstreamError
from trio_gateway.messages import Message
from trio_gateway.providers import http11
from trio_gateway.providers.base import ModelEvent, ModelRequest, TextDelta
from trio_gateway.providers.http11 import Http11Transport
from trio_gateway.providers.openai_chat import ChatStreamParser, OpenAIChatProvider
from trio_gateway.providers.upstream import UpstreamClient, environment_proxy

BOUND = 5.0

#: A reply: raw bytes to write, then whether to close the connection afterwards.
Reply = tuple[bytes, bool]


def ok(body: bytes, *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def chunked(*parts: bytes) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    return head + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


@dataclass
class RawServer:
    replies: list[Reply]
    port: int = 0
    connections: int = 0
    closed: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed_event: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        buffer = b""
        try:
            while self.replies:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                self.requests.append(head + b"\r\n\r\n" + buffer[:length])
                buffer = buffer[length:]
                data, close = self.replies.pop(0)
                await stream.send_all(data)
                if close:
                    return
            # No more replies: wait for the client to close.
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed += 1
            self.closed_event.set()
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def raw_server(
    replies: list[Reply], *, wrap: Callable[[trio.SocketStream], trio.abc.Stream] | None = None
) -> AsyncIterator[RawServer]:
    server = RawServer(list(replies))

    async def handler(stream: trio.SocketStream) -> None:
        await server.handle(stream if wrap is None else wrap(stream))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client(
    port: int, *, scheme: str = "http", transport: Http11Transport | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"{scheme}://127.0.0.1:{port}", transport=transport or Http11Transport()
    ) as http:
        yield http


async def test_content_length_and_chunked_bodies_reuse_one_connection() -> None:
    replies = [(ok(b"hello"), False), (chunked(b"data: a\n\n", b"data: b\n\n"), False)]
    async with raw_server(replies) as server, client(server.port) as http:
        with trio.fail_after(BOUND):
            first = await http.post("/one", content=b'{"x": 1}')
            async with http.stream("POST", "/two", content=b"{}") as second:
                parts = [part async for part in second.aiter_raw()]
    assert first.status_code == 200
    assert first.content == b"hello"
    assert first.http_version == "HTTP/1.1"
    assert b"".join(parts) == b"data: a\n\ndata: b\n\n"
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /one HTTP/1.1\r\n")
    assert server.requests[0].endswith(b'\r\n\r\n{"x": 1}')
    assert b"host: 127.0.0.1:" in server.requests[0].lower()


async def test_a_half_read_response_closes_its_connection_at_once() -> None:
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n"
    replies = [(head, False), (ok(b"again"), False)]
    async with raw_server(replies) as server, client(server.port) as http:
        with trio.fail_after(BOUND):
            async with http.stream("GET", "/") as response:
                async for _ in response.aiter_raw():
                    break
            # The server saw the abandoned connection close; the next request opens another.
            await server.closed_event.wait()
            again = await http.get("/")
    assert again.content == b"again"
    assert server.connections == 2


async def test_cancelling_a_read_closes_the_connection() -> None:
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    async with raw_server([(head, False)]) as server, client(server.port) as http:
        with trio.fail_after(BOUND):
            async with http.stream("GET", "/") as response:
                with trio.move_on_after(0.05) as waited:
                    async for _ in response.aiter_raw():
                        pass
            assert waited.cancelled_caught
            await server.closed_event.wait()
    assert server.closed == 1


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    replies = [(ok(b"one", extra=b""), True), (ok(b"two"), False)]
    async with raw_server(replies) as server, client(server.port) as http:
        with trio.fail_after(BOUND):
            # The first answer does not say "connection: close", so the client pools the
            # connection; the server then closes it while it is idle.
            assert (await http.get("/")).content == b"one"
            await server.closed_event.wait()
            await trio.sleep(0.01)  # let the FIN arrive
            assert (await http.get("/")).content == b"two"
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_closed_when_connecting_anew_fails() -> None:
    transport = Http11Transport()
    async with client(0, transport=transport) as http:
        async with raw_server([(ok(b"one"), True)]) as server:
            url = f"http://127.0.0.1:{server.port}/"
            with trio.fail_after(BOUND):
                assert (await http.get(url)).content == b"one"
                await server.closed_event.wait()
        # The server is gone: its idle connection is stale and a new one is refused.
        [stale] = [connection for idle in transport._idle.values() for connection in idle]
        try:
            with trio.fail_after(BOUND), pytest.raises(httpx.ConnectError):
                await http.get(url)
            assert stale.sock is None  # closed, not left for the garbage collector
        finally:
            await stale.close()


async def test_connection_close_and_a_body_ended_by_eof() -> None:
    close_delimited = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"
    replies = [(ok(b"x", extra=b"connection: close\r\n"), True), (close_delimited, True)]
    async with raw_server(replies) as server, client(server.port) as http:
        with trio.fail_after(BOUND):
            assert (await http.get("/")).content == b"x"
            assert (await http.get("/")).content == b"until the end"
    assert server.connections == 2


async def test_informational_answers_are_skipped() -> None:
    reply = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + ok(b"final")
    async with raw_server([(reply, False)]) as server, client(server.port) as http:
        with trio.fail_after(BOUND):
            response = await http.get("/")
    assert response.status_code == 200
    assert response.content == b"final"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"", "Server disconnected without sending a response."),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", "peer closed connection"),
        (b"NOT HTTP AT ALL\r\n\r\n", "illegal status line"),
    ],
)
async def test_broken_answers_are_remote_protocol_errors(reply: bytes, message: str) -> None:
    async with raw_server([(reply, True)]) as server, client(server.port) as http:
        with trio.fail_after(BOUND), pytest.raises(httpx.RemoteProtocolError) as info:
            await http.get("/")
    assert message in str(info.value)


async def test_connection_refused_is_a_connect_error() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with client(port) as http:
        with trio.fail_after(BOUND), pytest.raises(httpx.ConnectError):
            await http.get("/")


async def test_timeouts_are_httpx_timeouts() -> None:
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    async with raw_server([(b"", False), (head, False)]) as server, client(server.port) as http:
        with trio.fail_after(BOUND):
            # The server never answers the first request: the read timeout fires.
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/", timeout=httpx.Timeout(None, read=0.05))


async def test_unsupported_scheme() -> None:
    async with httpx.AsyncClient(transport=Http11Transport()) as http:
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")


async def test_keepalive_bound_and_closing_the_transport() -> None:
    transport = Http11Transport(max_keepalive=1)
    replies = [(ok(b"a"), False), (ok(b"b"), False)]
    async with raw_server(list(replies)) as one, raw_server(list(replies)) as two:
        async with client(one.port, transport=transport) as http_one:
            await http_one.get("/")
            # A second origin's connection does not fit in the pool: it is closed.
            async with httpx.AsyncClient(transport=transport) as http_two:
                await http_two.get(f"http://127.0.0.1:{two.port}/")
                with trio.fail_after(BOUND):
                    await two.closed_event.wait()
        # Closing the client closes the transport and its pooled connection.
        with trio.fail_after(BOUND):
            await one.closed_event.wait()
    with pytest.raises(RuntimeError):
        await transport.handle_async_request(httpx.Request("GET", "http://127.0.0.1/"))


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


TlsWrap = Callable[[trio.SocketStream], trio.abc.Stream]


@pytest.fixture
def tls_wrap(authority: trustme.CA) -> TlsWrap:
    """Makes a raw server speak TLS with a certificate for 127.0.0.1 from ``authority``."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)

    def wrap(stream: trio.SocketStream) -> trio.abc.Stream:
        return trio.SSLStream(stream, server_context, server_side=True)

    return wrap


async def test_tls_with_a_trusted_certificate(authority: trustme.CA, tls_wrap: TlsWrap) -> None:
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    replies = [(ok(b"secure"), False), (chunked(b"data: x\n\n"), False)]
    transport = Http11Transport(ssl_context=client_context)
    async with (
        raw_server(replies, wrap=tls_wrap) as server,
        client(server.port, scheme="https", transport=transport) as http,
    ):
        with trio.fail_after(BOUND):
            assert (await http.get("/")).content == b"secure"
            assert (await http.get("/")).content == b"data: x\n\n"
    assert server.connections == 1


async def test_tls_with_an_untrusted_certificate_is_a_connect_error(tls_wrap: TlsWrap) -> None:
    # The default context (httpx's trust store) does not know the test authority.
    async with (
        raw_server([(ok(b"x"), False)], wrap=tls_wrap) as server,
        client(server.port, scheme="https") as http,
    ):
        with trio.fail_after(BOUND), pytest.raises(httpx.ConnectError) as info:
            await http.get("/")
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)


# -- which transport an upstream client uses ------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({}, "https://api.example.com/v1", None),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://api.example.com/v1", "http://proxy:3128"),
        ({"https_proxy": "proxy:3128"}, "https://api.example.com/v1", "http://proxy:3128"),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "http://api.example.com/v1", None),
        ({"ALL_PROXY": "http://proxy:3128"}, "http://api.example.com/v1", "http://proxy:3128"),
        (
            {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "example.com"},
            "https://api.example.com/v1",
            None,
        ),
        (
            {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "localhost,127.0.0.1"},
            "http://127.0.0.1:8000/v1",
            None,
        ),
    ],
)
def test_environment_proxy(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, expected: str | None
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert environment_proxy(httpx.URL(url)) == expected


async def test_an_upstream_named_by_the_environment_proxy_is_reached_through_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = [
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"via proxy"},"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    async with raw_server([(chunked(*events), False)]) as proxy:
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        settings = msgspec.convert(
            {"api": "openai-chat", "baseUrl": "http://upstream.invalid/v1", "apiKey": "k"},
            OpenAIChatProviderConfig,
        )
        received: list[ModelEvent] = []

        async def emit(event: ModelEvent) -> None:
            received.append(event)

        async with OpenAIChatProvider(settings, name="p") as provider:
            with trio.fail_after(BOUND):
                await provider.stream(
                    ModelRequest(model="m", messages=[Message("user", "hi")]), emit
                )
    assert [event.text for event in received if isinstance(event, TextDelta)] == ["via proxy"]
    # A plain-HTTP proxy gets the absolute URL as the request target.
    assert proxy.requests[0].startswith(
        b"POST http://upstream.invalid/v1/chat/completions HTTP/1.1\r\n"
    )


# -- reuse, fairness and cancellation ---------------------------------------------------------


async def test_bytes_after_an_answer_keep_its_connection_out_of_the_pool() -> None:
    # Extra bytes after a complete answer would be read as the next answer: never pooled.
    replies = [(ok(b"x") + b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale", False)]
    replies.append((ok(b"fresh"), False))
    async with raw_server(replies) as server, client(server.port) as http:
        with trio.fail_after(BOUND):
            assert (await http.get("/")).content == b"x"
            assert (await http.get("/")).content == b"fresh"
    assert server.connections == 2


async def test_a_flooding_upstream_does_not_starve_other_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Data that is always there to read: the reader must still yield now and then.
    monkeypatch.setattr(http11, "_READ_SIZE", 1024)
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        right.sendall(b"x" * 100 * 1024)
        connection = http11._Connection(("http", "test", 80), sock=left, stream=None)
        ran = 0

        async def other_task() -> None:
            nonlocal ran
            while True:
                ran += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            await trio.lowlevel.checkpoint()
            ran = 0
            for _ in range(64):
                assert await connection.receive() == b"x" * 1024
            seen = ran  # before the cancel below lets the other task run once more
            nursery.cancel_scope.cancel()
    assert seen >= 1  # the other task ran while the reads found data every time


async def test_cancelling_while_waiting_for_the_head_closes_the_connection() -> None:
    transport = Http11Transport()
    async with (
        raw_server([(b"", False)]) as server,
        client(server.port, transport=transport) as http,
    ):
        with trio.move_on_after(0.05) as waited:
            await http.get("/")
        assert waited.cancelled_caught
        with trio.fail_after(BOUND):
            await server.closed_event.wait()
        assert transport._idle_count == 0


async def test_cancelling_a_send_the_server_does_not_read_closes_the_connection() -> None:
    listener = trio.socket.socket()
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        async with client(port) as http:
            # Far more than the socket buffers hold: the send waits until it is cancelled.
            with trio.move_on_after(0.2) as waited:
                await http.post("/", content=b"y" * 64 * 1024 * 1024)
            assert waited.cancelled_caught
            accepted, _ = await listener.accept()
            with accepted, trio.fail_after(BOUND):
                while await accepted.recv(1024 * 1024):
                    pass  # the end comes: the client closed its side


async def test_closing_a_body_from_another_task_ends_a_waiting_read() -> None:
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    async with raw_server([(head, False)]) as server, client(server.port) as http:
        async with http.stream("GET", "/") as response:
            stream = response.stream
            assert isinstance(stream, httpx.AsyncByteStream)

            async def close_soon() -> None:
                await trio.sleep(0.05)
                await stream.aclose()

            errors: list[httpx.ReadError] = []
            with trio.fail_after(BOUND):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(close_soon)
                    try:
                        async for _ in stream:
                            pass
                    except httpx.ReadError as exc:
                        errors.append(exc)
            assert errors
        with trio.fail_after(BOUND):
            await server.closed_event.wait()


# -- the upstream client's URLs and credentials ---------------------------------------------------


def upstream_client(base_url: str, headers: dict[str, str] | None = None) -> UpstreamClient:
    return UpstreamClient(
        provider="p",
        base_url=base_url,
        headers=headers or {},
        connect_timeout=1.0,
        first_token_timeout=1.0,
        idle_timeout=1.0,
        transport=Http11Transport(),
    )


@pytest.mark.parametrize(
    ("base_url", "path", "expected"),
    [
        ("http://h:8000/v1", "chat/completions", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/", "/chat/completions", "http://h:8000/v1/chat/completions"),
        ("https://api.example.com", "v1/messages", "https://api.example.com/v1/messages"),
        (
            "https://x.openai.azure.com/openai/deployments/d?api-version=2024-10-21",
            "chat/completions",
            "https://x.openai.azure.com/openai/deployments/d/chat/completions"
            "?api-version=2024-10-21",
        ),
    ],
)
def test_upstream_urls_join_the_base_url(base_url: str, path: str, expected: str) -> None:
    assert str(upstream_client(base_url).url(path)) == expected


def test_credentials_in_the_base_url_become_basic_auth() -> None:
    upstream = upstream_client("http://user:p%40ss@h:8000/v1")
    assert str(upstream.url("chat/completions")) == "http://h:8000/v1/chat/completions"
    expected = "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert upstream._headers["authorization"] == expected
    # Configured authentication wins.
    configured = upstream_client("http://user:pass@h/v1", {"authorization": "Bearer k"})
    assert configured._headers["authorization"] == "Bearer k"


async def test_a_request_that_cannot_be_sent_is_not_retried() -> None:
    async with raw_server([(ok(b"x"), False)]) as server:
        upstream = upstream_client(f"http://127.0.0.1:{server.port}/v1", {"x-bad": "a\x00b"})
        parser = ChatStreamParser("p")

        async def emit(event: ModelEvent) -> None:
            raise AssertionError("nothing is emitted")

        with trio.fail_after(BOUND), pytest.raises(UpstreamError) as info:
            await upstream.stream("chat/completions", b"{}", parser, emit, model="m")
        await upstream.aclose()
    assert not info.value.retryable
    assert "could not be sent" in str(info.value)


# -- the client went away -------------------------------------------------------------------------


async def test_a_client_disconnect_shuts_the_upstream_connection_down_at_once() -> None:
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n"
    hooks, token = disconnects.open_request_hooks()
    try:
        async with (
            raw_server([(head, False)]) as server,
            client(server.port) as http,
            http.stream("GET", "/") as response,
        ):
            async for _ in response.aiter_raw():
                break
            assert len(hooks) == 1  # registered while the connection is in use
            disconnects.run_hooks(hooks)  # what the server does on http.disconnect
            with trio.fail_after(BOUND):
                await server.closed_event.wait()  # before the reader even closed it
    finally:
        disconnects.reset_request_hooks(token)


async def test_a_finished_answer_unregisters_its_hook_before_its_connection_is_reused() -> None:
    hooks, token = disconnects.open_request_hooks()
    try:
        replies = [(ok(b"one"), False), (ok(b"two"), False)]
        async with raw_server(replies) as server, client(server.port) as http:
            with trio.fail_after(BOUND):
                assert (await http.get("/")).content == b"one"
                assert hooks == []
                disconnects.run_hooks(hooks)  # a late disconnect: the pooled one is untouched
                assert (await http.get("/")).content == b"two"
        assert server.connections == 1
    finally:
        disconnects.reset_request_hooks(token)
