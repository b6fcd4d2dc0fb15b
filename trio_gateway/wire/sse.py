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
        self._buffer += chunk
        events: list[SSEEvent] = []
        while (line := self._next_line()) is not None:
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        return events

    def _next_line(self) -> str | None:
        buffer = self._buffer
        if self._after_cr and buffer:
            self._after_cr = False
            if buffer[:1] == b"\n":
                buffer = buffer[1:]
        cr = buffer.find(b"\r")
        lf = buffer.find(b"\n")
        if cr == -1 and lf == -1:
            self._buffer = buffer
            return None
        end = cr if cr != -1 and (lf == -1 or cr < lf) else lf
        if end == cr:
            if buffer[cr + 1 : cr + 2] == b"\n":
                skip = 2
            else:
                skip = 1
                # A CR that ends the buffer: a following LF would be part of this line ending.
                self._after_cr = cr == len(buffer) - 1
        else:
            skip = 1
        raw = buffer[:end]
        self._buffer = buffer[end + skip :]
        if self._first_line:
            self._first_line = False
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        return raw.decode("utf-8", errors="replace")

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
