"""The offline default provider: it answers with the last user message, word by word.

It needs no network and no API key, so a fresh install answers right away. Its token counts are
honest for what it does: a token is a whitespace-separated word, ``prompt_tokens`` counts the
words of every input message and ``completion_tokens`` the words it streamed. It honours
``max_tokens`` (stopping with ``finish_reason: "length"``).

It accepts images, and describes those the last user message carries after its text, one line
each: ``[image 1: image/png, 1234 bytes, sha256 <first 16 hex digits>]`` (``[image 1: url
https://...]`` for a remote one), so the offline default shows what a model would have received.
"""

from __future__ import annotations

import re

import trio

from ..messages import Image
from .base import Completion, Emit, FinishReason, ModelRequest, TextDelta, TokenUsage

__all__ = ["EchoProvider", "count_words", "describe_image"]

_WORD = re.compile(r"\S+\s*")


def count_words(text: str) -> int:
    return len(text.split())


def describe_image(number: int, image: Image) -> str:
    """How the echo provider describes the ``number``-th image it received."""
    if image.url is not None:
        return f"[image {number}: url {image.url}]"
    return f"[image {number}: {image.media_type}, {image.size} bytes, sha256 {image.sha256[:16]}]"


class EchoProvider:
    """Echoes the last user message; ``pace_seconds`` between two words."""

    def __init__(self, *, pace_seconds: float = 0.02) -> None:
        self.pace_seconds = pace_seconds

    async def stream(self, request: ModelRequest, emit: Emit) -> Completion:
        prompt_tokens = sum(count_words(message.content) for message in request.messages)
        last = next((m for m in reversed(request.messages) if m.role == "user"), None)
        text = last.content if last is not None else ""
        if last is not None and last.images:
            lines = [describe_image(n, image) for n, image in enumerate(last.images, start=1)]
            text = "\n".join([text, *lines]) if text.strip() else "\n".join(lines)
        words = _WORD.findall(text.strip())
        limit = request.max_tokens
        sent = 0
        for word in words:
            if limit is not None and sent >= limit:
                break
            if self.pace_seconds:
                await trio.sleep(self.pace_seconds)
            await emit(TextDelta(word))
            sent += 1
        # A zero pace still yields once, so a long echo never starves the scheduler.
        await trio.lowlevel.checkpoint()
        finish_reason: FinishReason = "length" if sent < len(words) else "stop"
        return Completion(finish_reason, TokenUsage(prompt_tokens, sent))
