"""Server-Sent Events framing: encoding for our responses and an incremental decoder.

The encoder side is a few byte templates (we only ever send ``data:`` lines and comments). The
decoder follows the WHATWG event-stream parsing rules closely enough for OpenAI-style streams:
``data`` lines are joined with newlines, ``event``/``id``/``retry`` are kept, comments are
skipped, and CR, LF and CRLF all end a line. It never imports an I/O library.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DONE", "KEEP_ALIVE", "SSEDecoder", "SSEEvent", "encode_data"]

#: The terminator OpenAI clients wait for; sent only when a stream really completed.
DONE = b"data: [DONE]\n\n"
#: A comment line: ignored by every SSE client, it keeps proxies and idle timers from closing.
KEEP_ALIVE = b": keep-alive\n\n"


def encode_data(payload: bytes) -> bytes:
    """Frame one JSON payload (which must not contain a newline) as a ``data:`` event."""
    return b"data: " + payload + b"\n\n"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: ``data`` is the joined ``data:`` lines."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the events completed so far."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._first_line = True
        #: The last line ended with CR: an LF right after it belongs to that line ending.
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events that ``chunk`` completes. Linear in the input: every byte is scanned a
        bounded number of times, however the stream is split into chunks."""
        if self._after_cr and chunk:
            self._after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]  # the second half of a CRLF split across chunks
        if b"\r" in chunk:
            # A CR at the very end ends its line now; an LF that follows it later is dropped.
            self._after_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            self._buffer += chunk
            return []
        lines = (self._buffer + chunk).split(b"\n")
        self._buffer = lines.pop()  # the incomplete last line, if any
        events: list[SSEEvent] = []
        for raw in lines:
            if self._first_line:
                self._first_line = False
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            event = self._process_line(raw.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def _process_line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent(
            data="\n".join(self._data),
            event=self._event or "message",
            id=self._id,
            retry=self._retry,
        )
        self._data = []
        self._event = ""
        return event
