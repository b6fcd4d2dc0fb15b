"""The WebSocket control protocol, both directions (see docs/control-protocol.md). Sans-IO.

This module is the protocol's one definition, read by the gateway's control plane, the control
client and the CLI alike:

- the frames: :class:`RequestFrame` (client → gateway), :class:`ResponseFrame` and
  :class:`EventFrame` (gateway → client), their parsers and encoders;
- the close codes the gateway sends (:data:`GATEWAY_CLOSINGS`) and the ones a peer may see
  without the gateway choosing them (:data:`PEER_CLOSINGS`);
- the error codes the protocol itself answers with (:data:`ERROR_CODES`);
- one msgspec struct for each method's params and result, and the method table
  (:data:`METHODS`) that the gateway dispatches on and the client encodes from;
- the events and their payloads, the ``agent`` event's data for each stream.

The JSON names are camelCase (msgspec ``rename``). It imports msgspec and ``errors`` only; never
trio, quart, hypercorn or httpx. It is longer than most modules because it holds one concept, the
protocol, whose parts are only meaningful together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from ..errors import ControlPlaneError
from .decoding import DECODE_ERRORS, DecodeFault, decode_fault

__all__ = [
    "ADVERTISED_METHODS",
    "AGENT_EVENT_DATA",
    "AUTH_FAILED",
    "BAD_FRAME",
    "BINARY_FRAME",
    "CONNECTION_CLOSED",
    "CONNECTION_LOST",
    "CONNECT_REQUIRED",
    "CREDENTIALS_CHANGED",
    "ERROR_CODES",
    "EVENTS",
    "FRAME_TOO_LARGE",
    "GATEWAY_CLOSINGS",
    "HANDSHAKE_TIMEOUT",
    "METHODS",
    "PEER_CLOSINGS",
    "PROTOCOL_MISMATCH",
    "PROTOCOL_VERSION",
    "RELOAD_ONLY_METHODS",
    "SLOW_CONSUMER",
    "AbortParams",
    "AbortResult",
    "AdmissionInfo",
    "AgentAccepted",
    "AgentEvent",
    "AgentInfo",
    "AgentParams",
    "AgentsListResult",
    "ChallengePayload",
    "ClientAuth",
    "ClientInfo",
    "Closing",
    "ConnectParams",
    "ConnectResult",
    "DeleteResult",
    "DeltaData",
    "ErrorBody",
    "ErrorInfo",
    "EventFrame",
    "Frame",
    "FrameError",
    "HealthResult",
    "LifecycleEndData",
    "LifecycleErrorData",
    "LifecycleStartData",
    "Limits",
    "Method",
    "ModelInfo",
    "ModelsListResult",
    "NoParams",
    "ProtocolRange",
    "ReloadResult",
    "RequestFrame",
    "ResetResult",
    "ResponseFrame",
    "RunIdParams",
    "RunInfo",
    "RunOutcome",
    "RunResult",
    "ServerInfo",
    "SessionDetail",
    "SessionKeyParams",
    "SessionSummary",
    "SessionsListParams",
    "SessionsListResult",
    "StatusResult",
    "TickPayload",
    "ToolCallInfo",
    "ToolResultData",
    "ToolStartData",
    "TranscriptEntry",
    "Usage",
    "closing_for_code",
    "encode_error_response",
    "encode_event",
    "encode_request",
    "encode_response",
    "parse_frame",
    "parse_request",
    "read_payload",
    "run_id_of",
]

#: The protocol version this module describes (the gateway and the client speak only it).
PROTOCOL_VERSION = 1

_encode = msgspec.json.encode


# -- frames ----------------------------------------------------------------------------------


class FrameError(Exception):
    """A frame that is not a valid request. ``request_id`` is set when it could be read."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class RequestFrame(msgspec.Struct, frozen=True, tag="req", tag_field="type"):
    """A request, as the gateway reads it: ``params`` are checked against the method's struct
    once the method is known."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    method: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    params: dict[str, object] = msgspec.field(default_factory=dict)


class ErrorBody(msgspec.Struct, frozen=True, rename="camel"):
    """A failed response's ``error``; ``retryAfterMs`` only when the gateway knows when."""

    code: str = "error"
    message: str = ""
    retryable: bool = False
    #: Left out (``UNSET``) when unknown; a ``null`` is read as unknown too.
    retry_after_ms: float | UnsetType | None = UNSET


