"""Server-Sent Events framing: encoding for our responses and an incremental decoder.

The encoder side is a few byte templates (we only ever send ``data:`` lines and comments). The
decoder follows the WHATWG event-stream parsing rules closely enough for OpenAI-style streams:
``data`` lines are joined with newlines, ``event``/``id``/``retry`` are kept, comments are
skipped, and CR, LF and CRLF all end a line. It never imports an I/O library.

The decoder holds at most ``max_event_bytes`` of a peer's bytes: a line, or the data lines of
one event, that grows past it raises :class:`SSEError`, so a peer that never ends a line (or
an event) cannot grow the buffer without bound. Its cost is linear in the input.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DONE",
    "KEEP_ALIVE",
    "SSEDecoder",
    "SSEError",
    "SSEEvent",
    "encode_data",
]

#: The terminator OpenAI clients wait for; sent only when a stream really completed.
DONE = b"data: [DONE]\n\n"
#: A comment line: ignored by every SSE client, it keeps proxies and idle timers from closing.
KEEP_ALIVE = b": keep-alive\n\n"
#: The longest line, and the most data one event may hold, unless the decoder is told otherwise.
DEFAULT_MAX_EVENT_BYTES = 1024 * 1024


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


class SSEError(Exception):
    """The stream broke the decoder's limits (the caller says whose fault that is)."""


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the events completed so far.

    ``max_event_bytes`` bounds what it holds: the bytes of one line (its line ending not
    counted), and the data of one event (its ``data`` values, as bytes). Past either, ``feed``
    raises :class:`SSEError`; the decoder is of no further use then.
    """

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        if max_event_bytes < 1:
            raise ValueError("max_event_bytes must be positive")
        self.max_event_bytes = max_event_bytes
        #: The incomplete last line: a bytearray grows in place (``bytes +=`` copies it all).
        self._buffer = bytearray()
        self._data: list[str] = []
        #: Bytes of ``data`` values in ``_data`` (newlines between them not counted).
        self._data_bytes = 0
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
        limit = self.max_event_bytes
        end = chunk.find(b"\n")
        if end < 0:
            if len(self._buffer) + len(chunk) > limit:
                raise self._too_long()
            self._buffer += chunk
            return []
        if self._buffer:
            # Only the first line of the chunk continues the buffered one.
            if len(self._buffer) + end > limit:
                raise self._too_long()
            self._buffer += chunk[:end]
            first = bytes(self._buffer)
            self._buffer.clear()
            lines = chunk[end + 1 :].split(b"\n")
            lines.insert(0, first)
        else:
            lines = chunk.split(b"\n")
        rest = lines.pop()  # the incomplete last line, if any
        if len(rest) > limit:
            raise self._too_long()
        self._buffer += rest
        events: list[SSEEvent] = []
        for raw in lines:
            if len(raw) > limit:
                raise self._too_long()
            if self._first_line:
                self._first_line = False
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            event = self._process_line(raw)
            if event is not None:
                events.append(event)
        return events

    def _too_long(self) -> SSEError:
        return SSEError(f"a line longer than {self.max_event_bytes} bytes")

    def _process_line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        if raw[:1] == b":":
            return None
        name, sep, value = raw.partition(b":")  # a colon is never part of a multibyte character
        if sep:
            value = value.removeprefix(b" ")
        if name == b"data":
            # Each line adds a newline when the data is joined: empty lines count too.
            self._data_bytes += len(value) + 1
            if self._data_bytes > self.max_event_bytes:
                raise SSEError(f"an event with more than {self.max_event_bytes} bytes of data")
            self._data.append(value.decode("utf-8", errors="replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", errors="replace")
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", errors="replace")
        elif name == b"retry" and value.isascii() and value.isdigit():
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
        self._data_bytes = 0
        self._event = ""
        return event
