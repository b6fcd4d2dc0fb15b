"""The stack floor: a relay served the way the gateway is served, with no gateway logic.

Benchmark tooling. ``python -m benchmarks.floor_relay --upstream URL [--framework bare|quart]``
serves one of two relays with hypercorn's trio worker (``hypercorn.trio.serve``, hypercorn's
defaults except what the gateway also sets: no access log, a 2 s graceful shutdown) on
127.0.0.1 (a free port unless ``--port``), prints one line ``{"url": ...}`` and stops on end of
stdin, SIGTERM or SIGINT. ``bare`` (the default) is :class:`FloorRelay`, a plain ASGI app;
``quart`` is :func:`create_quart_relay`, the same relay as a quart-trio route in the gateway's
quart shape, so that the two differ by what quart-trio (with quart and werkzeug) costs.

What one ``POST /v1/chat/completions`` costs here is the floor of the shape the gateway commits
to, with nothing parsed: the client's body is read whole and forwarded unchanged to the
upstream's ``/v1/chat/completions`` over the gateway's own pooled keep-alive HTTP/1.1 transport
(:class:`trio_gateway.providers.http11.Http11Transport`, called directly as the gateway calls
it); the upstream's status and content type become the response head, and each chunk of its
body goes to the client unchanged. Per request, as in the gateway, the upstream read runs in a
task of the request's nursery and hands chunks through a bounded memory channel to the task
that calls ASGI ``send``; an ``http.disconnect`` (or a failing ``send``) cancels the nursery,
and the upstream response is closed in a shielded, bounded ``finally``, which closes its
connection at once. No authentication, validation, routing, sessions, SSE parsing or
re-encoding, keep-alive comments or logging per request. Other paths answer 404.

The quart relay does the same per request the way the gateway's route does (see
``trio_gateway/server/streaming.py``): ``await request.get_data()``, the upstream's head awaited
in the route, then a ``quart.Response`` whose body (:class:`RelayBody`, a quart
``ResponseBody``) opens the per-request nursery in ``__aenter__``, starts the upstream read
there, hands quart the chunks of a bounded memory channel in ``__aiter__`` and closes the
nursery in ``__aexit__`` (cancelling it first when the send loop ended with an exception: a
disconnect cancels quart-trio's request nursery, hence the send loop). ``RESPONSE_TIMEOUT`` and
the response's ``timeout`` are off, as in the gateway. Nothing else: no error handlers, no
request hooks, no final-send shield or other ASGI wrapper (the gateway's ``GatewayApp``); other
paths get quart's own 404/405.

Imports ``trio_gateway`` for the transport (and the start-up heap freeze the gateway's CLI
does), nothing else of it; ``quart`` and ``quart_trio`` are imported by both relays, so their
start-up RSS is alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from types import TracebackType
from typing import Literal

import httpx
import msgspec
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope
from quart import Response, request
from quart.wrappers.response import ResponseBody
from quart_trio import QuartTrio

from trio_gateway.providers.http11 import Http11Transport
from trio_gateway.server.serve import freeze_startup_heap

__all__ = [
    "FRAMEWORKS",
    "FloorRelay",
    "Framework",
    "RelayBody",
    "create_quart_relay",
    "main",
    "serve_floor_relay",
]

PATH = "/v1/chat/completions"
#: Chunks waiting between the upstream read and the client write (the gateway's default
#: ``stream_buffer_events``).
BUFFER_CHUNKS = 64
#: The gateway's upstream connection pool size.
KEEPALIVE_CONNECTIONS = 64
#: The gateway's benchmark config: ``shutdownGraceSeconds: 2``.
GRACEFUL_SECONDS = 2.0
_CLOSE_BOUND = 2.0
_TIMEOUTS = {"connect": 5.0, "read": None, "write": None, "pool": None}

Framework = Literal["bare", "quart"]
#: The relays ``--framework`` chooses from (the first is the default).
FRAMEWORKS: tuple[Framework, ...] = ("bare", "quart")


def _upstream_request(url: str, body: bytes) -> httpx.Request:
    """The client's body, forwarded unchanged: what the gateway hands its transport."""
    return httpx.Request(
        "POST",
        url,
        headers={"content-type": "application/json"},
        content=body,
        extensions={"timeout": _TIMEOUTS},
    )


def _failure_text(exc: httpx.HTTPError) -> str:
    return f"upstream: {type(exc).__name__}: {exc}\n"


