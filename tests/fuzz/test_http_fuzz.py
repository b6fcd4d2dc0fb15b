"""Property-based fuzzing of every HTTP route of a real gateway (a subprocess, see conftest).

Whatever a client sends - any JSON value, a wrong type in any field, deep nesting, huge strings,
bytes that are not UTF-8, odd header values, odd methods, random paths - the answer is a 2xx for a
valid request and a 4xx with an OpenAI-shaped JSON error otherwise: never a 5xx, never a hang
(every request has a client-side timeout), and the gateway keeps serving (checked after each
test by the ``gateway_still_serves`` fixture, which also fails a test that made the gateway log
an ERROR).

Tests marked ``xfail(strict=True)`` pin bugs the fuzzing found; each names its reproducer. When
the bug is fixed the test passes, strict xfail turns that into a failure, and the marker goes.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import h11
import httpx
import pytest
from fuzz.gateway_process import AGENTS, GatewayProcess
from fuzz.strategies import (
    FUZZ,
    PINNED,
    examples,
    json_values,
    nested_json,
    odd_strings,
    repeated_text,
)
from hypothesis import given, settings
from hypothesis import strategies as st

#: Client-side bound on one exchange: a slower answer counts as a hang.
TIMEOUT_SECONDS = 10.0
#: ``gateway.http.maxBodyBytes`` (as the fuzzed gateway sets it), ``maxHeaderBytes`` and
#: ``maxMessages`` (the defaults).
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_MESSAGES = 1000
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
#: The tools every agent has by default: a client tool may not take their names.
AGENT_TOOLS = ("current_time", "read_file", "list_files", "write_file")
#: Routes and the methods they accept over plain HTTP (``/`` is also a WebSocket route, the
#: control page's files over HTTP; ``/ws`` is a WebSocket route only).
ROUTES: dict[str, tuple[str, ...]] = {
    "/": ("GET",),
    "/ui/app.js": ("GET",),
    CHAT: ("POST",),
    "/v1/models": ("GET",),
    "/v1/models/epiloop:main": ("GET",),
    "/healthz": ("GET",),
    "/readyz": ("GET",),
    "/metrics": ("GET",),
}
WEBSOCKET_ROUTES = ("/ws",)
_REQUEST_ID = re.compile(r"\A[!-~]{1,128}\Z")
_GENERATED_REQUEST_ID = re.compile(r"\A[0-9a-f]{32}\Z")
_AGENT_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    # A fresh connection for every request: a pooled one can race hypercorn closing it when
    # idle (its keep-alive timeout is 5 s), and the client would then see "Server disconnected
    # without sending a response" for a request the gateway never received. Seen under load.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=TIMEOUT_SECONDS, limits=limits) as client:
        yield client


# --- checking answers ---------------------------------------------------------------------------


def send(
    gateway: GatewayProcess,
    client: httpx.Client,
    method: str,
    path: str,
    *,
    content: bytes | None = None,
    headers: list[tuple[str, str | bytes]] | Mapping[str, str | bytes] | None = None,
) -> httpx.Response:
    """One exchange; a timeout is reported as a hang, with the gateway's ERROR records."""
    try:
        return client.request(
            method,
            gateway.url + path,
            content=content,
            headers=_raw_headers(gateway.headers if headers is None else headers),
        )
    except httpx.TimeoutException as exc:
        raise AssertionError(
            f"{method} {path[:200]!r}: no answer within {TIMEOUT_SECONDS} s (a hang)\n"
            f"{gateway.describe_errors()}"
        ) from exc


