"""The conversation values every layer shares: messages, images, tool calls, tool specs.

Plain frozen dataclasses with no behaviour, below everything but ``errors``: the wire parser
produces them, providers consume them, sessions store them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Image", "ImageDetail", "Message", "Role", "ToolCall", "ToolSpec"]

Role = Literal["system", "developer", "user", "assistant", "tool"]
ImageDetail = Literal["auto", "low", "high"]


@dataclass(frozen=True, slots=True)
class Image:
    """An image a user message carries: its bytes, or a URL the upstream fetches itself.

    An inline image has ``data`` (its bytes, one of the allowed types by their magic bytes),
    ``media_type`` (what the bytes are, not what the client claimed) and ``sha256`` (the hex
    digest of the bytes: its identity, by which sessions store it once). A remote image has
    ``url`` only (``https:``), passed on as it is. Two images are the same image when their
    identities (:attr:`key`) are equal.
    """

    media_type: str = ""
    sha256: str = ""
    data: bytes | None = field(default=None, repr=False)
    url: str | None = None
    #: OpenAI's ``detail`` hint, passed on to upstreams that know it.
    detail: ImageDetail | None = None
    #: Where the request carried it (``messages[2].content[1]``), for errors; not compared.
    param: str | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """The image's identity: ``sha256:<digest>`` for bytes, ``url:<url>`` for a URL."""
        return f"sha256:{self.sha256}" if self.url is None else f"url:{self.url}"

    @property
    def size(self) -> int:
        """The bytes it holds (``0`` for a URL)."""
        return len(self.data) if self.data is not None else 0


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call as the model made it; ``arguments`` is the model's JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as offered to the model: ``parameters`` is a JSON schema object."""

    name: str
    description: str
    parameters: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation, in order."""

    role: Role
    content: str
    name: str | None = None
    #: For ``role == "tool"``: the call this message answers.
    tool_call_id: str | None = None
    #: For ``role == "assistant"``: the tools it called.
    tool_calls: tuple[ToolCall, ...] = ()
    #: For ``role == "user"``: the images it carries, after its text, in order.
    images: tuple[Image, ...] = ()