def _content_type(response: httpx.Response) -> str:
    content_type: str = response.headers.get("content-type", "application/octet-stream")
    return content_type


def _byte_stream(response: httpx.Response) -> httpx.AsyncByteStream:
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream), "Http11Transport streams are async"
    return stream


async def _answer(send: ASGISendCallable, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _read_body(receive: ASGIReceiveCallable) -> bytes | None:
    """The whole request body, or ``None`` when the client left first."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        if message["type"] == "http.request":
            parts.append(message["body"])
            if not message["more_body"]:
                return b"".join(parts)


async def _watch_disconnect(receive: ASGIReceiveCallable, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel(reason="the client disconnected")


class FloorRelay:
    """The ASGI app. The upstream transport lives from lifespan start-up to shutdown."""

    def __init__(self, upstream_url: str) -> None:
        self._url = f"{upstream_url.rstrip('/')}{PATH}"
        self._transport: Http11Transport | None = None

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["path"] != PATH:
                await _answer(send, 404, "not found\n")
            elif scope["method"] != "POST":
                await _answer(send, 405, "method not allowed\n")
            else:
                await self._relay(receive, send)

    async def _lifespan(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._transport = Http11Transport(max_keepalive=KEEPALIVE_CONNECTIONS)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                transport, self._transport = self._transport, None
                if transport is not None:
                    with trio.move_on_after(_CLOSE_BOUND, shield=True):
                        await transport.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _relay(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        body = await _read_body(receive)
        if body is None:
            return
        transport = self._transport
        if transport is None:
            await _answer(send, 503, "not started\n")
            return
        request = _upstream_request(self._url, body)
        chunks_in, chunks_out = trio.open_memory_channel[bytes](BUFFER_CHUNKS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope)
            try:
                response: httpx.Response = await nursery.start(
                    _read_upstream, transport, request, chunks_in
                )
            except httpx.HTTPError as exc:
                await _answer(send, 502, _failure_text(exc))
                nursery.cancel_scope.cancel(reason="the upstream request failed")
                return
            del request, body  # sent: not held while the stream is open (as in the gateway)
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(b"content-type", _content_type(response).encode("latin-1"))],
                }
            )
            # The channel ends only when the upstream answer did: a failed read is an exception
            # from the nursery instead (hypercorn then cuts the response off).
            async for chunk in chunks_out:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel(reason="the answer is complete")


async def _read_upstream(
    transport: Http11Transport,
    request: httpx.Request,
    chunks: trio.MemorySendChannel[bytes],
    *,
    task_status: trio.TaskStatus[httpx.Response],
) -> None:
    """Send ``request``; report the response once its head is in, then pass its body on chunk
    by chunk; close ``chunks`` once it is complete. Closing the response (always, shielded)
    closes an unfinished connection, or puts a finished one back into the pool."""
    response = await transport.handle_async_request(request)
    del request
    stream = _byte_stream(response)
    task_status.started(response)
    # No checkpoint before _pass_on's ``try``: a cancel from here on still closes the stream.
    await _pass_on(stream, chunks)


async def _pass_on(stream: httpx.AsyncByteStream, chunks: trio.MemorySendChannel[bytes]) -> None:
    """Pass the upstream body on chunk by chunk; close ``chunks`` once it is complete. Closing
    the stream (always, shielded) closes an unfinished connection, or puts a finished one back
    into the pool."""
    try:
        async for chunk in stream:
            await chunks.send(chunk)
    finally:
        with trio.move_on_after(_CLOSE_BOUND, shield=True):
            await stream.aclose()
    await chunks.aclose()  # after the connection went back to the pool


class RelayBody(ResponseBody):
    """The quart relay's response body: quart drives it as ``async with body: async for chunk
    in body: await send(chunk)``, so the per-request nursery (opened in ``__aenter__``, closed
    in ``__aexit__``) encloses exactly the send loop, as ``ChatStreamBody``'s does."""

    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream
        #: From ``__aenter__`` on: the nursery's manager, the nursery, the chunks' channel.
        self._open: (
            tuple[
                AbstractAsyncContextManager[trio.Nursery],
                trio.Nursery,
                trio.MemoryReceiveChannel[bytes],
            ]
            | None
        ) = None

    async def __aenter__(self) -> RelayBody:
        manager = trio.open_nursery()
        nursery = await manager.__aenter__()
        chunks_in, chunks_out = trio.open_memory_channel[bytes](BUFFER_CHUNKS)
        self._open = (manager, nursery, chunks_out)
        nursery.start_soon(_pass_on, self._stream, chunks_in)
        return self

    def __aiter__(self) -> trio.MemoryReceiveChannel[bytes]:
        # The channel itself: it ends when the upstream answer did (a failed read is an
        # exception from the nursery instead, at ``__aexit__``).
        assert self._open is not None, "entered first"
        return self._open[2]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._open is not None, "entered first"
        manager, nursery, chunks = self._open
        if exc_type is not None:
            # The send loop failed or was cancelled (the client went away): stop the read
            # before closing the channel, so it sees Cancelled, not a broken channel.
            nursery.cancel_scope.cancel(reason="the response stream was abandoned")
        chunks.close()
        await manager.__aexit__(exc_type, exc_value, tb)


def create_quart_relay(upstream_url: str) -> QuartTrio:
    """The quart relay: one route, ``POST /v1/chat/completions``, and one upstream transport,
    opened before serving and closed after."""
    url = f"{upstream_url.rstrip('/')}{PATH}"
    app = QuartTrio("floor_relay")
    # Streams own their deadlines; quart's 60 s cut is off (as in the gateway).
    app.config.update(RESPONSE_TIMEOUT=None)
    transports: list[Http11Transport] = []

    @app.before_serving
    async def open_transport() -> None:
        transports.append(Http11Transport(max_keepalive=KEEPALIVE_CONNECTIONS))

    @app.after_serving
    async def close_transport() -> None:
        while transports:
            with trio.move_on_after(_CLOSE_BOUND, shield=True):
                await transports.pop().aclose()

    @app.route(PATH, methods=["POST"], provide_automatic_options=False)
    async def relay() -> Response:
        body = await request.get_data(as_text=False)
        assert isinstance(body, bytes)
        if not transports:
            return Response("not started\n", status=503, content_type="text/plain")
        upstream_request = _upstream_request(url, body)
        try:
            upstream = await transports[0].handle_async_request(upstream_request)
        except httpx.HTTPError as exc:
            return Response(_failure_text(exc), status=502, content_type="text/plain")
        del upstream_request, body  # sent: not held while the stream is open
        # Known gap: a client that leaves while quart sends the head (before it enters the
        # body) leaves this stream to the garbage collector; the gateway closes what a request
        # holds with its per-request cleanups, which this relay leaves out.
        response = Response(
            RelayBody(_byte_stream(upstream)),
            status=upstream.status_code,
            content_type=_content_type(upstream),
        )
        response.timeout = None  # as the gateway's stream: quart's deadline is off
        return response

    return app


async def serve_floor_relay(
    upstream_url: str,
    *,
    framework: Framework = "bare",
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ``framework`` relay (:class:`FloorRelay` or :func:`create_quart_relay`) for
    ``upstream_url`` until cancelled or ``shutdown_trigger`` returns; ``task_status`` gets the
    bound URLs."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.graceful_timeout = GRACEFUL_SECONDS
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    app: ASGIFramework = (
        create_quart_relay(upstream_url) if framework == "quart" else FloorRelay(upstream_url)
    )
    await serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)


async def _wait_for_stop() -> None:
    """Return on end of stdin, SIGTERM or SIGINT, whichever comes first."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel(reason="a signal asked to stop")
                    return

            async def on_stdin_eof() -> None:
                async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
                    while await stdin.receive_some(4096):
                        pass
                nursery.cancel_scope.cancel(reason="stdin closed: the benchmark is over")

            nursery.start_soon(on_signal)
            nursery.start_soon(on_stdin_eof)


async def _main(upstream_url: str, framework: Framework, host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            partial(
                serve_floor_relay,
                upstream_url,
                framework=framework,
                host=host,
                port=port,
                shutdown_trigger=_wait_for_stop,
            )
        )
        freeze_startup_heap()  # as the gateway's CLI does once it serves
        sys.stdout.write(msgspec.json.encode({"url": urls[0]}).decode() + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.floor_relay",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--upstream", required=True, help="the mock upstream's root URL")
    parser.add_argument(
        "--framework",
        choices=FRAMEWORKS,
        default=FRAMEWORKS[0],
        help="bare: a plain ASGI app (default); quart: the same relay as a quart-trio route",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    trio.run(_main, arguments.upstream, arguments.framework, arguments.host, arguments.port)


if __name__ == "__main__":
    main()
