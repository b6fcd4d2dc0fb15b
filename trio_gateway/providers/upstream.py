"""One provider's connection pool and its streamed model calls.

:class:`UpstreamClient` owns one provider's connection pool (an httpx transport, by default the
lean :class:`~.http11.Http11Transport`) and runs one streamed model call: it POSTs the body,
checks the status and content type, feeds the response bytes to an
:class:`~trio_gateway.wire.sse.SSEDecoder` and the decoded events to the provider's
:class:`StreamParser` (the sans-IO half of a provider), and awaits ``emit`` for each model event.

Deadlines are trio cancel scopes, not httpx timeouts, with one exception: httpx cannot separate
"connecting" from "waiting for the answer" from the outside, so the connect deadline
(``connectTimeoutSeconds``) is httpx's *connect* timeout, and every other httpx timeout is off.
One scope carries the rest: its deadline is first ``firstTokenTimeoutSeconds`` after the call
started (connect, request, headers and everything up to the first model event), then it is moved
forward to ``idleTimeoutSeconds`` after each batch of events; while ``emit`` waits for a slow
consumer it is switched off, so only the upstream's silence counts.

Every failure leaves as an :class:`~trio_gateway.errors.UpstreamError`, translated once, by the
functions of :mod:`.upstream_errors` (statuses, error bodies, httpx's exceptions); the client
itself adds two:

* a deadline: ``code="upstream_timeout"``, ``retryable``.
* a line or event longer than ``maxEventBytes``: ``code="bad_upstream_response"``, not
  retryable.

An in-band error event is ``code="upstream_stream_error"`` (raised by the parsers).

The client does not retry: the agent layer does, when ``retryable`` and nothing was emitted.
Messages name the provider and host, never a key. Cancelling the caller closes the upstream
response (and with it the connection, since it was not read to the end) under a shielded bound,
so the upstream stops generating. HTTP/1.1 only, on purpose: httpx does not reset an HTTP/2
stream it stops reading, so over h2 a cancelled call would keep the upstream busy.

One upstream cannot starve the event loop: the SSE decoder's cost is linear and its buffer is
bounded by ``maxEventBytes``, the transport yields to the scheduler every few reads, and the read
loop yields every ``_YIELD_EVERY_EVENTS`` events, whether or not the consumer did (a read full
of events that produce no output would otherwise be thousands of events in one task step).

This module must not import the agent, server or tools layers.
"""

from __future__ import annotations

import base64
import logging
import math
import time
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Protocol

import httpx
import trio

from ..errors import ConfigError, UpstreamError
from ..wire.sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder, SSEError, SSEEvent
from .base import Completion, Emit, ModelEvent
from .http11 import Http11Transport
from .upstream_errors import bad_response, status_error, transport_error

__all__ = ["StreamParser", "UpstreamClient", "environment_proxy"]

logger = logging.getLogger(__name__)

#: How much of an error body is read to find the upstream's message.
_ERROR_BODY_LIMIT = 64 * 1024
#: How long the tail of a finished stream (the chunked-encoding end) may take before the
#: connection is closed instead of going back to the pool.
_DRAIN_SECONDS = 1.0
#: Bound on closing a response, shielded from cancellation.
_CLOSE_BOUND = 2.0
#: Idle connections kept per provider (a new stream opens a new connection when none is idle).
_KEEPALIVE_CONNECTIONS = 64
#: Events parsed before the read loop yields to the scheduler, if nothing else did.
_YIELD_EVERY_EVENTS = 64


class StreamParser(Protocol):
    """The sans-IO half of a provider: SSE events in, model events out.

    ``feed`` raises :class:`UpstreamError` for malformed or error events. ``done`` turns true on
    the protocol's end marker; the client stops parsing then. ``completion`` is asked once the
    stream is over and raises :class:`UpstreamError` if the answer is incomplete.
    """

    done: bool

    def feed(self, event: SSEEvent) -> Sequence[ModelEvent]: ...

    def completion(self) -> Completion: ...


