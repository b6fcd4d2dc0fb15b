"""Small, real images for tests: a PNG built from its chunks, and the other allowed types'
magic bytes."""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib

from trio_gateway.messages import Image


def png(seed: int = 0, *, pad: int = 0) -> bytes:
    """A valid 1x1 RGB PNG; ``seed`` changes its pixel (so its hash), ``pad`` adds a text chunk
    of that many bytes (to make it larger)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    pixel = bytes([0, seed % 256, (seed // 256) % 256, 0])
    extra = chunk(b"tEXt", b"pad\x00" + b"x" * pad) if pad else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + extra
        + chunk(b"IDAT", zlib.compress(pixel))
        + chunk(b"IEND", b"")
    )


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32
GIF = b"GIF89a" + b"\x01\x00\x01\x00\x00\x00\x00;"
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8 " + b"\x00" * 14


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def image(data: bytes, media_type: str = "image/png") -> Image:
    """The neutral image of ``data`` (as the wire parser makes it)."""
    return Image(media_type, hashlib.sha256(data).hexdigest(), data)