class ResponseFrame(msgspec.Struct, frozen=True, tag="res", tag_field="type"):
    """A response: ``payload`` when ``ok``, else ``error``."""

    id: str | None
    ok: bool
    payload: dict[str, object] | None = None
    error: ErrorBody | None = None

    def unwrap(self) -> dict[str, object]:
        """The payload, or the error raised as :class:`ControlPlaneError`."""
        if self.ok:
            return self.payload if self.payload is not None else {}
        error = self.error if self.error is not None else ErrorBody()
        retry_ms = error.retry_after_ms if isinstance(error.retry_after_ms, float | int) else None
        raise ControlPlaneError(
            error.message or f"the gateway answered {error.code}",
            code=error.code,
            retryable=error.retryable,
            retry_after_ms=None if retry_ms is None else round(retry_ms),
        )


class EventFrame(msgspec.Struct, frozen=True, tag="event", tag_field="type"):
    event: str
    payload: dict[str, object] = msgspec.field(default_factory=dict)
    seq: Annotated[int, msgspec.Meta(ge=1)] | None = None


#: What the gateway sends.
Frame = ResponseFrame | EventFrame

_request_decoder = msgspec.json.Decoder(RequestFrame)
_frame_decoder: msgspec.json.Decoder[Frame] = msgspec.json.Decoder(Frame)


class _Id(msgspec.Struct):
    id: object = None


def parse_request(text: str | bytes) -> RequestFrame:
    """A frame a client sent; :class:`FrameError` if it is not a request."""
    try:
        return _request_decoder.decode(text)
    except DECODE_ERRORS as exc:
        fault = decode_fault(exc, text)
        if fault in (DecodeFault.ENCODING, DecodeFault.DEPTH):
            # Nothing in such a frame can be trusted, its id included.
            raise FrameError(f"not a request frame: {fault.value}") from exc
        raise FrameError(f"not a request frame: {exc}", request_id=_readable_id(text)) from exc


def _readable_id(text: str | bytes) -> str | None:
    """The frame's ``id`` when it is a string that can be read, to address the error to it."""
    try:
        candidate = msgspec.json.decode(text, type=_Id).id
    except DECODE_ERRORS:
        return None
    return candidate if isinstance(candidate, str) else None


def parse_frame(message: str | bytes) -> Frame:
    """A frame the gateway sent; :class:`ControlPlaneError` (``bad_frame``) if it is none."""
    if isinstance(message, bytes):
        raise ControlPlaneError("the gateway sent a binary frame", code="bad_frame")
    try:
        return _frame_decoder.decode(message)
    except msgspec.DecodeError as exc:
        raise ControlPlaneError(
            f"the gateway sent a frame that is not a response or an event: {exc}",
            code="bad_frame",
        ) from exc


_T = TypeVar("_T")


def read_payload(payload: Mapping[str, object], kind: type[_T]) -> _T:
    """A response's payload as ``kind`` (the method's result struct); :class:`ControlPlaneError`
    (``bad_frame``) if it is not one."""
    try:
        return msgspec.convert(payload, kind)
    except msgspec.ValidationError as exc:
        raise ControlPlaneError(
            f"the gateway sent a payload that is not a {kind.__name__}: {exc}", code="bad_frame"
        ) from exc


def encode_request(
    request_id: str, method: str, params: msgspec.Struct | Mapping[str, object] | None
) -> str:
    """A request frame; ``params`` left out when ``None``."""
    frame: dict[str, object] = {"type": "req", "id": request_id, "method": method}
    if params is not None:
        frame["params"] = params
    return _encode(frame).decode()


def encode_response(request_id: str, payload: object) -> str:
    return _encode({"type": "res", "id": request_id, "ok": True, "payload": payload}).decode()


def encode_error_response(
    request_id: str | None,
    *,
    code: str,
    message: str,
    retryable: bool = False,
    retry_after_ms: int | None = None,
) -> str:
    error = ErrorBody(
        code=code,
        message=message,
        retryable=retryable,
        retry_after_ms=UNSET if retry_after_ms is None else retry_after_ms,
    )
    return _encode({"type": "res", "id": request_id, "ok": False, "error": error}).decode()


def encode_event(event: str, payload: object, seq: int) -> str:
    return _encode({"type": "event", "event": event, "payload": payload, "seq": seq}).decode()


