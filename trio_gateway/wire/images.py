"""Images in requests: reading an image URL, checking the bytes, and a request's image limits.

``image_url`` parts (chat completions) and ``input_image`` items (responses) name an image by a
URL. A ``data:`` URL carries the bytes in base64: :func:`read_image_url` decodes them (strict
base64), checks what they are by their magic bytes (:func:`sniff`: PNG, JPEG, GIF, WebP; the
claimed MIME type must agree), and returns a neutral :class:`~trio_gateway.messages.Image` with
its SHA-256. An ``https:`` URL is kept as a URL (the upstream fetches it, unless the gateway is
configured to; see ``agent.images``). Anything else is refused.

:class:`ImageBudget` counts one request's images against ``gateway.http.images``: ``maxParts``
(400 ``too_many_images``), ``maxBytes`` per image and ``maxTotalBytes`` per request (413
``image_too_large`` / ``images_too_large``). The size of a ``data:`` URL is known from its length
before anything is decoded, so an oversized image costs no decoding. Every error names the part's
path (``messages[2].content[1]``).

Sans-IO: the standard library only.
"""

from __future__ import annotations

import binascii
import hashlib
from dataclasses import dataclass
from typing import Protocol

from ..errors import InvalidRequestError, PayloadTooLargeError
from ..messages import Image, ImageDetail

__all__ = [
    "ALLOWED_TYPES",
    "MAX_URL_CHARS",
    "ImageBudget",
    "ImageLimits",
    "data_url",
    "data_url_size",
    "image_limits",
    "read_image_url",
    "sniff",
]

#: The image types accepted, by the MIME type the gateway reports for them.
ALLOWED_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")

#: The longest remote image URL accepted.
MAX_URL_CHARS = 8192

_DETAILS: tuple[ImageDetail, ...] = ("auto", "low", "high")

#: Claimed types that name an allowed type by another name.
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """``gateway.http.images``: what one request may carry."""

    max_bytes: int = 10 * 1024 * 1024
    max_total_bytes: int = 20 * 1024 * 1024
    max_parts: int = 8


class _ImagesSettings(Protocol):
    """``gateway.http.images`` (the config's struct; ``wire`` does not import ``config``)."""

    @property
    def max_bytes(self) -> int: ...
    @property
    def max_total_bytes(self) -> int: ...
    @property
    def max_parts(self) -> int: ...


def image_limits(settings: _ImagesSettings) -> ImageLimits:
    """The limits of the ``gateway.http.images`` settings."""
    return ImageLimits(settings.max_bytes, settings.max_total_bytes, settings.max_parts)


