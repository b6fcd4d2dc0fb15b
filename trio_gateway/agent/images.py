"""Images on their way to a model: which models may see them, fetching remote ones (opt-in), and
what a session may hold.

- :func:`check_image_input`: a request whose messages carry images runs only on a model that
  accepts them (``models.providers.<name>.models`` lists it with ``"image"`` among its
  ``input``; the echo provider accepts them): the chain's first model must, or the request is a
  400 ``image_input_unsupported`` naming the first image's path; fallbacks that do not are left
  out of that run. Never a silent drop.
- :func:`without_images`: stored history replayed to a text-only model (the agent's model was
  changed since) says where an image was instead of sending it.
- :func:`fetch_remote_images`: with ``gateway.http.images.fetch.enabled``, ``https:`` image URLs
  are fetched by the gateway (for upstreams that need the bytes): only hosts in
  ``tools.httpFetch.allowHosts``, within ``tools.httpFetch.timeoutSeconds`` and
  ``gateway.http.images.maxBytes``. Every address the host resolves to must be public (no
  loopback, private, link-local, shared or reserved address), and the connection goes to the
  address that was checked (the TLS name and ``Host`` stay the URL's), so a second DNS answer
  cannot point it elsewhere. Redirects are not followed. Every refusal is a 400 (413 for size)
  naming the image's path.
- :func:`check_session_images`: the distinct images a session would hold after a request
  (``session.maxImages``, ``session.maxImageBytes``): 413 ``session_images_too_large``.

Imports ``tools`` (the ``http_fetch`` allow list and bounded reader) and ``sessions``; must not
import ``runtime``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

import httpx
import trio

from .._version import __version__
from ..config import Config
from ..errors import InvalidRequestError, PayloadTooLargeError
from ..messages import Image, Message
from ..sessions.reconcile import reconcile
from ..sessions.store import TranscriptEntry
from ..tools.builtin.fetch import host_allowed, read_bounded
from ..wire.images import sniff
from .failover import ModelTarget

__all__ = [
    "Resolver",
    "check_image_input",
    "check_session_images",
    "fetch_remote_images",
    "public_address",
    "without_images",
]

logger = logging.getLogger(__name__)

#: How long closing a fetch's connection may take (shielded from cancellation).
CLOSE_BOUND_SECONDS = 2.0

#: Resolves a host name and port to the addresses a connection may go to.
Resolver = Callable[[str, int], Awaitable[list[str]]]


def first_image(messages: Sequence[Message]) -> Image | None:
    return next((image for message in messages for image in message.images), None)


def check_image_input(
    messages: Sequence[Message], chain: tuple[ModelTarget, ...], agent_id: str
) -> tuple[ModelTarget, ...]:
    """The chain a request with ``messages`` runs on (see the module docstring)."""
    image = first_image(messages)
    if image is None:
        return chain
    primary = chain[0]
    if not primary.images:
        provider = primary.ref.partition("/")[0]
        where = f"the image at '{image.param}'" if image.param else "an image"
        raise InvalidRequestError(
            f"The model {primary.ref!r} of agent {agent_id!r} does not accept images, so "
            f"{where} cannot be sent to it. List it under models.providers.{provider}.models as "
            f'{{"id": "{primary.model}", "input": ["text", "image"]}} if it does.',
            param=image.param,
            code="image_input_unsupported",
        )
    seeing = tuple(target for target in chain if target.images)
    if len(seeing) < len(chain):
        logger.debug(
            "images.fallbacks_skipped agent=%s skipped=%s",
            agent_id,
            ",".join(target.ref for target in chain if not target.images),
        )
    return seeing


def without_images(messages: Sequence[Message]) -> list[Message]:
    """``messages`` with each image replaced by a note in the text (for a text-only model)."""
    replaced: list[Message] = []
    for message in messages:
        if message.images:
            notes = [
                f"[image {n}: not shown to this model]" for n in range(1, 1 + len(message.images))
            ]
            text = "\n".join([message.content, *notes]) if message.content else "\n".join(notes)
            message = replace(message, content=text, images=())
        replaced.append(message)
    return replaced


def check_session_images(
    transcript: Sequence[TranscriptEntry], conversation: Sequence[Message], config: Config
) -> None:
    """Refuse a request after which the session would hold more images than it may."""
    if not any(message.images for message in conversation):
        return
    reconciled = reconcile(transcript, conversation)
    kept = transcript if reconciled.keep is None else transcript[: reconciled.keep]
    held: dict[str, int] = {}
    for entry in kept:
        for image in entry.images:
            held[image.key] = image.size
    limits = config.session
    for message in reconciled.new:
        for image in message.images:
            held[image.key] = image.size
            total = sum(held.values())
            if len(held) > limits.max_images or total > limits.max_image_bytes:
                where = f"With the image at '{image.param}', the" if image.param else "The"
                raise PayloadTooLargeError(
                    f"{where} session would hold {len(held)} images of {total} bytes; a "
                    f"session may hold at most {limits.max_images} images (session.maxImages) "
                    f"of {limits.max_image_bytes} bytes (session.maxImageBytes). Start a new "
                    "session.",
                    param=image.param or "messages",
                    code="session_images_too_large",
                )


# -- fetching remote images (opt-in) -------------------------------------------------------


def public_address(address: str) -> bool:
    """Whether ``address`` (an IP address) is a public one a fetch may connect to."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise _fetch_refused(f"its host {host!r} does not resolve ({exc})") from exc
    return [str(info[4][0]) for info in infos]