def environment_proxy(url: httpx.URL) -> str | None:
    """The proxy URL the environment names for ``url`` (``<scheme>_proxy`` or ``all_proxy``,
    either case), ``None`` when there is none or ``no_proxy`` exempts the host: the standard
    library's reading of the variables, which httpx's own follows."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy:
        return None
    host = url.host if url.port is None else f"{url.host}:{url.port}"
    if urllib.request.proxy_bypass(host):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


class UpstreamClient:
    """One provider's connection pool and its streamed calls.

    ``base_url`` is the provider's ``baseUrl``; call paths are relative to it. ``headers`` go
    with every request (authentication included). ``missing_key_env`` names an API-key variable
    that was configured but not set: every call then fails with a clear, non-retryable error,
    while the gateway itself starts.

    Requests go straight to an httpx transport, not through ``httpx.AsyncClient``: the client's
    per-request work (URL merging and quoting, cookie jars, auth and redirect flows) cost about
    220 µs of CPU per call and nothing here uses it. The transport is ``transport`` when given
    (tests), else httpx's own transport through the proxy the environment names for this URL
    (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``, minus ``NO_PROXY``, as httpx would), else
    :class:`~.http11.Http11Transport`.
    """

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        headers: Mapping[str, str],
        connect_timeout: float,
        first_token_timeout: float,
        idle_timeout: float,
        missing_key_env: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.provider = provider
        self.max_event_bytes = max_event_bytes
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.missing_key_env = missing_key_env
        try:
            url = httpx.URL(base_url)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError("it must be an absolute http:// or https:// URL")
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise ConfigError(
                f"provider {provider!r}: invalid baseUrl {base_url!r} ({exc})"
            ) from exc
        self.host = f"{url.host}:{url.port}" if url.port else url.host
        self._headers = httpx.Headers(headers)
        if url.username or url.password:
            # As httpx does: credentials in the URL become Basic auth (unless the provider's
            # headers already authenticate), and never travel in the request line.
            if "authorization" not in self._headers:
                pair = f"{url.username}:{url.password}".encode()
                self._headers["authorization"] = "Basic " + base64.b64encode(pair).decode()
            url = url.copy_with(username=None, password=None)
        self._base_url = url
        self._urls: dict[str, httpx.URL] = {}
        self._timeouts = {"connect": connect_timeout, "read": None, "write": None, "pool": None}
        if transport is None:
            proxy = environment_proxy(url)
            if proxy is None:
                transport = Http11Transport(max_keepalive=_KEEPALIVE_CONNECTIONS)
            else:
                shown = httpx.URL(proxy).copy_with(username=None, password=None)
                logger.info("upstream.proxy provider=%s proxy=%s", provider, shown)
                try:
                    transport = httpx.AsyncHTTPTransport(
                        proxy=proxy,
                        limits=httpx.Limits(
                            max_connections=None,
                            max_keepalive_connections=_KEEPALIVE_CONNECTIONS,
                        ),
                    )
                except ImportError as exc:  # a SOCKS proxy without httpx's socks extra
                    raise ConfigError(
                        f"provider {provider!r}: the environment's proxy {shown} needs a package "
                        f"that is not installed ({exc})"
                    ) from exc
        self._transport = transport

    def url(self, path: str) -> httpx.URL:
        """``path`` under the base URL (``chat/completions`` and ``/chat/completions`` alike),
        with the base URL's query, if any (Azure's ``?api-version=...``)."""
        url = self._urls.get(path)
        if url is None:
            base, mark, query = self._base_url.raw_path.partition(b"?")
            if not base.endswith(b"/"):
                base += b"/"
            raw_path = base + path.lstrip("/").encode("ascii") + mark + query
            url = self._base_url.copy_with(raw_path=raw_path)
            self._urls[path] = url
        return url

    async def aclose(self) -> None:
        """Close the pooled connections."""
        with trio.move_on_after(_CLOSE_BOUND, shield=True):
            await self._transport.aclose()

    async def stream(
        self, path: str, body: bytes, parser: StreamParser, emit: Emit, *, model: str
    ) -> Completion:
        """POST ``body`` to ``path`` and stream the answer through ``parser`` into ``emit``."""
        if self.missing_key_env is not None:
            raise UpstreamError(
                f"The upstream {self.provider!r} has no API key: the environment variable "
                f"{self.missing_key_env} (apiKeyEnv) is not set.",
                retryable=False,
                code="upstream_api_key_missing",
            )
        started = trio.current_time()
        logger.debug("upstream.stream.started provider=%s model=%s", self.provider, model)
        first_deadline = started + self.first_token_timeout
        scope = trio.CancelScope(deadline=first_deadline)
        emitted = False
        draining = False
        try:
            with scope:
                request = httpx.Request(
                    "POST",
                    self.url(path),
                    headers=self._headers,
                    content=body,
                    extensions={"timeout": self._timeouts},
                )
                # The encoded conversation can be large and a stream can stay open for minutes:
                # once sent, nothing here holds it (callers pass it without keeping it).
                del body
                response = await self._transport.handle_async_request(request)
                del request
                body_stream = response.stream
                assert isinstance(body_stream, httpx.AsyncByteStream)
                try:
                    await self._check_response(response, body_stream)
                    del response  # its headers are of no further use during a long stream
                    decoder = SSEDecoder(max_event_bytes=self.max_event_bytes)
                    unyielded = 0
                    # Raw bytes: the stream is not content-encoded (the request asks for
                    # identity).
                    async for chunk in body_stream:
                        if draining:
                            continue  # reading the end of the body keeps the connection
                        try:
                            events = decoder.feed(chunk)
                        except SSEError as exc:
                            raise bad_response(
                                self.provider, f"{exc} (maxEventBytes) in its event stream"
                            ) from exc
                        if not events:
                            continue
                        scope.deadline = math.inf  # a slow consumer is not upstream silence
                        for event in events:
                            unyielded += 1
                            if unyielded >= _YIELD_EVERY_EVENTS:
                                unyielded = 0
                                await trio.lowlevel.checkpoint()
                            for model_event in parser.feed(event):
                                await emit(model_event)
                                emitted = True
                            if parser.done:
                                draining = True
                                break
                        now = trio.current_time()
                        if draining:
                            scope.deadline = now + min(self.idle_timeout, _DRAIN_SECONDS)
                        elif emitted:
                            scope.deadline = now + self.idle_timeout
                        else:
                            scope.deadline = first_deadline
                finally:
                    with trio.move_on_after(_CLOSE_BOUND, shield=True):
                        await body_stream.aclose()
        except httpx.HTTPError as exc:
            error = transport_error(
                exc, provider=self.provider, host=self.host, connect_timeout=self.connect_timeout
            )
            self._log_failure(error, started)
            raise error from exc
        except UpstreamError as exc:
            self._log_failure(exc, started)
            raise
        if scope.cancelled_caught and not draining:
            if emitted:
                message = (
                    f"The upstream {self.provider!r} sent nothing for "
                    f"{self.idle_timeout:g} seconds (idleTimeoutSeconds)."
                )
            else:
                message = (
                    f"The upstream {self.provider!r} sent no first token within "
                    f"{self.first_token_timeout:g} seconds (firstTokenTimeoutSeconds)."
                )
            timeout = UpstreamError(message, retryable=True, code="upstream_timeout")
            self._log_failure(timeout, started)
            raise timeout
        try:
            completion = parser.completion()
        except UpstreamError as exc:
            self._log_failure(exc, started)
            raise
        logger.debug(
            "upstream.stream.complete provider=%s model=%s finish_reason=%s tokens=%d "
            "duration_ms=%.1f",
            self.provider,
            model,
            completion.finish_reason,
            completion.usage.total_tokens,
            (trio.current_time() - started) * 1000,
        )
        return completion

    async def _check_response(
        self, response: httpx.Response, body_stream: httpx.AsyncByteStream
    ) -> None:
        status = response.status_code
        if status >= 400:
            body = bytearray()
            async for chunk in body_stream:
                body += chunk
                if len(body) >= _ERROR_BODY_LIMIT:
                    break
            raise status_error(
                self.provider, status, bytes(body), response.headers, now=time.time()
            )
        if status != 200:
            raise bad_response(self.provider, f"an unexpected HTTP {status} answer")
        content_type = response.headers.get("content-type", "")
        if not content_type.lower().startswith("text/event-stream"):
            shown = content_type.partition(";")[0].strip() or "no content type"
            raise bad_response(self.provider, f"{shown} instead of an event stream")

    def _log_failure(self, error: UpstreamError, started: float) -> None:
        logger.info(
            "upstream.stream.failed provider=%s status=%s code=%s retryable=%s duration_ms=%.1f",
            self.provider,
            error.status,
            error.code,
            error.retryable,
            (trio.current_time() - started) * 1000,
        )
