"""Log records carry the request and run ids: the filter, both formatters, and a real gateway."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType

import httpx
import pytest
import trio
from gateway_harness import TOKEN, RunningGateway, start_gateway
from hypercorn import logging as hypercorn_logging
from hypercorn.typing import ASGISendEvent

from trio_gateway.control_client import open_control_client
from trio_gateway.logs import (
    ConsoleFormatter,
    ContextFilter,
    JsonFormatter,
    accepted_request_id,
    bind_request_id,
    bind_run_id,
    configure_logging,
    request_id_var,
    run_id_var,
)
from trio_gateway.server.app import _ResponseSend

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
GENERATED = re.compile(r"[0-9a-f]{32}\Z")
MESSAGES = [{"role": "user", "content": "hello there"}]


def make_record(
    message: str = "op.complete key=%s",
    *args: object,
    level: int = logging.INFO,
    exc_info: ExcInfo | None = None,
) -> logging.LogRecord:
    return logging.LogRecord(
        "trio_gateway.test", level, __file__, 1, message, args or ("value",), exc_info
    )


# -- request ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "req-1.2_3:4/5", "x" * 128, b"from-the-wire", "~!"])
def test_accepted_request_id_keeps_a_valid_id(value: str | bytes) -> None:
    expected = value.decode() if isinstance(value, bytes) else value
    assert accepted_request_id(value) == expected


@pytest.mark.parametrize(
    "value",
    [None, "", b"", "x" * 129, "has space", "tab\there", "new\nline", "caf\u00e9", b"\xff\xfe"],
)
def test_accepted_request_id_generates_one_for_a_missing_or_invalid_id(
    value: str | bytes | None,
) -> None:
    generated = accepted_request_id(value)
    assert GENERATED.match(generated)
    assert accepted_request_id(value) != generated  # a fresh one every time


def test_bind_helpers_set_and_restore_the_context_variables() -> None:
    assert request_id_var.get() is None
    assert run_id_var.get() is None
    with bind_request_id("req-1"), bind_run_id("run-1"):
        assert (request_id_var.get(), run_id_var.get()) == ("req-1", "run-1")
        with bind_run_id("run-2"):
            assert run_id_var.get() == "run-2"
        assert run_id_var.get() == "run-1"
    assert (request_id_var.get(), run_id_var.get()) == (None, None)


# -- the filter and the formatters ---------------------------------------------------------


def test_context_filter_puts_a_dash_when_nothing_is_bound() -> None:
    record = make_record()
    assert ContextFilter().filter(record)
    assert (record.__dict__["request_id"], record.__dict__["run_id"]) == ("-", "-")


def test_context_filter_puts_the_bound_ids_on_the_record() -> None:
    with bind_request_id("req-7"), bind_run_id("chatcmpl-7"):
        record = make_record()
        assert ContextFilter().filter(record)
    assert (record.__dict__["request_id"], record.__dict__["run_id"]) == ("req-7", "chatcmpl-7")


def test_context_filter_keeps_ids_given_as_extra() -> None:
    record = make_record()
    record.__dict__["run_id"] = "from-extra"
    with bind_run_id("bound"):
        ContextFilter().filter(record)
    assert record.__dict__["run_id"] == "from-extra"


def test_console_formatter_shows_the_ids_in_brackets() -> None:
    with bind_request_id("req-9"), bind_run_id("chatcmpl-9"):
        line = ConsoleFormatter().format(make_record("run.complete tokens=%d", 5))
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO trio_gateway\.test "
        r"\[req=req-9 run=chatcmpl-9\] run\.complete tokens=5",
        line,
    ), line


def test_console_formatter_works_without_the_filter_and_unbound() -> None:
    line = ConsoleFormatter().format(make_record())
    assert "[req=- run=-] op.complete key=value" in line


def test_json_formatter_writes_one_object_per_line_with_every_field() -> None:
    with bind_request_id("req-json"), bind_run_id("chatcmpl-json"):
        record = make_record("op.failed text=%s", "two\nlines", level=logging.WARNING)
        ContextFilter().filter(record)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert set(entry) == {"ts", "level", "logger", "message", "request_id", "run_id"}
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "trio_gateway.test"
    assert entry["message"] == "op.failed text=two\nlines"
    assert (entry["request_id"], entry["run_id"]) == ("req-json", "chatcmpl-json")
    assert entry["ts"].endswith("Z")
    ts = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00"))
    assert ts.utcoffset() == timedelta(0)
    assert abs(ts.timestamp() - record.created) < 0.001


def test_json_formatter_unbound_ids_are_a_dash() -> None:
    entry = json.loads(JsonFormatter().format(make_record()))
    assert (entry["request_id"], entry["run_id"]) == ("-", "-")


def test_json_formatter_renders_the_exception_as_a_string() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = make_record("op.failed key=%s", level=logging.ERROR, exc_info=sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "op.failed key=value"
    assert isinstance(entry["exc_info"], str)
    assert entry["exc_info"].startswith("Traceback (most recent call last):")
    assert entry["exc_info"].rstrip().endswith("ValueError: boom")


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], io.StringIO]]:
    """Call it in the test (pytest's capture resets ``sys.stderr`` after set-up) to get a fake
    stderr for :func:`configure_logging`; the root logger is restored afterwards."""

    def fake() -> io.StringIO:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield fake
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def test_configure_logging_json_writes_filtered_json_lines(
    stderr: Callable[[], io.StringIO],
) -> None:
    stream = stderr()
    configure_logging(level="info", fmt="json")
    configure_logging(level="debug", fmt="json")  # replaces the first handler
    logger = logging.getLogger("trio_gateway.test")
    with bind_request_id("req-cfg"):
        logger.debug("op.started key=%s", "value")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "op.started key=value"
    assert entry["request_id"] == "req-cfg"


def test_configure_logging_console_honours_the_level(stderr: Callable[[], io.StringIO]) -> None:
    stream = stderr()
    configure_logging(level="warning", fmt="console")
    logger = logging.getLogger("trio_gateway.test")
    logger.info("op.complete hidden=1")
    logger.warning("op.failed shown=1")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("WARNING trio_gateway.test [req=- run=-] op.failed shown=1")


# -- a real gateway ------------------------------------------------------------------------


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """The gateway's log records (DEBUG and up), each with the ids of where it was made."""
    collector = _Collector()
    collector.addFilter(ContextFilter())
    logger = logging.getLogger("trio_gateway")
    level = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)
    try:
        yield collector.records
    finally:
        logger.removeHandler(collector)
        logger.setLevel(level)


