"""The control protocol (sans-IO): its frames, structs and tables, and the docs against them."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import msgspec
import pytest

from trio_gateway.errors import ControlPlaneError
from trio_gateway.wire import control
from trio_gateway.wire.control import (
    ADVERTISED_METHODS,
    AGENT_EVENT_DATA,
    AUTH_FAILED,
    CONNECTION_LOST,
    ERROR_CODES,
    EVENTS,
    GATEWAY_CLOSINGS,
    METHODS,
    PEER_CLOSINGS,
    RELOAD_ONLY_METHODS,
    AgentAccepted,
    AgentEvent,
    AgentParams,
    ConnectResult,
    ErrorInfo,
    EventFrame,
    FrameError,
    HealthResult,
    RequestFrame,
    ResponseFrame,
    RunOutcome,
    RunResult,
    TickPayload,
    ToolCallInfo,
    ToolStartData,
    Usage,
    closing_for_code,
    encode_error_response,
    encode_event,
    encode_request,
    encode_response,
    parse_frame,
    parse_request,
    read_payload,
)


def test_frames_parse_a_request() -> None:
    frame = parse_request('{"type": "req", "id": "1", "method": "health"}')
    assert frame == RequestFrame(id="1", method="health", params={})


@pytest.mark.parametrize(
    ("text", "request_id"),
    [
        ("not json", None),
        ('{"type": "req", "id": "7"}', "7"),
        ('{"type": "res", "id": "8", "method": "x"}', "8"),
        ('{"type": "req", "id": 5, "method": "x"}', None),
        ('{"type": "req", "id": "", "method": "x"}', ""),
        (
            '{"type": "req", "id": "d", "method": "x", "params": '
            + "[" * 50_000
            + "]" * 50_000
            + "}",
            None,
        ),
        (b'{"type": "req", "id": "u", "method": "\xff"}', None),
    ],
)
def test_frames_bad_requests_raise_frame_error(text: str | bytes, request_id: str | None) -> None:
    with pytest.raises(FrameError) as caught:
        parse_request(text)
    assert caught.value.request_id == request_id


def test_frames_encode_responses_and_events() -> None:
    assert json.loads(encode_response("1", {"a": 1})) == {
        "type": "res",
        "id": "1",
        "ok": True,
        "payload": {"a": 1},
    }
    error = json.loads(
        encode_error_response("2", code="c", message="m", retryable=True, retry_after_ms=10)
    )
    assert error == {
        "type": "res",
        "id": "2",
        "ok": False,
        "error": {"code": "c", "message": "m", "retryable": True, "retryAfterMs": 10},
    }
    assert json.loads(encode_event("tick", {"ts": 1}, 3)) == {
        "type": "event",
        "event": "tick",
        "payload": {"ts": 1},
        "seq": 3,
    }


# -- the protocol's structs encode the JSON the docs show ---------------------------------------


def test_control_run_result_leaves_out_what_says_nothing() -> None:
    usage = Usage(prompt_tokens=1, completion_tokens=2)
    plain = RunResult(run_id="r", status="completed", text="t", stop_reason="stop", usage=usage)
    assert msgspec.json.encode(plain) == (
        b'{"runId":"r","status":"completed","text":"t","stopReason":"stop",'
        b'"usage":{"promptTokens":1,"completionTokens":2}}'
    )
    failed = RunResult(
        run_id="r",
        status="failed",
        text="",
        stop_reason=None,
        usage=usage,
        text_dropped=True,
        error=ErrorInfo(code="run_failed", message="m"),
        tool_calls=[ToolCallInfo(id="c", name="n", arguments="{}")],
    )
    assert json.loads(msgspec.json.encode(failed))["textDropped"] is True
    assert list(json.loads(msgspec.json.encode(failed))) == [
        "runId",
        "status",
        "text",
        "stopReason",
        "usage",
        "textDropped",
        "error",
        "toolCalls",
    ]


def test_control_error_response_leaves_out_an_unknown_retry_time() -> None:
    assert json.loads(encode_error_response("1", code="c", message="m")) == {
        "type": "res",
        "id": "1",
        "ok": False,
        "error": {"code": "c", "message": "m", "retryable": False},
    }


def test_control_agent_event_data_starts_with_its_phase() -> None:
    event = AgentEvent(
        run_id="r", seq=1, stream="tool", data=ToolStartData(call_id="c", name="n", arguments="")
    )
    assert encode_event("agent", event, 2) == (
        '{"type":"event","event":"agent","payload":{"runId":"r","seq":1,"stream":"tool",'
        '"data":{"phase":"start","callId":"c","name":"n","arguments":""}},"seq":2}'
    )


def test_control_request_params_leave_out_what_is_not_set() -> None:
    frame = json.loads(encode_request("4", "agent", AgentParams(message="hi", session_key="s")))
    assert frame == {
        "type": "req",
        "id": "4",
        "method": "agent",
        "params": {"message": "hi", "sessionKey": "s"},
    }
    assert "params" not in json.loads(encode_request("5", "health", None))


def test_control_client_frames_parse_what_the_gateway_encodes() -> None:
    response = parse_frame(encode_response("1", HealthResult(ok=True, uptime_seconds=1.5)))
    assert isinstance(response, ResponseFrame)
    assert msgspec.convert(response.unwrap(), HealthResult) == HealthResult(True, 1.5)
    event = parse_frame(encode_event("tick", TickPayload(ts=5), 9))
    assert event == EventFrame(event="tick", payload={"ts": 5}, seq=9)


def test_control_read_payload_refuses_a_payload_of_another_shape() -> None:
    assert read_payload({"ok": True, "uptimeSeconds": 2}, HealthResult) == HealthResult(True, 2)
    with pytest.raises(ControlPlaneError) as caught:
        read_payload({"ok": "yes"}, HealthResult)
    assert caught.value.code == "bad_frame"


def test_control_run_outcome_reads_fields_of_a_run_result() -> None:
    outcome = {f.encode_name: f.type for f in msgspec.structs.fields(RunOutcome)}
    result = {f.encode_name: f.type for f in msgspec.structs.fields(RunResult)}
    assert outcome.items() <= result.items()


def test_control_method_table_offers_every_method_but_connect() -> None:
    assert "connect" in METHODS
    assert list(ADVERTISED_METHODS) == [name for name in METHODS if name != "connect"]
    assert set(RELOAD_ONLY_METHODS) <= set(ADVERTISED_METHODS)


def test_control_close_code_lookup_takes_the_first_meaning() -> None:
    assert closing_for_code(4001) is AUTH_FAILED
    assert closing_for_code(1006) is CONNECTION_LOST
    assert closing_for_code(4999) is None
    assert {closing.code for closing in GATEWAY_CLOSINGS}.isdisjoint(
        {closing.code for closing in PEER_CLOSINGS}
    )


# -- docs/control-protocol.md says what this module says ------------------------------------

DOC = Path(__file__).parent.parent.parent / "docs" / "control-protocol.md"


def doc_section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert match is not None, f"docs/control-protocol.md lost its section {title!r}"
    return match[1]


def table_rows(section: str) -> list[list[str]]:
    """The body rows of the markdown tables in ``section``, as lists of cells."""
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= {"|", "-", " "}:
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:] if rows else rows


def quoted(text: str) -> set[str]:
    return set(re.findall(r'"(\w+)"', text))


def field_names(kind: object) -> set[str]:
    """Every JSON name a payload of type ``kind`` may hold, nested ones included."""
    names: set[str] = set()
    todo = [msgspec.inspect.type_info(kind)]
    while todo:
        info = todo.pop()
        if isinstance(info, msgspec.inspect.StructType):
            if info.tag_field is not None:
                names.add(info.tag_field)
            for field in info.fields:
                names.add(field.encode_name)
                todo.append(field.type)
        elif isinstance(info, msgspec.inspect.UnionType):
            todo.extend(info.types)
        elif isinstance(info, msgspec.inspect.ListType):
            todo.append(info.item_type)
    return names


def test_control_docs_list_every_method_with_its_params_and_payload() -> None:
    rows = {row[0].strip("`"): row for row in table_rows(doc_section("Methods"))}
    assert list(rows) == list(ADVERTISED_METHODS)
    for name, (_, params, payload) in rows.items():
        method = METHODS[name]
        params_names = {f.encode_name for f in msgspec.structs.fields(method.params)}
        assert quoted(params) == params_names, f"{name}: params"
        result_names = field_names(method.result)
        if name == "agent":
            result_names |= field_names(AgentAccepted)
        assert quoted(payload) <= result_names, f"{name}: payload"


def test_control_docs_list_every_close_code_and_reason() -> None:
    documented: dict[int, set[str]] = {}
    for code, meaning in table_rows(doc_section("Handshake")):
        # The close reason the gateway sends is in parentheses, in backticks.
        documented[int(code)] = set(re.findall(r"\(`([^`]+)`", meaning))
    expected: dict[int, set[str]] = {}
    for closing in GATEWAY_CLOSINGS:
        expected.setdefault(closing.code, set()).add(closing.sent_reason)
    assert documented == expected


def test_control_docs_list_every_error_code() -> None:
    codes = [row[0].strip("`") for row in table_rows(doc_section("Errors"))]
    assert codes == list(ERROR_CODES)


def test_control_docs_examples_are_frames_of_the_protocol() -> None:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    frames: list[object] = []
    for block in blocks:
        try:
            frames.append(json.loads(block))
        except json.JSONDecodeError:
            frames.extend(json.loads(line) for line in block.splitlines() if line.strip())
    checked: set[str] = set()
    for frame in frames:
        text = json.dumps(frame)
        assert isinstance(frame, dict)
        if frame["type"] == "req":
            request = parse_request(text)
            msgspec.convert(request.params, METHODS[request.method].params)
            checked.add("req")
        elif frame["type"] == "event":
            event = parse_frame(text)
            assert isinstance(event, EventFrame)
            assert event.event in EVENTS
            agent = msgspec.convert(event.payload, AgentEvent)
            msgspec.convert(agent.data, AGENT_EVENT_DATA[agent.stream])
            checked.add("event")
        else:
            response = parse_frame(text)
            assert isinstance(response, ResponseFrame)
            payload = response.unwrap()
            if "methods" in payload:
                hello = msgspec.convert(payload, ConnectResult)
                assert hello.methods == list(ADVERTISED_METHODS)
                assert hello.events == list(EVENTS)
            else:
                msgspec.convert(payload, RunResult)
            checked.add("res")
    assert checked == {"req", "res", "event"}


def test_control_module_imports_no_io_library() -> None:
    """The browser UI and any client can read the protocol without the gateway's stack."""
    tree = ast.parse(Path(control.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            imported.add(base if node.level else base.split(".")[0])
    assert imported <= {"__future__", "collections", "dataclasses", "typing", "msgspec"} | {
        "..errors",
        ".decoding",
    }