# -- close codes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Closing:
    """A way a connection ends: the WebSocket close code, the name a client reports it by
    (the error ``code``), what it means, and the close reason the gateway sends with it."""

    code: int
    name: str
    meaning: str
    #: The close frame's reason, when the gateway sends another text than ``name``.
    reason: str | None = None

    @property
    def sent_reason(self) -> str:
        return self.name if self.reason is None else self.reason


AUTH_FAILED = Closing(4001, "auth_failed", "wrong or missing credentials")
CREDENTIALS_CHANGED = Closing(
    4001, "credentials_changed", "a reload changed the gateway's credential"
)
HANDSHAKE_TIMEOUT = Closing(4002, "handshake_timeout", "no connect request in time")
PROTOCOL_MISMATCH = Closing(4003, "protocol_mismatch", "no protocol version in common")
CONNECT_REQUIRED = Closing(4004, "connect_required", "the first request was not connect")
SLOW_CONSUMER = Closing(
    4008, "slow_consumer", "the client read too slowly and its queue overflowed"
)
FRAME_TOO_LARGE = Closing(1009, "frame_too_large", "a frame was larger than the gateway allows")
BINARY_FRAME = Closing(
    1003,
    "bad_frame",
    "the gateway refused a binary frame",
    reason="binary frames are not supported",
)
BAD_FRAME = Closing(1007, "bad_frame", "the gateway could not read a frame")

#: The closes the gateway chooses (docs/control-protocol.md lists each).
GATEWAY_CLOSINGS: tuple[Closing, ...] = (
    AUTH_FAILED,
    CREDENTIALS_CHANGED,
    HANDSHAKE_TIMEOUT,
    PROTOCOL_MISMATCH,
    CONNECT_REQUIRED,
    SLOW_CONSUMER,
    FRAME_TOO_LARGE,
    BINARY_FRAME,
    BAD_FRAME,
)

CONNECTION_CLOSED = Closing(1000, "connection_closed", "the connection was closed")
CONNECTION_LOST = Closing(1006, "connection_lost", "the connection was lost without a close frame")

#: Closes a client may see that the gateway does not choose (WebSocket's own).
PEER_CLOSINGS: tuple[Closing, ...] = (
    CONNECTION_CLOSED,
    Closing(1001, "gateway_going_away", "the gateway is shutting down"),
    CONNECTION_LOST,
    Closing(1011, "server_error", "the gateway hit an internal error"),
)


def closing_for_code(code: int) -> Closing | None:
    """What close ``code`` means, by the code alone (the first of the table's entries)."""
    for closing in PEER_CLOSINGS + GATEWAY_CLOSINGS:
        if closing.code == code:
            return closing
    return None


# -- errors ----------------------------------------------------------------------------------

#: The error codes the control protocol itself answers with; the others a response may carry
#: are those of the HTTP API (``session_busy``, ``gateway_overloaded``, ...).
ERROR_CODES: tuple[str, ...] = (
    "bad_frame",
    "connect_required",
    "protocol_mismatch",
    "auth_failed",
    "invalid_params",
    "unknown_method",
    "not_found",
    "invalid_config",
    "reload_only",
)


# -- method params ---------------------------------------------------------------------------


class _Params(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, rename="camel"
):
    pass


class NoParams(msgspec.Struct, frozen=True):
    """The params of a method that takes none (any that are sent are ignored)."""


class ClientInfo(msgspec.Struct, frozen=True):
    name: str = "unknown"
    version: str = ""


class ClientAuth(msgspec.Struct, frozen=True, omit_defaults=True):
    token: str | None = None
    password: str | None = None


class ConnectParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    min_protocol: int = PROTOCOL_VERSION
    max_protocol: int = PROTOCOL_VERSION
    client: ClientInfo = msgspec.field(default_factory=ClientInfo)
    auth: ClientAuth = msgspec.field(default_factory=ClientAuth)


class AgentParams(_Params, frozen=True):
    message: Annotated[str, msgspec.Meta(min_length=1)]
    agent_id: str | None = None
    session_key: str | None = None
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    detached: bool = False


class RunIdParams(_Params, frozen=True):
    run_id: str


class AbortParams(_Params, frozen=True):
    """By ``runId`` or by ``sessionKey``."""

    run_id: str | None = None
    session_key: str | None = None


