"""Log records that say which request and which run they belong to.

Owns the ``request_id`` and ``run_id`` context variables, the :class:`ContextFilter` that copies
them onto every record, the console and JSON formatters, and :func:`configure_logging` (called by
the CLI only: library code never installs handlers). Imports nothing from the package, so every
layer may import it.

A trio task starts with a copy of the context of the task that spawned it, so a value bound in
a request's task is seen by everything that request starts: the route, a streaming body's
producer nursery, the agent run and its tools.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

import msgspec

__all__ = [
    "MAX_REQUEST_ID_CHARS",
    "ConsoleFormatter",
    "ContextFilter",
    "JsonFormatter",
    "accepted_request_id",
    "bind_request_id",
    "bind_run_id",
    "configure_logging",
    "request_id_var",
    "run_id_var",
]

#: The request being served: the client's ``x-request-id`` or a generated one.
request_id_var: ContextVar[str | None] = ContextVar("epiloop_request_id", default=None)
#: The agent run in progress (the chat completion id, ``chatcmpl-...``).
run_id_var: ContextVar[str | None] = ContextVar("epiloop_run_id", default=None)

#: Longest client-supplied ``x-request-id`` kept; a longer one is replaced by a generated id.
MAX_REQUEST_ID_CHARS = 128

#: Shown for an id that is not bound where the record was made.
NO_ID = "-"

LogFormat = Literal["console", "json"]


def accepted_request_id(value: bytes | str | None) -> str:
    """``value`` if it is a usable request id (1-128 visible ASCII characters), else a new one.

    Spaces and control characters are refused, so an id can never break a log line apart.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            value = None
    if value and len(value) <= MAX_REQUEST_ID_CHARS and all("!" <= c <= "~" for c in value):
        return value
    return uuid.uuid4().hex


@contextmanager
def bind_request_id(value: str) -> Iterator[str]:
    """Bind ``value`` as the request id for the code in the ``with`` block (and its tasks)."""
    token = request_id_var.set(value)
    try:
        yield value
    finally:
        request_id_var.reset(token)


@contextmanager
def bind_run_id(value: str) -> Iterator[str]:
    """Bind ``value`` as the run id for the code in the ``with`` block (and its tasks)."""
    token = run_id_var.set(value)
    try:
        yield value
    finally:
        run_id_var.reset(token)


class ContextFilter(logging.Filter):
    """Puts ``request_id`` and ``run_id`` (or ``"-"``) on every record; never drops one.

    Attach it to a handler, not a logger: a logger's filters do not see records propagated from
    its children. Values already on the record (``extra={"run_id": ...}``) are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        _ensure_ids(record)
        return True


def _ensure_ids(record: logging.LogRecord) -> None:
    fields = record.__dict__  # where ``extra=`` puts its keys too
    if fields.get("request_id") is None:
        fields["request_id"] = request_id_var.get() or NO_ID
    if fields.get("run_id") is None:
        fields["run_id"] = run_id_var.get() or NO_ID


class ConsoleFormatter(logging.Formatter):
    """``2025-01-02 03:04:05,678 INFO trio_gateway.agent.runtime [req=... run=...] message``."""

    FORMAT = "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s run=%(run_id)s] %(message)s"

    def __init__(self) -> None:
        super().__init__(self.FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        _ensure_ids(record)  # also without the filter, e.g. a handler someone else set up
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    ``request_id``, ``run_id``, and ``exc_info`` / ``stack_info`` (strings) when present."""

    _encoder = msgspec.json.Encoder()

    def format(self, record: logging.LogRecord) -> str:
        _ensure_ids(record)
        ts = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        line: dict[str, str] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": str(record.__dict__["request_id"]),
            "run_id": str(record.__dict__["run_id"]),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return self._encoder.encode(line).decode("utf-8")


#: Marks the handler :func:`configure_logging` installed, so a second call replaces it.
_HANDLER_NAME = "epiloop"

#: Loggers that a server gives a stderr handler of their own while their records also
#: propagate to the root: hypercorn's CLI does so for its error log when a worker starts.
_SERVER_LOGGERS = ("hypercorn.error",)


class _RootHandlerOnly(logging.Filter):
    """On a server's logger: before each of its records is handled, take off the handlers the
    server put there, so the record reaches stderr once, through the root handler.

    hypercorn's CLI (``hypercorn ... trio_gateway.server.asgi:app``) sets a stderr handler on
    ``hypercorn.error`` when a worker starts serving, after the app's lifespan configured
    logging, and leaves the logger propagating: every one of its lines, "Running on ..." first,
    came out twice, once in hypercorn's format. A logger's filters run before its handlers are
    looked up, and hypercorn replaces the handlers but keeps the filters.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        logger = self._logger
        if logger.handlers:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
        return True


def configure_logging(*, level: str, fmt: LogFormat) -> None:
    """Send every log record to stderr in ``fmt`` at ``level`` and above (the CLI calls this).

    Installs one handler on the root logger (replacing the one an earlier call installed) with
    :class:`ContextFilter`, so hypercorn's and the libraries' records carry the ids too, and it
    is the only handler hypercorn's error log writes through (see :class:`_RootHandlerOnly`).
    httpx's own request lines are left out (see below).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        for old_filter in [f for f in server_logger.filters if isinstance(f, _RootHandlerOnly)]:
            server_logger.removeFilter(old_filter)
        server_logger.addFilter(_RootHandlerOnly(server_logger))
    # httpx logs every upstream call at INFO with the full URL (a password in ``baseUrl`` too);
    # the gateway's own ``upstream.stream.*`` lines report those calls without it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