def ids(record: logging.LogRecord) -> tuple[str, str]:
    return record.__dict__["request_id"], record.__dict__["run_id"]


async def wait_for_record(records: list[logging.LogRecord], prefix: str) -> logging.LogRecord:
    """The first record whose message starts with ``prefix`` (some come after the response)."""
    with trio.fail_after(5):
        while True:
            for record in records:
                if record.getMessage().startswith(prefix):
                    return record
            await trio.sleep(0.01)


async def chat(
    gateway: RunningGateway, *, stream: bool = False, request_id: str | None = None
) -> httpx.Response:
    headers = dict(gateway.headers)
    if request_id is not None:
        headers["x-request-id"] = request_id
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{gateway.api_url}/chat/completions",
            json={"messages": MESSAGES, "stream": stream},
            headers=headers,
        )


def completion_id(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("text/event-stream"):
        first = next(line for line in response.text.splitlines() if line.startswith("data: {"))
        value = json.loads(first.removeprefix("data: "))["id"]
    else:
        value = response.json()["id"]
    assert isinstance(value, str)
    assert value.startswith("chatcmpl-")
    return value


@pytest.mark.parametrize("stream", [False, True])
async def test_gateway_echoes_a_valid_request_id_and_logs_it_with_the_run_id(
    nursery: trio.Nursery, records: list[logging.LogRecord], stream: bool
) -> None:
    gateway = await start_gateway(nursery)
    response = await chat(gateway, stream=stream, request_id="client-req-42")
    assert response.status_code == 200, response.text
    assert response.headers.get_list("x-request-id") == ["client-req-42"]
    run_id = completion_id(response)

    request_done = await wait_for_record(records, "request.complete")
    assert ids(request_done) == ("client-req-42", "-")  # logged after the run ended
    assert "method=POST path=/v1/chat/completions status=200 duration_ms=" in (
        request_done.getMessage()
    )
    run_done = await wait_for_record(records, "run.complete")
    assert ids(run_done) == ("client-req-42", run_id)
    # Every line the run logged carries both ids.
    run_lines = [r for r in records if f"run_id={run_id}" in r.getMessage()]
    assert run_lines
    assert all(ids(r) == ("client-req-42", run_id) for r in run_lines)
    # No line logged while the request was served lost its request id.
    started = next(i for i, r in enumerate(records) if r.getMessage().startswith("request.st"))
    served = records[started : records.index(request_done) + 1]
    assert all(r.__dict__["request_id"] == "client-req-42" for r in served)


@pytest.mark.parametrize("given", [None, "", "has space", "x" * 129, "caf\u00e9"])
async def test_gateway_generates_a_request_id_when_missing_or_invalid(
    nursery: trio.Nursery, records: list[logging.LogRecord], given: str | None
) -> None:
    gateway = await start_gateway(nursery)
    headers = dict(gateway.headers)
    if given is not None:
        headers["x-request-id"] = given
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gateway.api_url}/chat/completions",
            json={"messages": MESSAGES},
            headers={k.encode(): v.encode("utf-8") for k, v in headers.items()},
        )
    assert response.status_code == 200, response.text
    generated = response.headers["x-request-id"]
    assert GENERATED.match(generated), generated
    run_done = await wait_for_record(records, "run.complete")
    assert ids(run_done) == (generated, completion_id(response))


