"""Tests for :mod:`trio_gateway.tools.builtin.fetch`: the ``http_fetch`` tool.

The server is a few lines of raw HTTP/1.1 on a trio TCP listener on 127.0.0.1, port 0.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial

import pytest
import trio

from trio_gateway.config.schema import HttpFetchToolConfig, ToolsConfig
from trio_gateway.errors import ToolError
from trio_gateway.tools import HttpFetchTool, ToolContext
from trio_gateway.tools.builtin.fetch import host_allowed

Handler = Callable[[trio.SocketStream], Awaitable[None]]


def response(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{key}: {value}" for key, value in headers.items())]
    lines += ["Connection: close", f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


@dataclass
class Server:
    """A tiny HTTP server: ``routes`` answer by path; ``requests`` records what arrived."""

    port: int = 0
    requests: list[str] = field(default_factory=list)
    #: Set when the ``/endless`` client went away (it stopped reading).
    endless_abandoned: trio.Event = field(default_factory=trio.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                head += chunk
            method, path, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            self.requests.append(f"{method} {path}")
            try:
                await self.answer(stream, method, path)
            except trio.BrokenResourceError:
                if path == "/endless":
                    self.endless_abandoned.set()

    async def answer(self, stream: trio.SocketStream, method: str, path: str) -> None:
        if path == "/hello":
            body = "hello wörld".encode()
            text = {"Content-Type": "text/plain; charset=utf-8"}
            await stream.send_all(response("200 OK", text, b"" if method == "HEAD" else body))
        elif path == "/latin1":
            latin = {"Content-Type": "text/html; charset=iso-8859-1"}
            await stream.send_all(response("200 OK", latin, b"caf\xe9"))
        elif path == "/json":
            data = {"Content-Type": "application/json"}
            await stream.send_all(response("404 Not Found", data, b'{"error": "nope"}'))
        elif path == "/image":
            image = {"Content-Type": "image/png"}
            await stream.send_all(response("200 OK", image, b"\x89PNG\r\n\x1a\n" * 100))
        elif path == "/redirect":
            location = {"Location": "/hello", "Content-Type": "text/plain"}
            await stream.send_all(response("302 Found", location, b"see /hello"))
        elif path == "/redirect-away":
            away = {"Location": "https://elsewhere.example/x"}
            await stream.send_all(response("301 Moved Permanently", away))
        elif path == "/redirect-broken":
            await stream.send_all(response("302 Found", {"Location": "http://[::1/"}))
        elif path == "/endless":
            # Chunked, never ending: only a client that stops reading ends this exchange.
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"x" * 8192
            while True:
                await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        elif path == "/slow":
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
            await trio.sleep_forever()
        else:
            await stream.send_all(response("404 Not Found", {}))


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    server = Server()
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


@pytest.fixture
def fetch_context(context: ToolContext) -> ToolContext:
    """Only 127.0.0.1 is allowed, at most 1000 bytes, within 2 s."""
    config = HttpFetchToolConfig(allow_hosts=["127.0.0.1"], max_bytes=1000, timeout_seconds=2)
    return replace(context, config=ToolsConfig(http_fetch=config))


async def fetch(context: ToolContext, url: str, **extra: object) -> str:
    with trio.fail_after(5):
        return await HttpFetchTool().call(json.dumps({"url": url, **extra}), context)


async def test_http_fetch_returns_status_content_type_and_body(
    server: Server, fetch_context: ToolContext
) -> None:
    result = await fetch(fetch_context, server.url("/hello"))
    assert result == "HTTP/1.1 200 OK\ncontent-type: text/plain; charset=utf-8\n\nhello wörld"
    assert server.requests == ["GET /hello"]


async def test_http_fetch_head_returns_the_status_only(
    server: Server, fetch_context: ToolContext
) -> None:
    result = await fetch(fetch_context, server.url("/hello"), method="HEAD")
    assert result == "HTTP/1.1 200 OK\ncontent-type: text/plain; charset=utf-8"
    assert server.requests == ["HEAD /hello"]


async def test_http_fetch_decodes_the_declared_charset(
    server: Server, fetch_context: ToolContext
) -> None:
    assert (await fetch(fetch_context, server.url("/latin1"))).endswith("\n\ncafé")


async def test_http_fetch_error_status_is_a_result_not_an_error(
    server: Server, fetch_context: ToolContext
) -> None:
    result = await fetch(fetch_context, server.url("/json"))
    assert result == 'HTTP/1.1 404 Not Found\ncontent-type: application/json\n\n{"error": "nope"}'


async def test_http_fetch_does_not_show_binary_bodies(
    server: Server, fetch_context: ToolContext
) -> None:
    result = await fetch(fetch_context, server.url("/image"))
    assert result == "HTTP/1.1 200 OK\ncontent-type: image/png\n\n[binary content not shown]"


async def test_http_fetch_matches_allowed_hosts_case_insensitively(
    server: Server, fetch_context: ToolContext
) -> None:
    config = HttpFetchToolConfig(allow_hosts=["LOCALHOST", "*.example.com"])
    context = replace(fetch_context, config=ToolsConfig(http_fetch=config))
    result = await fetch(context, server.url("/hello", host="LocalHost"))
    assert result.startswith("HTTP/1.1 200 OK")


async def test_http_fetch_stops_reading_at_max_bytes_and_says_so(
    server: Server, fetch_context: ToolContext
) -> None:
    result = await fetch(fetch_context, server.url("/endless"))
    head, _, rest = result.partition("\n\n")
    assert head == "HTTP/1.1 200 OK\ncontent-type: text/plain"
    body, _, note = rest.partition("\n")
    assert body == "x" * 1000
    assert note == (
        "[truncated: the response is longer than 1000 bytes (tools.httpFetch.maxBytes); "
        "only the beginning is shown]"
    )
    with trio.fail_after(5):
        await server.endless_abandoned.wait()


async def test_http_fetch_reports_a_redirect_without_following_it(
    server: Server, fetch_context: ToolContext
) -> None:
    result = await fetch(fetch_context, server.url("/redirect"))
    assert result == (
        "HTTP/1.1 302 Found\ncontent-type: text/plain\n"
        f"location: {server.url('/hello')}\n\n"
        f"[redirect not followed: fetch {server.url('/hello')} with http_fetch if you need it "
        "(its host is allowed)]"
    )
    assert server.requests == ["GET /redirect"]


async def test_http_fetch_redirect_to_another_host_says_it_is_not_allowed(
    server: Server, fetch_context: ToolContext
) -> None:
    result = await fetch(fetch_context, server.url("/redirect-away"))
    assert result.startswith("HTTP/1.1 301 Moved Permanently\n")
    assert "location: https://elsewhere.example/x\n" in result
    assert "(its host is not in tools.httpFetch.allowHosts)" in result
    assert server.requests == ["GET /redirect-away"]


async def test_http_fetch_invalid_redirect_location_is_a_tool_error(
    server: Server, fetch_context: ToolContext
) -> None:
    with pytest.raises(ToolError, match="failed: RemoteProtocolError: Invalid URL in location"):
        await fetch(fetch_context, server.url("/redirect-broken"))


async def test_http_fetch_deadline_is_a_tool_error(
    server: Server, fetch_context: ToolContext
) -> None:
    config = HttpFetchToolConfig(allow_hosts=["127.0.0.1"], timeout_seconds=0.2)
    context = replace(fetch_context, config=ToolsConfig(http_fetch=config))
    with pytest.raises(ToolError, match=r"did not answer within 0.2 s \(tools.httpFetch"):
        await fetch(context, server.url("/slow"))


async def test_http_fetch_caller_cancellation_stops_the_fetch(
    server: Server, fetch_context: ToolContext
) -> None:
    with trio.fail_after(5):
        with trio.move_on_after(0.2) as scope:
            await fetch(fetch_context, server.url("/slow"))
    assert scope.cancelled_caught


async def test_http_fetch_connection_failure_is_a_tool_error(fetch_context: ToolContext) -> None:
    # Bind a port, then close it: nothing listens there any more.
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(ToolError, match=r"fetching http://127.0.0.1:\d+/ failed: ConnectError"):
        await fetch(fetch_context, f"http://127.0.0.1:{port}/")


async def test_http_fetch_with_no_allowed_hosts_names_the_config_key(
    server: Server, context: ToolContext
) -> None:
    with pytest.raises(ToolError, match=r"under tools\.httpFetch\.allowHosts"):
        await fetch(context, server.url("/hello"))
    assert server.requests == []


@pytest.mark.parametrize(
    "url", ["http://localhost/hello", "http://127.0.0.2/", "https://example.com/", "http://[::1]/"]
)
async def test_http_fetch_refuses_hosts_not_allowed(
    server: Server, fetch_context: ToolContext, url: str
) -> None:
    with pytest.raises(
        ToolError, match=r"is not allowed.*tools\.httpFetch\.allowHosts: 127\.0\.0\.1"
    ):
        await fetch(fetch_context, url)
    assert server.requests == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1/", "127.0.0.1/x"]
)
async def test_http_fetch_refuses_other_schemes(fetch_context: ToolContext, url: str) -> None:
    with pytest.raises(ToolError, match="only http:// and https:// URLs can be fetched"):
        await fetch(fetch_context, url)


async def test_http_fetch_refuses_urls_without_host(fetch_context: ToolContext) -> None:
    with pytest.raises(ToolError, match="names no host"):
        await fetch(fetch_context, "http:///x")


async def test_http_fetch_refuses_invalid_urls(fetch_context: ToolContext) -> None:
    with pytest.raises(ToolError, match="invalid URL"):
        await fetch(fetch_context, "http://[::1/")
    with pytest.raises(ToolError, match="invalid URL"):
        await fetch(fetch_context, "https://xn--/")


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("{}", "missing required field `url`"),
        ('{"url": "http://127.0.0.1/", "method": "POST"}', "Invalid enum value 'POST'"),
        ('{"url": 5}', "Expected `str`, got `int`"),
        ("{'url': 'x'}", "not valid JSON"),
    ],
)
async def test_http_fetch_invalid_arguments_are_a_tool_error(
    fetch_context: ToolContext, text: str, complaint: str
) -> None:
    with trio.fail_after(5), pytest.raises(ToolError, match="http_fetch") as caught:
        await HttpFetchTool().call(text, fetch_context)
    assert complaint in caught.value.message


@pytest.mark.parametrize(
    ("host", "patterns", "expected"),
    [
        ("example.com", ["example.com"], True),
        ("Example.COM", ["example.com"], True),
        ("example.com", ["EXAMPLE.com"], True),
        ("example.com.", ["example.com"], True),
        ("api.example.com", ["*.example.com"], True),
        ("a.b.example.com", ["*.example.com"], True),
        ("example.com", ["*.example.com"], False),
        ("evil-example.com", ["*.example.com"], False),
        ("example.com.evil.net", ["example.com"], False),
        ("anything", ["*"], True),
        ("anything", [], False),
    ],
)
def test_host_allowed_matches_patterns(host: str, patterns: list[str], expected: bool) -> None:
    assert host_allowed(host, patterns) is expected
