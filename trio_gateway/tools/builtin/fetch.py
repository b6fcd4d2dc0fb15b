"""The ``http_fetch`` tool: GET (or HEAD) a URL on an allowed host, bounded in size and time.

Only ``http``/``https`` URLs whose host matches ``tools.httpFetch.allowHosts`` are fetched.
Redirects are reported, not followed (the next host may not be allowed). The body is streamed
and reading stops at ``tools.httpFetch.maxBytes``; the whole exchange runs under
``tools.httpFetch.timeoutSeconds``. httpx errors and the deadline become
:class:`~trio_gateway.errors.ToolError` here, at the boundary. Proxy settings from the
environment are ignored: the allow list names the hosts reached directly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Iterable
from fnmatch import fnmatchcase
from typing import Annotated, Literal, cast

import httpx
import msgspec
import trio

from ..._version import __version__
from ...config.schema import HttpFetchToolConfig
from ...errors import ToolError
from ..base import Arguments, StructTool, ToolContext
from .text import decode_text

__all__ = ["HttpFetchArguments", "HttpFetchTool", "host_allowed", "read_bounded"]

logger = logging.getLogger(__name__)

#: How long closing the connection may take once the call is over (or cancelled).
CLOSE_BOUND_SECONDS = 2.0

_TEXT_SUBTYPES = ("json", "xml", "javascript", "ecmascript", "yaml", "csv", "x-www-form")


class HttpFetchArguments(Arguments, frozen=True):
    url: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=8192, description="The http:// or https:// URL to fetch."
        ),
    ]
    method: Annotated[
        Literal["GET", "HEAD"],
        msgspec.Meta(description="GET (default) for the content, HEAD for the headers only."),
    ] = "GET"


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Whether ``host`` matches one of ``patterns`` (fnmatch-style, case-insensitive).

    ``*.example.com`` matches ``api.example.com`` and ``a.b.example.com`` but not
    ``example.com`` itself (list both). Patterns name hosts only, never ports.
    """
    name = host.lower().rstrip(".")
    return any(fnmatchcase(name, pattern.lower().rstrip(".")) for pattern in patterns)


def _check_url(text: str, config: HttpFetchToolConfig) -> httpx.URL:
    """The URL to fetch, or a :class:`ToolError` saying why it is refused."""
    try:
        url = httpx.URL(text)
        host = url.host  # decoding an IDNA host may fail only now
    except (httpx.InvalidURL, ValueError) as exc:  # ValueError: IDNA errors from ``idna``
        raise ToolError(f"invalid URL {text!r}: {exc}") from exc
    if url.scheme not in ("http", "https"):
        raise ToolError(f"only http:// and https:// URLs can be fetched, not {text!r}")
    if not host:
        raise ToolError(f"the URL {text!r} names no host")
    if not config.allow_hosts:
        raise ToolError(
            "http_fetch may not reach any host: the gateway operator must list the hosts it "
            "may reach under tools.httpFetch.allowHosts in the configuration"
        )
    if not host_allowed(host, config.allow_hosts):
        raise ToolError(
            f"the host {host!r} is not allowed; http_fetch may reach only hosts matching "
            f"tools.httpFetch.allowHosts: {', '.join(config.allow_hosts)}"
        )
    return url


def _is_text(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    if not media:
        return True
    kind, _, subtype = media.partition("/")
    return kind == "text" or any(marker in subtype for marker in _TEXT_SUBTYPES)


async def read_bounded(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the (decoded) body, and whether there was more."""
    body = bytearray()
    # aiter_bytes is an async generator: close it even when reading stops early.
    chunks = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            room = limit - len(body)
            if len(chunk) > room:
                body += chunk[:room]
                return bytes(body), True
            body += chunk
    return bytes(body), False


def _redirect(target: httpx.URL, config: HttpFetchToolConfig) -> str:
    """The ``location`` line and a note: redirects are reported, never followed."""
    verdict = (
        "its host is allowed"
        if host_allowed(target.host, config.allow_hosts)
        else "its host is not in tools.httpFetch.allowHosts"
    )
    return (
        f"location: {target}\n\n[redirect not followed: fetch {target} with http_fetch if you "
        f"need it ({verdict})]"
    )


async def _fetch(method: str, url: httpx.URL, config: HttpFetchToolConfig) -> str:
    client = httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        timeout=None,  # the caller's trio deadline bounds the exchange
        headers={"User-Agent": f"epiloop-gateway/{__version__} (http_fetch tool)"},
    )
    response: httpx.Response | None = None
    try:
        response = await client.send(client.build_request(method, url), stream=True)
        content_type = response.headers.get("content-type", "")
        head = f"{response.http_version} {response.status_code} {response.reason_phrase}".rstrip()
        head += f"\ncontent-type: {content_type or '(none)'}"
        if response.next_request is not None:  # a redirect; httpx checked its location
            return f"{head}\n{_redirect(response.next_request.url, config)}"
        if method == "HEAD":
            return head
        if not _is_text(content_type):
            return f"{head}\n\n[binary content not shown]"
        body, truncated = await read_bounded(response, config.max_bytes)
        text = decode_text(body, complete=not truncated, encoding=response.charset_encoding)
        if truncated:
            text += (
                f"\n[truncated: the response is longer than {config.max_bytes} bytes "
                "(tools.httpFetch.maxBytes); only the beginning is shown]"
            )
        return f"{head}\n\n{text}"
    except httpx.HTTPError as exc:
        raise ToolError(
            f"fetching {url} failed: {type(exc).__name__}: {exc or 'no details'}"
        ) from exc
    finally:
        with trio.move_on_after(CLOSE_BOUND_SECONDS, shield=True):
            if response is not None:
                await response.aclose()
            await client.aclose()


class HttpFetchTool(StructTool[HttpFetchArguments]):
    """``http_fetch``: the status, content type and text of a URL on an allowed host.

    Off unless a tool policy allows it; it also needs ``tools.httpFetch.allowHosts``.
    """

    def __init__(self) -> None:
        super().__init__(
            name="http_fetch",
            description=(
                "Fetch an http:// or https:// URL (only hosts the gateway allows). Returns the "
                "status line, the content type and the body as text; long bodies are "
                "truncated and redirects are reported, not followed."
            ),
            arguments=HttpFetchArguments,
        )

    async def run(self, arguments: HttpFetchArguments, context: ToolContext) -> str:
        config = context.config.http_fetch
        url = _check_url(arguments.url, config)
        logger.debug("http_fetch.started method=%s host=%s", arguments.method, url.host)
        try:
            with trio.fail_after(config.timeout_seconds):
                return await _fetch(arguments.method, url, config)
        except trio.TooSlowError as exc:
            raise ToolError(
                f"{url} did not answer within {config.timeout_seconds:g} s "
                "(tools.httpFetch.timeoutSeconds)"
            ) from exc