class SessionsListParams(_Params, frozen=True):
    agent_id: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class SessionKeyParams(_Params, frozen=True):
    key: str


# -- method results --------------------------------------------------------------------------


class _Result(msgspec.Struct, frozen=True, rename="camel"):
    pass


class ProtocolRange(msgspec.Struct, frozen=True):
    min: int = PROTOCOL_VERSION
    max: int = PROTOCOL_VERSION


class ServerInfo(_Result, frozen=True):
    name: str
    version: str


class Limits(_Result, frozen=True):
    max_frame_bytes: int
    tick_seconds: float


class ConnectResult(_Result, frozen=True):
    """The reply to ``connect``: what the gateway offers."""

    protocol: int
    server: ServerInfo
    methods: list[str]
    events: list[str]
    limits: Limits


class HealthResult(_Result, frozen=True):
    ok: bool
    uptime_seconds: float


class RunInfo(_Result, frozen=True):
    """A run in progress, as ``status`` lists it."""

    run_id: str
    agent_id: str
    session_key: str
    source: str
    started_at: float
    age_seconds: float
    text_chars: int
    #: Text deltas received so far: pieces of text as the upstream sent them, not tokens;
    #: ``None`` for a run of another instance (which reports its text at each heartbeat).
    deltas: int | None
    #: The gateway instance the run is on (``gateway.instanceId``).
    instance_id: str = ""
    #: ``running``, or ``waiting`` (for its session's lane or a cluster run slot).
    state: str = "running"


class AdmissionInfo(_Result, frozen=True):
    running: int
    queued: int
    busy_sessions: int
    waiting_for_session: int


class StatusResult(_Result, frozen=True):
    uptime_seconds: float
    runs: list[RunInfo]
    admission: AdmissionInfo
    #: The instance that answered (``gateway.instanceId``).
    instance_id: str = ""


class AgentInfo(_Result, frozen=True):
    id: str
    name: str
    model: str
    default: bool


class AgentsListResult(_Result, frozen=True):
    agents: list[AgentInfo]


class ModelInfo(_Result, frozen=True):
    id: str


class ModelsListResult(_Result, frozen=True):
    models: list[ModelInfo]


class AgentAccepted(_Result, frozen=True):
    """The first response to ``agent``: the run started (or, for a retry, was found)."""

    status: Literal["accepted"]
    run_id: str


class Usage(_Result, frozen=True):
    prompt_tokens: int
    completion_tokens: int


class ErrorInfo(_Result, frozen=True):
    code: str | None = None
    message: str = ""


class ToolCallInfo(_Result, frozen=True):
    id: str
    name: str
    arguments: str


class RunResult(_Result, frozen=True, omit_defaults=True):
    """A run's final result: the second response to ``agent``, and ``agent.wait``'s answer.
    ``textDropped``, ``error`` and ``toolCalls`` are sent only when they say something."""

    run_id: str
    status: str
    text: str
    stop_reason: str | None
    usage: Usage
    text_dropped: bool = False
    error: ErrorInfo | None = None
    tool_calls: list[ToolCallInfo] = msgspec.field(default_factory=list)


class RunOutcome(_Result, frozen=True):
    """How a run ended: the part of a :class:`RunResult` that a reader deciding on success or
    failure needs, read from a result that may carry no more than that."""

    status: str
    error: ErrorInfo | None = None


class AbortResult(_Result, frozen=True):
    aborted: list[str]


class SessionSummary(_Result, frozen=True):
    key: str
    agent_id: str
    created_at: float
    updated_at: float
    model: str
    last_status: str
    last_run_id: str
    message_count: int
    prompt_tokens: int
    completion_tokens: int


class SessionsListResult(_Result, frozen=True):
    sessions: list[SessionSummary]


class TranscriptEntry(_Result, frozen=True, omit_defaults=True):
    """One message of a transcript; ``toolCalls`` and ``toolCallId`` only when set."""

    role: str
    content: str
    status: str
    internal: bool
    tool_calls: list[ToolCallInfo] = msgspec.field(default_factory=list)
    tool_call_id: str | None = None


class SessionDetail(SessionSummary, frozen=True):
    """``sessions.get``: the session and its transcript."""

    transcript: list[TranscriptEntry]


class ResetResult(_Result, frozen=True):
    reset: bool


class DeleteResult(_Result, frozen=True):
    deleted: bool