def _raw_headers(
    headers: list[tuple[str, str | bytes]] | Mapping[str, str | bytes],
) -> list[tuple[bytes, bytes]]:
    """Headers as bytes, so values may hold any byte HTTP allows (httpx encodes str as ASCII)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [
        (name.encode("ascii"), value if isinstance(value, bytes) else value.encode("ascii"))
        for name, value in items
    ]


def _context(gateway: GatewayProcess, response: httpx.Response) -> str:
    request = response.request
    try:
        sent = request.content
    except httpx.RequestNotRead:
        sent = b"(streamed)"
    return (
        f"{request.method} {request.url.raw_path[:300]!r} -> {response.status_code}\n"
        f"request headers: {[(k, v[:200]) for k, v in request.headers.raw]}\n"
        f"request body ({len(sent)} bytes): {sent[:500]!r}\n"
        f"response body: {response.content[:500]!r}\n{gateway.describe_errors()}"
    )


def check(
    gateway: GatewayProcess,
    response: httpx.Response,
    allowed: Collection[int] | None = None,
) -> dict[str, Any] | None:
    """Never a 5xx; ``status in allowed``; a 4xx (but HEAD) carries an OpenAI error body, which
    is returned (its ``error`` object)."""
    status = response.status_code
    assert status < 500, _context(gateway, response)
    if allowed is not None:
        assert status in allowed, _context(gateway, response)
    if status < 400 or response.request.method == "HEAD":
        return None
    assert response.headers.get("content-type", "").startswith("application/json"), _context(
        gateway, response
    )
    body = response.json()
    assert isinstance(body, dict), _context(gateway, response)
    assert set(body) == {"error"}, _context(gateway, response)
    error = body["error"]
    assert isinstance(error, dict), _context(gateway, response)
    assert set(error) == {"message", "type", "param", "code"}, _context(gateway, response)
    assert isinstance(error["message"], str), _context(gateway, response)
    assert error["message"], _context(gateway, response)
    assert isinstance(error["type"], str), _context(gateway, response)
    assert error["param"] is None or isinstance(error["param"], str), _context(gateway, response)
    assert error["code"] is None or isinstance(error["code"], str), _context(gateway, response)
    return error


def check_completion(gateway: GatewayProcess, response: httpx.Response, *, stream: bool) -> None:
    """A 200 is a whole chat completion: JSON, or an SSE stream that ends with ``[DONE]``."""
    if not stream:
        body = response.json()
        assert body["object"] == "chat.completion", _context(gateway, response)
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant", _context(gateway, response)
        assert choice["finish_reason"] in ("stop", "length"), _context(gateway, response)
        return
    assert response.headers["content-type"].startswith("text/event-stream")
    data = [
        line[len("data: ") :]
        for line in response.text.split("\n")
        if line.startswith("data: ")  # comments (keep-alive) and blank lines aside
    ]
    assert data, _context(gateway, response)
    assert data[-1] == "[DONE]", _context(gateway, response)
    for item in data[:-1]:
        chunk = json.loads(item)
        assert "error" not in chunk, _context(gateway, response)
        assert chunk["object"] == "chat.completion.chunk", _context(gateway, response)


def post_chat(
    gateway: GatewayProcess,
    client: httpx.Client,
    body: bytes,
    headers: Mapping[str, str | bytes] | None = None,
) -> httpx.Response:
    all_headers = {**gateway.headers, "Content-Type": "application/json", **(headers or {})}
    return send(gateway, client, "POST", CHAT, content=body, headers=all_headers)


def with_placeholder(body: object, placeholder: str, replacement: bytes) -> bytes:
    """``body`` as JSON bytes with the string ``placeholder`` (quotes included) replaced."""
    text = json.dumps(body).encode()
    quoted = json.dumps(placeholder).encode()
    assert text.count(quoted) == 1
    return text.replace(quoted, replacement)


# --- arbitrary bodies ---------------------------------------------------------------------------


@settings(FUZZ, max_examples=examples(150))
@given(body=json_values(), ascii_only=st.booleans())
def test_chat_arbitrary_json_body_answers_2xx_or_a_4xx_error(
    gateway: GatewayProcess, client: httpx.Client, body: object, ascii_only: bool
) -> None:
    response = post_chat(gateway, client, json.dumps(body, ensure_ascii=ascii_only).encode())
    error = check(gateway, response, {200, 400, 404})
    if not isinstance(body, dict):
        assert error is not None, _context(gateway, response)
        assert response.status_code == 400, _context(gateway, response)
        assert error["param"] is None, _context(gateway, response)


# Where a wrong value can go: a path into a small valid request. The error's ``param`` must
# name the field (or something inside it).
_SITES: tuple[tuple[str | int, ...], ...] = (
    ("messages",),
    ("messages", 0),
    ("messages", 0, "role"),
    ("messages", 0, "content"),
    ("messages", 0, "content", 0),
    ("messages", 0, "content", 0, "type"),
    ("messages", 0, "content", 0, "text"),
    ("messages", 0, "name"),
    ("messages", 1, "tool_calls"),
    ("messages", 1, "tool_calls", 0, "function", "arguments"),
    ("messages", 2, "tool_call_id"),
    ("model",),
    ("stream",),
    ("stream_options",),
    ("stream_options", "include_usage"),
    ("temperature",),
    ("top_p",),
    ("n",),
    ("max_tokens",),
    ("max_completion_tokens",),
    ("presence_penalty",),
    ("frequency_penalty",),
    ("seed",),
    ("stop",),
    ("tools",),
    ("tools", 0),
    ("tools", 0, "type"),
    ("tools", 0, "function"),
    ("tools", 0, "function", "name"),
    ("tools", 0, "function", "parameters"),
    ("tools", 0, "function", "strict"),
    ("tool_choice",),
    ("user",),
)


def _base_request(site: tuple[str | int, ...]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "epiloop",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "u"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            {"role": "user", "content": "and now?"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        ],
    }
    if site[0] == "stream_options":
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _set(target: Any, path: tuple[str | int, ...], value: object) -> None:
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


@settings(FUZZ, max_examples=examples(250))
@given(site=st.sampled_from(_SITES), value=json_values())
def test_chat_wrong_type_in_any_field_answers_4xx_naming_the_field(
    gateway: GatewayProcess, client: httpx.Client, site: tuple[str | int, ...], value: object
) -> None:
    body = _base_request(site)
    _set(body, site, value)
    response = post_chat(gateway, client, json.dumps(body).encode())
    error = check(gateway, response, {200, 400, 404})
    field = str(site[0])
    if error is not None:
        param = error["param"]
        assert isinstance(param, str), _context(gateway, response)
        assert param == field or param.startswith((f"{field}[", f"{field}.")), _context(
            gateway, response
        )
    if response.status_code == 404:
        assert error is not None
        assert (error["code"], error["param"]) == ("model_not_found", "model")
    if response.status_code == 200:
        check_completion(gateway, response, stream=body.get("stream") is True)


# --- valid requests -----------------------------------------------------------------------------

_tool_names = st.sampled_from(("lookup", "f", *AGENT_TOOLS)) | st.from_regex(
    r"\A[A-Za-z0-9_-]{1,64}\Z"
)
_content = st.text(max_size=40) | st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}),
    min_size=1,
    max_size=3,
)
_tool_call = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=8),
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": _tool_names, "arguments": st.text(max_size=30)}),
    }
)
_message = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(("user", "system", "developer")), "content": _content},
        optional={"name": st.text(max_size=10)},
    ),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": _content}),
    st.fixed_dictionaries(
        {
            "role": st.just("assistant"),
            "content": st.none() | _content,
            "tool_calls": st.lists(_tool_call, min_size=1, max_size=2),
        }
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("tool"),
            "tool_call_id": st.text(min_size=1, max_size=8),
            "content": _content,
        }
    ),
)
_tool = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": _tool_names},
            optional={
                "description": st.text(max_size=20),
                "parameters": st.dictionaries(st.text(max_size=8), json_values(5), max_size=3),
                "strict": st.booleans(),
            },
        ),
    }
)
_options = {
    "model": st.sampled_from(
        ("epiloop", "epiloop:main", "epiloop:helper", "EPILOOP:Helper", "agent:main", "gpt-4o", "")
    ),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "n": st.just(1),
    "max_tokens": st.integers(1, 2**31),
    "max_completion_tokens": st.integers(1, 2**31),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "seed": st.integers(-(2**63), 2**63 - 1),
    "stop": st.none() | st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=4),
    "tools": st.lists(_tool, max_size=3),
    "tool_choice": st.sampled_from(("auto", "none", "required"))
    | st.fixed_dictionaries(
        {"type": st.just("function"), "function": st.fixed_dictionaries({"name": _tool_names})}
    ),
    "user": st.text(max_size=20),
}


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, str]]:
    body: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {"messages": st.lists(_message, min_size=1, max_size=6)}, optional=_options
        )
    )
    stream = draw(st.sampled_from((None, False, True, "absent")))
    if stream != "absent":
        body["stream"] = stream
    if stream is True and draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    headers: dict[str, str] = {}
    agent = draw(st.sampled_from((None, *AGENTS, "HELPER")))
    if agent is not None:
        headers["x-epiloop-agent-id"] = agent
    # A few keys, reused across examples: stored sessions get continued, reconciled, and
    # claimed by the other agent.
    key = draw(st.sampled_from((None, "fuzz-a", "fuzz-b", "agent:main:main")))
    if key is not None:
        headers["x-epiloop-session-key"] = key
    return body, headers


@settings(FUZZ, max_examples=examples(150))
@given(request=valid_requests())
def test_chat_valid_request_is_answered_in_full(
    gateway: GatewayProcess,
    client: httpx.Client,
    request: tuple[dict[str, Any], dict[str, str]],
) -> None:
    body, headers = request
    response = post_chat(gateway, client, json.dumps(body).encode(), headers)
    error = check(gateway, response, {200, 400})
    if error is not None:
        # The only refusals a valid body can get: a session of the other agent, or a client
        # tool named like one of the agent's own.
        assert error["code"] in ("session_agent_mismatch", "tool_name_conflict"), _context(
            gateway, response
        )
        return
    check_completion(gateway, response, stream=body.get("stream") is True)


# --- deep nesting -------------------------------------------------------------------------------

_NESTED = "__nested__"
_NESTING_SITES: dict[str, object] = {
    "body": _NESTED,
    "messages": {"messages": _NESTED},
    "messages[0].content": {"messages": [{"role": "user", "content": _NESTED}]},
    "tool_choice": {"messages": MESSAGES, "tool_choice": _NESTED},
    "tools[0].function.parameters": {
        "messages": MESSAGES,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": _NESTED}}}],
    },
    "user": {"messages": MESSAGES, "user": _NESTED},
    "stop": {"messages": MESSAGES, "stop": _NESTED},
}


#: Sites whose schema takes any JSON value: deep nesting there is refused for its depth alone.
_FREE_FORM_SITES = frozenset({"tools[0].function.parameters"})


def _nested_body(site: str, depth: int, kind: str) -> bytes:
    return with_placeholder(_NESTING_SITES[site], _NESTED, nested_json(depth, kind).encode())


@settings(FUZZ, max_examples=examples(40))
@given(
    site=st.sampled_from(sorted(_NESTING_SITES)),
    depth=st.integers(1, 400),
    kind=st.sampled_from(("list", "object")),
)
def test_chat_nesting_below_the_recursion_limit_answers_2xx_or_4xx(
    gateway: GatewayProcess, client: httpx.Client, site: str, depth: int, kind: str
) -> None:
    response = post_chat(gateway, client, _nested_body(site, depth, kind))
    check(gateway, response, {200, 400})


@settings(FUZZ, max_examples=examples(15))
@given(
    site=st.sampled_from(sorted(_NESTING_SITES)),
    depth=st.integers(1_000, 200_000),
    kind=st.sampled_from(("list", "object")),
)
def test_chat_deep_nesting_answers_400(
    gateway: GatewayProcess, client: httpx.Client, site: str, depth: int, kind: str
) -> None:
    response = post_chat(gateway, client, _nested_body(site, depth, kind))
    error = check(gateway, response, {400})
    assert error is not None
    if site in _FREE_FORM_SITES:
        # Any JSON value is valid there, so only the depth can be what is wrong.
        assert error["code"] == "invalid_json", _context(gateway, response)
        assert "nested too deeply" in error["message"], _context(gateway, response)


# --- huge values and the body limit -------------------------------------------------------------

_HUGE_SITES: dict[str, Callable[[str], tuple[dict[str, Any], dict[str, str | bytes]]]] = {
    "content": lambda huge: ({"messages": [{"role": "user", "content": huge}]}, {}),
    "system": lambda huge: ({"messages": [{"role": "system", "content": huge}, *MESSAGES]}, {}),
    "name": lambda huge: ({"messages": [{"role": "user", "content": "hi", "name": huge}]}, {}),
    "model": lambda huge: ({"messages": MESSAGES, "model": huge}, {}),
    "agent model": lambda huge: ({"messages": MESSAGES, "model": f"epiloop:{huge}"}, {}),
    "user": lambda huge: ({"messages": MESSAGES, "user": huge}, {}),
    "stop": lambda huge: ({"messages": MESSAGES, "stop": [huge]}, {}),
    "tool_choice": lambda huge: ({"messages": MESSAGES, "tool_choice": huge}, {}),
    "unknown field": lambda huge: ({"messages": MESSAGES, "extra": huge}, {}),
    "session key header": lambda huge: (
        {"messages": MESSAGES},
        # UTF-8 bytes are obs-text; below gateway.http.maxHeaderBytes (16 KiB)
        {"x-epiloop-session-key": huge.encode()[:8_000]},
    ),
}
# No whitespace: the echo provider answers word by word, and millions of one-letter words only
# make the test slow.
_chunk_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc")),
    min_size=1,
    max_size=6,
)


@settings(FUZZ, max_examples=examples(12))
@given(
    site=st.sampled_from(sorted(_HUGE_SITES)),
    size=st.integers(10_000, 3_000_000),
    pattern=_chunk_text,
    stream=st.booleans(),
)
def test_chat_huge_strings_answer_200_or_4xx(
    gateway: GatewayProcess,
    client: httpx.Client,
    site: str,
    size: int,
    pattern: str,
    stream: bool,
) -> None:
    body, headers = _HUGE_SITES[site](repeated_text(size, pattern))
    body["stream"] = stream
    encoded = json.dumps(body, ensure_ascii=False).encode()
    response = post_chat(gateway, client, encoded, headers)
    if len(encoded) > MAX_BODY_BYTES:
        error = check(gateway, response, {413})
        assert error is not None
        assert error["code"] == "payload_too_large"
        return
    check(gateway, response, {200, 400, 431})
    if response.status_code == 200:
        check_completion(gateway, response, stream=stream)


def raw_post(
    gateway: GatewayProcess,
    headers: list[tuple[str, str]],
    parts: Iterable[bytes],
    *,
    authorized: bool = True,
) -> tuple[int, bytes]:
    """POST to the chat route over a plain socket (h11 frames it), reading the answer as soon
    as it comes.

    httpx writes a whole body before it reads: when the gateway refuses a large body early and
    closes, the unread rest makes the kernel reset the connection, and the client may lose the
    413 ("Server disconnected without sending a response"). Here the client sends only what the
    test says (headers announcing a large body, or some chunks), then reads.
    """
    host, port = urlsplit(gateway.url).hostname, urlsplit(gateway.url).port
    assert host is not None
    assert port is not None
    connection = h11.Connection(h11.CLIENT)
    credentials = list(gateway.headers.items()) if authorized else []
    headers = [("Host", f"{host}:{port}"), *credentials, *headers]
    status, body = 0, b""
    with socket.create_connection((host, port), timeout=TIMEOUT_SECONDS) as sock:
        data = connection.send(h11.Request(method="POST", target=CHAT, headers=headers))
        assert data is not None
        sock.sendall(data)
        for part in parts:
            data = connection.send(h11.Data(data=part))
            assert data is not None
            sock.sendall(data)
        while True:
            try:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(sock.recv(65536))
                    continue
            except TimeoutError as exc:
                raise AssertionError(
                    f"no answer within {TIMEOUT_SECONDS} s (a hang)\n{gateway.describe_errors()}"
                ) from exc
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, body


def _check_413(gateway: GatewayProcess, status: int, body: bytes) -> None:
    assert status == 413, (status, body[:300], gateway.describe_errors())
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "payload_too_large"


@settings(FUZZ, max_examples=examples(10))
@given(size=st.integers(MAX_BODY_BYTES + 1, 2**40), sent=st.integers(0, 64 * 1024))
def test_chat_content_length_over_the_limit_answers_413(
    gateway: GatewayProcess, size: int, sent: int
) -> None:
    # Refused on the announced length alone, before the body is read.
    headers = [("Content-Type", "application/json"), ("Content-Length", str(size))]
    _check_413(gateway, *raw_post(gateway, headers, [b"x" * sent] if sent else []))


@settings(FUZZ, max_examples=examples(6))
@given(
    over=st.integers(1, 64 * 1024),
    chunk=st.sampled_from((4096, 64 * 1024, 1024 * 1024)),
)
def test_chat_chunked_body_over_the_limit_answers_413(
    gateway: GatewayProcess, over: int, chunk: int
) -> None:
    # No length announced: refused once the body read so far passes the limit.
    total = MAX_BODY_BYTES + over
    parts = [b"x" * min(chunk, total - start) for start in range(0, total, chunk)]
    headers = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
    _check_413(gateway, *raw_post(gateway, headers, parts))


@settings(FUZZ, max_examples=examples(5))
@given(count=st.integers(MAX_MESSAGES + 1, 5 * MAX_MESSAGES))
def test_chat_too_many_messages_answers_400(
    gateway: GatewayProcess, client: httpx.Client, count: int
) -> None:
    body = json.dumps({"messages": MESSAGES * count}).encode()
    error = check(gateway, post_chat(gateway, client, body), {400})
    assert error is not None
    assert (error["code"], error["param"]) == ("too_many_messages", "messages")


@pytest.mark.xfail(
    strict=True,
    reason="BUG (hypercorn 0.18, trio worker): when the gateway answers before reading the "
    "announced body (401, 413, ...), TCPServer._close() calls send_eof() without the send lock "
    "and races the application's last send: 'Error in ASGI Framework' with "
    "trio.BusyResourceError at ERROR, about one request in two, unauthenticated clients "
    "included. Reproducer: 'POST /v1/chat/completions' with 'Content-Length: 100000' and no "
    "Authorization, 64 KiB of body, then read the 401",
)
@settings(PINNED, max_examples=examples(3))
@given(authorized=st.booleans(), sent=st.sampled_from((0, 1024, 64 * 1024)))
def test_early_answer_before_the_body_is_read_logs_no_error(
    gateway: GatewayProcess, authorized: bool, sent: int
) -> None:
    size = 2 * MAX_BODY_BYTES if authorized else 100_000
    headers = [("Content-Length", str(size))]
    expected = 413 if authorized else 401
    # A race: it shows in about one request in two for some shapes and rarely for others, so
    # try until it shows (or enough requests went by without it).
    for attempt in range(1, 201):
        status, _body = raw_post(
            gateway, headers, [b"x" * sent] if sent else [], authorized=authorized
        )
        assert status == expected
        if attempt % 10 == 0 and gateway.errors():
            break
    assert not gateway.errors(), gateway.describe_errors()


# --- bytes that are not UTF-8 -------------------------------------------------------------------

_BAD_UTF8 = (
    b"\xff",
    b"\x80",
    b"\xc3",  # a lead byte without its continuation
    b"\xc0\xaf",  # overlong "/"
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # a five-byte form
)
_invalid_utf8 = st.sampled_from(_BAD_UTF8) | st.binary(min_size=1, max_size=8).filter(
    lambda data: not _is_utf8(data)
)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def _garbage_outside_strings(draw: st.DrawFn) -> bytes:
    """Bodies that are not UTF-8, where the bad bytes are not inside a JSON string."""
    if draw(st.booleans()):
        raw = draw(st.binary(min_size=1, max_size=300).filter(lambda d: not _is_utf8(d)))
        return raw.replace(b'"', b"'")
    valid = json.dumps({"messages": MESSAGES}).encode()
    cut = draw(st.sampled_from((0, 1, len(valid) - 1, len(valid))))
    return valid[:cut] + draw(_invalid_utf8) + valid[cut:]


@settings(FUZZ, max_examples=examples(80))
@given(body=_garbage_outside_strings())
def test_chat_non_utf8_body_answers_400_invalid_json(
    gateway: GatewayProcess, client: httpx.Client, body: bytes
) -> None:
    response = post_chat(gateway, client, body)
    # A body such as b"0\x80" is refused for its shape ("must be a JSON object") before the
    # bad byte is reached; either way a 400.
    check(gateway, response, {400})


_IN_STRING_SITES: dict[str, object] = {
    "content": {"messages": [{"role": "user", "content": _NESTED}]},
    "role": {"messages": [{"role": _NESTED, "content": "hi"}]},
    "model": {"messages": MESSAGES, "model": _NESTED},
    "user": {"messages": MESSAGES, "user": _NESTED},
    "key": {"messages": MESSAGES, _NESTED: 1},
}


@settings(FUZZ, max_examples=examples(15))
@given(
    site=st.sampled_from(sorted(_IN_STRING_SITES)),
    before=st.text(max_size=5),
    bad=_invalid_utf8,
    after=st.text(max_size=5),
)
def test_chat_invalid_utf8_inside_a_string_answers_400_invalid_json(
    gateway: GatewayProcess,
    client: httpx.Client,
    site: str,
    before: str,
    bad: bytes,
    after: str,
) -> None:
    inner = json.dumps(before)[1:-1].encode() + bad + json.dumps(after)[1:-1].encode()
    body = with_placeholder(_IN_STRING_SITES[site], _NESTED, b'"' + inner + b'"')
    response = post_chat(gateway, client, body)
    if site == "key":
        # An unknown key is skipped without its bytes being checked: accepted, harmlessly.
        check(gateway, response, {200, 400})
        return
    error = check(gateway, response, {400})
    assert error is not None, _context(gateway, response)
    assert error["code"] == "invalid_json", _context(gateway, response)


# --- odd headers --------------------------------------------------------------------------------

# What HTTP allows in a field value: visible ASCII, obs-text (0x80-0xFF), and spaces and tabs
# inside (h11 refuses control characters and leading or trailing whitespace).
_field_value = (
    st.binary(max_size=80)
    .map(
        lambda data: bytes(
            b if b in (9, 32) or 0x21 <= b <= 0x7E or b >= 0x80 else 0x2E for b in data
        )
    )
    .map(lambda data: data.strip(b" \t"))
)
_odd_value = _field_value | st.sampled_from(
    (b"", b"main", b"helper", b"HELPER", b"Main", b"Bearer", b"bearer " + b"x" * 300, b"\xff")
)
_HEADERS = (
    "x-epiloop-agent-id",
    "x-epiloop-session-key",
    "authorization",
    "x-request-id",
    "content-type",
    "accept",
    "accept-encoding",
    "user-agent",
    "x-forwarded-for",
    "cookie",
    "origin",
)


@settings(FUZZ, max_examples=examples(200))
@given(name=st.sampled_from(_HEADERS), value=_odd_value, twice=st.booleans())
def test_odd_header_values_answer_2xx_or_4xx(
    gateway: GatewayProcess, client: httpx.Client, name: str, value: bytes, twice: bool
) -> None:
    headers: list[tuple[str, str | bytes]] = [
        (key, given)
        for key, given in {**gateway.headers, "Content-Type": "application/json"}.items()
        if key.lower() != name
    ]
    headers += [(name, value)] * (2 if twice else 1)
    body = json.dumps({"messages": MESSAGES}).encode()
    response = send(gateway, client, "POST", CHAT, content=body, headers=headers)
    text = value.decode("latin-1")  # how the server reads a header value
    if name == "authorization":
        # Not the token: refused, the first header or the second, whatever it holds.
        error = check(gateway, response, {401})
        assert error is not None
        assert error["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
    elif name == "x-epiloop-agent-id":
        wanted = text.strip()
        if wanted.lower() in AGENTS:
            check(gateway, response, {200})
        elif _AGENT_ID.match(wanted):
            check(gateway, response, {404})
        else:
            error = check(gateway, response, {400})
            assert error is not None
            assert error["param"] == "x-epiloop-agent-id"
    elif name == "x-epiloop-session-key":
        if text and len(text) <= 256 and text.isascii() and text.isprintable():
            check(gateway, response, {200, 400})  # 400: a session of the other agent
        else:
            error = check(gateway, response, {400})
            assert error is not None
            assert error["param"] == "x-epiloop-session-key"
    else:
        check(gateway, response, {200})
    if name == "x-request-id" and _REQUEST_ID.match(text):
        assert response.headers["x-request-id"] == text
    elif name == "x-request-id":
        assert _REQUEST_ID.match(response.headers["x-request-id"])
    else:
        assert _GENERATED_REQUEST_ID.match(response.headers["x-request-id"])


@settings(FUZZ, max_examples=examples(8))
@given(size=st.integers(MAX_HEADER_BYTES + 1, 200_000))
def test_header_block_over_the_limit_answers_431(
    gateway: GatewayProcess, client: httpx.Client, size: int
) -> None:
    headers = {**gateway.headers, "x-padding": "p" * size}
    response = send(gateway, client, "GET", "/healthz", headers=headers)
    assert response.status_code == 431, _context(gateway, response)
    if response.content:
        # The gateway's own refusal; a head that h11 refuses while it is still arriving gets
        # hypercorn's bare 431, with no body.
        error = check(gateway, response, {431})
        assert error is not None
        assert error["code"] == "headers_too_large"


# --- odd methods and random paths ---------------------------------------------------------------

_methods = st.sampled_from(("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE"))
_method_tokens = st.from_regex(r"\A[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,15}\Z").filter(
    lambda method: method.upper() != "CONNECT"
)


@settings(FUZZ, max_examples=examples(150))
@given(
    method=_methods | _method_tokens,
    route=st.sampled_from((*ROUTES, *WEBSOCKET_ROUTES)),
    body=st.none() | st.binary(max_size=64),
)
def test_odd_method_on_any_route_answers_405_with_allow(
    gateway: GatewayProcess, client: httpx.Client, method: str, route: str, body: bytes | None
) -> None:
    response = send(gateway, client, method, route, content=body)
    if route in WEBSOCKET_ROUTES:
        check(gateway, response, {400, 405})  # 400: plain HTTP on a WebSocket route
        return
    accepted = ROUTES[route]
    if method in accepted or (method == "HEAD" and "GET" in accepted):
        check(gateway, response, {200, 400})
        return
    error = check(gateway, response, {405})
    assert response.headers["allow"] == ", ".join(accepted), _context(gateway, response)
    if error is not None:
        assert error["code"] == "method_not_allowed"


_segment = odd_strings | st.sampled_from(("v1", "models", "chat", "completions", "..", ".", ""))
_prefix = st.sampled_from(("/", "/v1/", "/v1/models/", "/v1/chat/", "//", "/ws/", "/healthz/"))


@settings(FUZZ, max_examples=examples(200))
@given(
    method=st.sampled_from(("GET", "POST")),
    prefix=_prefix,
    segments=st.lists(_segment, max_size=4),
    query=st.none() | st.text(max_size=30),
    authorized=st.booleans(),
)
def test_random_path_answers_a_4xx_error_or_its_route(
    gateway: GatewayProcess,
    client: httpx.Client,
    method: str,
    prefix: str,
    segments: list[str],
    query: str | None,
    authorized: bool,
) -> None:
    path = prefix + "/".join(quote(segment, safe="") for segment in segments)
    if query is not None:
        path += "?" + quote(query, safe="=&")
    headers = gateway.headers if authorized else {}
    response = send(gateway, client, method, path, content=b"{}", headers=headers)
    # No redirect either ("//" used to get an HTML 308 built from the Host header).
    check(gateway, response, {200, 400, 401, 404, 405})