def sniff(data: bytes) -> str | None:
    """The allowed image type ``data`` is, by its magic bytes; ``None``: none of them."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _split_data_url(url: str, param: str) -> tuple[str, str]:
    """``(claimed media type, base64 payload)`` of a ``data:`` URL."""
    head, comma, payload = url[5:].partition(",")
    fields = [field.strip().lower() for field in head.split(";")]
    if not comma or "base64" not in fields[1:]:
        raise InvalidRequestError(
            f"Invalid image at '{param}': a data URL must be 'data:<image type>;base64,<data>'.",
            param=param,
            code="invalid_image",
        )
    return fields[0], payload


def data_url_size(url: str) -> int:
    """The bytes a base64 ``data:`` URL decodes to (exact for valid base64); ``0`` otherwise."""
    if url[:5].lower() != "data:":
        return 0
    payload = url.partition(",")[2]
    length = len(payload)
    padding = len(payload) - len(payload.rstrip("="))
    return max(0, length * 3 // 4 - min(padding, 2))


def read_image_url(url: str, detail: str | None, *, param: str) -> Image:
    """The image a URL names: decoded and checked bytes for ``data:``, the URL for ``https:``.

    Raises :class:`InvalidRequestError` (with ``param``) for a URL of another scheme, a data URL
    that is not base64, bytes that are not an allowed image type, or a claimed type the bytes
    contradict. Sizes are :class:`ImageBudget`'s to check (before this is called)."""
    checked_detail = _detail(detail, param)
    scheme = url[:8].lower()
    if scheme.startswith("data:"):
        claimed, payload = _split_data_url(url, param)
        try:
            data = binascii.a2b_base64(payload, strict_mode=True)
        except binascii.Error as exc:
            raise InvalidRequestError(
                f"Invalid image at '{param}': the data URL is not valid base64 ({exc}).",
                param=param,
                code="invalid_image",
            ) from exc
        actual = sniff(data)
        if actual is None:
            raise InvalidRequestError(
                f"Invalid image at '{param}': the bytes are not a PNG, JPEG, GIF or WebP image "
                f"(whatever the data URL claims: {claimed or 'no type'!r}).",
                param=param,
                code="invalid_image",
            )
        if _ALIASES.get(claimed, claimed) != actual:
            raise InvalidRequestError(
                f"Invalid image at '{param}': the data URL claims {claimed or 'no type'!r} but "
                f"the bytes are {actual!r}.",
                param=param,
                code="invalid_image",
            )
        digest = hashlib.sha256(data).hexdigest()
        return Image(actual, digest, data, detail=checked_detail, param=param)
    if scheme == "https://":
        if len(url) > MAX_URL_CHARS:
            raise InvalidRequestError(
                f"Invalid image at '{param}': the URL is longer than {MAX_URL_CHARS} characters.",
                param=param,
                code="invalid_image",
            )
        if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
            raise InvalidRequestError(
                f"Invalid image at '{param}': the URL holds spaces or control characters.",
                param=param,
                code="invalid_image",
            )
        return Image(url=url, detail=checked_detail, param=param)
    raise InvalidRequestError(
        f"Invalid image at '{param}': expected a 'data:' URL (base64) or an 'https:' URL.",
        param=param,
        code="invalid_image",
    )


def _detail(detail: str | None, param: str) -> ImageDetail | None:
    if detail is None:
        return None
    for known in _DETAILS:
        if detail == known:
            return known
    raise InvalidRequestError(
        f"Invalid value for '{param}.detail': {detail!r}; expected 'auto', 'low' or 'high'.",
        param=f"{param}.detail",
    )


class ImageBudget:
    """One request's images, counted against :class:`ImageLimits` as they are met."""

    def __init__(self, limits: ImageLimits) -> None:
        self.limits = limits
        self.parts = 0
        self.total_bytes = 0

    def add(self, url: str, *, param: str) -> None:
        """Count the image ``url`` (at ``param``); raise when a limit is passed."""
        limits = self.limits
        self.parts += 1
        if self.parts > limits.max_parts:
            raise InvalidRequestError(
                f"Too many images: '{param}' is image number {self.parts}; a request may carry "
                f"at most {limits.max_parts} (gateway.http.images.maxParts).",
                param=param,
                code="too_many_images",
            )
        size = data_url_size(url)
        if size > limits.max_bytes:
            raise PayloadTooLargeError(
                f"The image at '{param}' is {size} bytes; an image may be at most "
                f"{limits.max_bytes} bytes (gateway.http.images.maxBytes).",
                param=param,
                code="image_too_large",
            )
        self.total_bytes += size
        if self.total_bytes > limits.max_total_bytes:
            raise PayloadTooLargeError(
                f"The images up to '{param}' hold {self.total_bytes} bytes; a request's images "
                f"may hold at most {limits.max_total_bytes} bytes "
                "(gateway.http.images.maxTotalBytes).",
                param=param,
                code="images_too_large",
            )


def data_url(image: Image) -> str:
    """An inline image as a base64 ``data:`` URL (a remote one: its URL)."""
    if image.url is not None:
        return image.url
    assert image.data is not None, "an inline image has its bytes"
    return (
        f"data:{image.media_type};base64,{binascii.b2a_base64(image.data, newline=False).decode()}"
    )