async def test_gateway_echoes_the_request_id_on_error_responses(
    nursery: trio.Nursery, records: list[logging.LogRecord]
) -> None:
    gateway = await start_gateway(nursery)
    async with httpx.AsyncClient() as client:
        unauthorized = await client.post(
            f"{gateway.api_url}/chat/completions",
            json={"messages": MESSAGES},
            headers={"Authorization": "Bearer wrong", "x-request-id": "bad-auth-1"},
        )
        missing = await client.get(f"{gateway.url}/nope", headers={"x-request-id": "nope-1"})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["x-request-id"] == "bad-auth-1"
    assert missing.status_code == 404
    assert missing.headers["x-request-id"] == "nope-1"
    failed = await wait_for_record(records, "request.complete method=GET path=/nope")
    assert ids(failed) == ("nope-1", "-")
    assert "status=404" in failed.getMessage()
    # The rejected credential never reaches the log.
    assert not any("wrong" in r.getMessage() for r in records)


async def test_gateway_control_plane_run_logs_carry_the_connection_and_run_ids(
    nursery: trio.Nursery, records: list[logging.LogRecord]
) -> None:
    gateway = await start_gateway(nursery)
    url = gateway.url.replace("http://", "ws://") + "/ws"
    async with open_control_client(url, token=TOKEN) as client:
        result = await client.run_agent("hello there")
    run_id = result["runId"]
    assert isinstance(run_id, str)
    connected = await wait_for_record(records, "control.connected")
    request_id, _ = ids(connected)
    assert GENERATED.match(request_id)
    run_done = await wait_for_record(records, "run.complete")
    assert ids(run_done) == (request_id, run_id)
    # The token is never logged.
    assert not any(TOKEN in r.getMessage() for r in records)


async def test_echoing_send_keeps_a_request_id_the_response_already_has() -> None:
    sent: list[ASGISendEvent] = []

    async def send(message: ASGISendEvent) -> None:
        sent.append(message)

    echoing = _ResponseSend(send, "req-1")
    await echoing(
        {"type": "http.response.start", "status": 204, "headers": [(b"X-Request-Id", b"own")]}
    )
    await echoing({"type": "http.response.body", "body": b"", "more_body": False})
    assert sent[0]["type"] == "http.response.start"
    assert list(sent[0]["headers"]) == [(b"X-Request-Id", b"own")]
    assert echoing.status == 204
    assert sent[1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_operations_doc_json_example_has_the_formatter_fields() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "operations.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- log-json-example -->\s*```json\n(.*?)```", doc, re.DOTALL)
    assert block is not None, "docs/operations.md lost its log-json-example block"
    example = json.loads(block[1])
    produced = json.loads(JsonFormatter().format(make_record()))
    assert set(example) == set(produced)
    assert list(example) == list(produced)  # the same order, too
    for key in [*produced, "exc_info", "stack_info"]:
        assert f"| `{key}` |" in doc, f"the log fields table lacks {key}"


def test_configure_logging_keeps_httpx_request_lines_out(
    stderr: Callable[[], io.StringIO],
) -> None:
    stream = stderr()
    httpx_logger = logging.getLogger("httpx")
    level = httpx_logger.level
    try:
        configure_logging(level="debug", fmt="console")
        httpx_logger.info("HTTP Request: POST https://user:secret@upstream.example/v1")
    finally:
        httpx_logger.setLevel(level)
    assert "secret" not in stream.getvalue()


async def test_gateway_request_lines_keep_the_path_escaped_and_drop_the_query(
    nursery: trio.Nursery, records: list[logging.LogRecord]
) -> None:
    gateway = await start_gateway(nursery)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{gateway.url}/a%0Ab?token=query-secret")
    assert response.status_code == 404
    done = await wait_for_record(records, "request.complete method=GET")
    assert "path=/a%0Ab status=404" in done.getMessage()
    assert not any("query-secret" in r.getMessage() for r in records)


def test_configure_logging_writes_hypercorn_lines_once_after_hypercorn_adds_its_handler(
    stderr: Callable[[], io.StringIO],
) -> None:
    """hypercorn's CLI gives its error logger a stderr handler of its own when a worker starts
    serving, after the app configured logging; its lines must still appear once, in our format."""
    stream = stderr()
    hypercorn_error = logging.getLogger("hypercorn.error")
    saved = list(hypercorn_error.handlers), hypercorn_error.propagate, hypercorn_error.level
    try:
        configure_logging(level="info", fmt="json")
        created = hypercorn_logging._create_logger("hypercorn.error", "-", "info", sys.stderr)
        assert created is hypercorn_error
        assert hypercorn_error.handlers  # what hypercorn's CLI does in a worker
        hypercorn_error.info("Running on http://127.0.0.1:1 (CTRL + C to quit)")
        hypercorn_error.info("Running on http://127.0.0.1:1 (CTRL + C to quit)")
    finally:
        hypercorn_error.handlers, hypercorn_error.propagate = saved[0], saved[1]
        hypercorn_error.setLevel(saved[2])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines  # each record once
    assert all(json.loads(line)["logger"] == "hypercorn.error" for line in lines)