class ReloadResult(_Result, frozen=True):
    reloaded: bool
    source: str
    warnings: list[str]
    #: Dotted config keys whose new value only a restart applies.
    restart_required: list[str]


# -- the method table ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Method:
    """A method: its name, its params struct, and the type of its result payload."""

    name: str
    params: type[msgspec.Struct]
    #: A type msgspec can convert a payload to (a struct, or ``dict[str, object]``).
    result: object


#: Every method, ``connect`` first (the handshake's; it is not offered afterwards).
METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("connect", ConnectParams, ConnectResult),
        Method("health", NoParams, HealthResult),
        Method("status", NoParams, StatusResult),
        Method("agents.list", NoParams, AgentsListResult),
        Method("models.list", NoParams, ModelsListResult),
        # ``agent`` answers twice: AgentAccepted, then the run's RunResult.
        Method("agent", AgentParams, RunResult),
        Method("agent.wait", RunIdParams, RunResult),
        Method("agent.abort", AbortParams, AbortResult),
        Method("sessions.list", SessionsListParams, SessionsListResult),
        Method("sessions.get", SessionKeyParams, SessionDetail),
        Method("sessions.reset", SessionKeyParams, ResetResult),
        Method("sessions.delete", SessionKeyParams, DeleteResult),
        # The effective config, secrets redacted: its shape is the config schema's.
        Method("config.get", NoParams, dict[str, object]),
        Method("config.reload", NoParams, ReloadResult),
    )
}

#: The methods the ``connect`` reply offers.
ADVERTISED_METHODS: tuple[str, ...] = tuple(name for name in METHODS if name != "connect")
#: What a connection authenticated with the config file's new credential (not loaded yet) may
#: call: enough to load it.
RELOAD_ONLY_METHODS: tuple[str, ...] = ("health", "config.reload")


# -- events ----------------------------------------------------------------------------------

EVENTS: tuple[str, ...] = ("connect.challenge", "tick", "agent")


class ChallengePayload(msgspec.Struct, frozen=True):
    """``connect.challenge``, the first frame the gateway sends."""

    nonce: str = ""
    protocol: ProtocolRange = msgspec.field(default_factory=ProtocolRange)


class TickPayload(msgspec.Struct, frozen=True):
    #: Unix time, in milliseconds.
    ts: int


class DeltaData(msgspec.Struct, frozen=True):
    """The ``assistant`` and ``reasoning`` streams' data."""

    delta: str


class ToolStartData(msgspec.Struct, frozen=True, tag="start", tag_field="phase", rename="camel"):
    call_id: str
    name: str
    arguments: str


class ToolResultData(msgspec.Struct, frozen=True, tag="result", tag_field="phase", rename="camel"):
    call_id: str
    name: str
    ok: bool
    #: What went back to the model (the tool's output, or its error message).
    result: str


class LifecycleStartData(
    msgspec.Struct, frozen=True, tag="start", tag_field="phase", rename="camel"
):
    agent_id: str
    session_key: str
    model: str


class LifecycleEndData(msgspec.Struct, frozen=True, tag="end", tag_field="phase", rename="camel"):
    stop_reason: str
    usage: Usage


class LifecycleErrorData(msgspec.Struct, frozen=True, tag="error", tag_field="phase"):
    error: ErrorInfo


#: The data of each stream of an ``agent`` event, as a type to convert ``data`` to.
AGENT_EVENT_DATA: dict[str, object] = {
    "lifecycle": LifecycleStartData | LifecycleEndData | LifecycleErrorData,
    "assistant": DeltaData,
    "reasoning": DeltaData,
    "tool": ToolStartData | ToolResultData,
}


class AgentEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """An ``agent`` event's payload: one event of a run; ``seq`` numbers the run's events.
    ``data`` is one of the stream's structs (:data:`AGENT_EVENT_DATA`); read as JSON, convert it
    with the type the table gives for its stream. The gateway always sends ``runId`` and
    ``seq``; a reader that only renders the event may be given it without them."""

    run_id: str = ""
    seq: int = 0
    stream: str
    data: object


class _AgentEventHead(msgspec.Struct, frozen=True, rename="camel"):
    run_id: str


def run_id_of(event: EventFrame) -> str | None:
    """The ``runId`` of an ``agent`` event, if it has one."""
    try:
        return msgspec.convert(event.payload, _AgentEventHead).run_id
    except msgspec.ValidationError:
        return None
