"""The stack floor: a bare relay served the way the gateway is served, with no gateway logic.

Benchmark tooling. ``python benchmarks/floor_relay.py --upstream URL`` serves :class:`FloorRelay`
with hypercorn's trio worker (``hypercorn.trio.serve``, hypercorn's defaults except what the
gateway also sets: no access log, a 2 s graceful shutdown) on 127.0.0.1 (a free port unless
``--port``), prints one line ``{"url": ...}`` and stops on end of stdin, SIGTERM or SIGINT.

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

Imports ``trio_gateway`` for the transport (and the start-up heap freeze the gateway's CLI
does), nothing else of it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial

import httpx
import msgspec
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from trio_gateway.providers.http11 import Http11Transport
from trio_gateway.server.serve import freeze_startup_heap

__all__ = ["FloorRelay", "main", "serve_floor_relay"]

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
        request = httpx.Request(
            "POST",
            self._url,
            headers={"content-type": "application/json"},
            content=body,
            extensions={"timeout": _TIMEOUTS},
        )
        chunks_in, chunks_out = trio.open_memory_channel[bytes](BUFFER_CHUNKS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope)
            try:
                response: httpx.Response = await nursery.start(
                    _read_upstream, transport, request, chunks_in
                )
            except httpx.HTTPError as exc:
                await _answer(send, 502, f"upstream: {type(exc).__name__}: {exc}\n")
                nursery.cancel_scope.cancel(reason="the upstream request failed")
                return
            del request, body  # sent: not held while the stream is open (as in the gateway)
            content_type = response.headers.get("content-type", "application/octet-stream")
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(b"content-type", content_type.encode("latin-1"))],
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
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream), "Http11Transport streams are async"
    try:
        task_status.started(response)
        async for chunk in stream:
            await chunks.send(chunk)
    finally:
        with trio.move_on_after(_CLOSE_BOUND, shield=True):
            await stream.aclose()
    await chunks.aclose()  # after the connection went back to the pool


async def serve_floor_relay(
    upstream_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve :class:`FloorRelay` for ``upstream_url`` until cancelled or ``shutdown_trigger``
    returns; ``task_status`` gets the bound URLs."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.graceful_timeout = GRACEFUL_SECONDS
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    await serve(
        FloorRelay(upstream_url), config, shutdown_trigger=shutdown_trigger, task_status=task_status
    )


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


async def _main(upstream_url: str, host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            partial(
                serve_floor_relay,
                upstream_url,
                host=host,
                port=port,
                shutdown_trigger=_wait_for_stop,
            )
        )
        freeze_startup_heap()  # as the gateway's CLI does once it serves
        sys.stdout.write(msgspec.json.encode({"url": urls[0]}).decode() + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--upstream", required=True, help="the mock upstream's root URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    trio.run(_main, arguments.upstream, arguments.host, arguments.port)


if __name__ == "__main__":
    main()