def _fetch_refused(reason: str) -> InvalidRequestError:
    # The message and param are completed by the caller, which knows the image.
    return InvalidRequestError(reason, code="image_fetch_failed")


async def fetch_remote_images(
    messages: Sequence[Message], config: Config, *, resolve: Resolver = _resolve
) -> tuple[Message, ...]:
    """``messages`` with their remote images fetched, when ``gateway.http.images.fetch`` is on
    (else as they are). One image at a time; each under ``tools.httpFetch.timeoutSeconds``."""
    if not config.gateway.http.images.fetch.enabled:
        return tuple(messages)
    fetched: list[Message] = []
    for message in messages:
        if any(image.url is not None for image in message.images):
            images = []
            for image in message.images:
                images.append(await _fetch_one(image, config, resolve) if image.url else image)
            message = replace(message, images=tuple(images))
        fetched.append(message)
    return tuple(fetched)


async def _fetch_one(image: Image, config: Config, resolve: Resolver) -> Image:
    assert image.url is not None
    where = f"'{image.param}'" if image.param else "a message"
    try:
        return await _fetch_checked(image, config, resolve)
    except InvalidRequestError as exc:
        raise type(exc)(
            f"The image URL at {where} was not fetched: {exc.message}.",
            param=image.param,
            code=exc.code,
        ) from exc
    except PayloadTooLargeError as exc:
        raise PayloadTooLargeError(
            f"The image at {where} is {exc.message}.", param=image.param, code=exc.code
        ) from exc


async def _fetch_checked(image: Image, config: Config, resolve: Resolver) -> Image:
    assert image.url is not None
    policy = config.tools.http_fetch
    max_bytes = config.gateway.http.images.max_bytes
    try:
        url = httpx.URL(image.url)
        host = url.host
    except (httpx.InvalidURL, ValueError) as exc:
        raise _fetch_refused(f"the URL is not valid ({exc})") from exc
    if not host:
        raise _fetch_refused("the URL names no host")
    if not host_allowed(host, policy.allow_hosts):
        allowed = ", ".join(policy.allow_hosts) or "none"
        raise _fetch_refused(
            f"its host {host!r} is not in tools.httpFetch.allowHosts (allowed: {allowed})"
        )
    port = url.port or 443
    try:
        with trio.fail_after(policy.timeout_seconds):
            addresses = await resolve(host, port)
            refused = [address for address in addresses if not public_address(address)]
            if refused or not addresses:
                raise _fetch_refused(
                    f"its host {host!r} resolves to a loopback, private or reserved address "
                    f"({', '.join(refused) or 'none'}); images are fetched from public "
                    "addresses only"
                )
            data = await _get(url, addresses[0], max_bytes)
    except trio.TooSlowError as exc:
        raise _fetch_refused(
            f"it did not answer within {policy.timeout_seconds:g} s "
            "(tools.httpFetch.timeoutSeconds)"
        ) from exc
    media_type = sniff(data)
    if media_type is None:
        raise _fetch_refused("what it answered is not a PNG, JPEG, GIF or WebP image")
    return Image(
        media_type,
        hashlib.sha256(data).hexdigest(),
        data,
        detail=image.detail,
        param=image.param,
    )


async def _get(url: httpx.URL, address: str, max_bytes: int) -> bytes:
    """GET ``url`` from ``address`` (its host's checked address), at most ``max_bytes``."""
    host = url.host
    pinned = url.copy_with(host=address)
    headers = {
        "Host": url.netloc.decode("ascii"),
        "User-Agent": f"epiloop-gateway/{__version__} (image fetch)",
        "Accept": "image/png, image/jpeg, image/gif, image/webp",
    }
    client = httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=None)
    response: httpx.Response | None = None
    try:
        request = client.build_request(
            "GET", pinned, headers=headers, extensions={"sni_hostname": host}
        )
        response = await client.send(request, stream=True)
        if response.status_code != 200:
            raise _fetch_refused(f"it answered {response.status_code} {response.reason_phrase}")
        body, truncated = await read_bounded(response, max_bytes)
        if truncated:
            raise PayloadTooLargeError(
                f"larger than {max_bytes} bytes (gateway.http.images.maxBytes)",
                code="image_too_large",
            )
        return body
    except httpx.HTTPError as exc:
        raise _fetch_refused(f"{type(exc).__name__}: {exc or 'no details'}") from exc
    finally:
        with trio.move_on_after(CLOSE_BOUND_SECONDS, shield=True):
            if response is not None:
                await response.aclose()
            await client.aclose()
