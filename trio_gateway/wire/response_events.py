"""Encoding Responses API answers: the ``response`` object and its typed stream events.

:class:`ResponseEvents` is fed what an agent run produces, as plain values (a text piece, a
reasoning piece, a piece of a client tool call, then how the run ended) and keeps the output
items it makes of them: a ``reasoning`` item, a ``message`` with one ``output_text`` part, a
``function_call`` per client tool call, in the order they began. With ``stream=True`` every call
also returns the SSE events it causes, already framed (``event: <type>`` and ``data: {...}``),
each with its ``sequence_number``, strictly increasing from 0:

- ``response.created`` and ``response.in_progress`` (:meth:`ResponseEvents.start`);
- for each item: ``response.output_item.added``, then for a message
  ``response.content_part.added``, ``response.output_text.delta``\\ s, ``.output_text.done`` and
  ``.content_part.done``; for reasoning ``response.reasoning_text.delta``\\ s and ``.done``;
  for a function call ``response.function_call_arguments.delta``\\ s and ``.done``; then
  ``response.output_item.done``. An item is done when another kind of item begins or the run
  ends;
- one ending: ``response.completed``, ``response.incomplete`` (the model stopped at its token
  limit or a content filter), or for a failed run an ``error`` event then ``response.failed``;
  a cancelled run ends with ``response.failed`` whose response has the status ``cancelled``
  (the API has no event of its own for it). Every ending carries the usage so far.

With ``on_event`` each event is also handed over one by one, with its sequence number, as it is
made (a stored response's event log). Without streaming the same calls only collect, and
:meth:`ResponseEvents.response` renders the final object. A text delta is rendered between two
byte strings built when its message began, with only the delta text and the sequence number
encoded per token (as the chat chunk encoder does). Sans-IO: imports msgspec and ``errors`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec

from ..errors import GatewayError, UpstreamError

__all__ = [
    "FunctionCallOutput",
    "OutputMessage",
    "ReasoningOutput",
    "ResponseEvents",
    "ResponseMeta",
    "ResponseStatus",
    "Usage",
    "lost_response",
    "response_id",
]

_encode = msgspec.json.encode

ResponseStatus = Literal["completed", "incomplete", "failed", "cancelled", "in_progress", "queued"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


def response_id(run_id: str) -> str:
    """The response id of a run (``resp_`` and the run id's own part, so logs match)."""
    return "resp_" + run_id.rpartition("-")[2]


class FunctionToolOut(msgspec.Struct, frozen=True, tag="function", tag_field="type"):
    """A function tool as the response echoes it."""

    name: str
    description: str | None
    parameters: dict[str, object] | None
    strict: bool | None


class ToolChoiceFunctionOut(msgspec.Struct, frozen=True, tag="function", tag_field="type"):
    name: str


class ResponseMeta(msgspec.Struct, frozen=True, kw_only=True):
    """What stays the same in every rendering of one response: its id and the request echoed."""

    id: str
    created_at: int
    model: str
    instructions: str | None = None
    tools: list[FunctionToolOut] = msgspec.field(default_factory=list)
    tool_choice: str | ToolChoiceFunctionOut = "auto"
    parallel_tool_calls: bool = True
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    user: str | None = None
    store: bool = True
    background: bool = False
    previous_response_id: str | None = None


class OutputText(msgspec.Struct, frozen=True, tag="output_text", tag_field="type"):
    text: str
    annotations: list[object] = msgspec.field(default_factory=list)
    logprobs: list[object] = msgspec.field(default_factory=list)


class ReasoningText(msgspec.Struct, frozen=True, tag="reasoning_text", tag_field="type"):
    text: str


class OutputMessage(msgspec.Struct, frozen=True, tag="message", tag_field="type"):
    id: str
    status: ItemStatus
    content: list[OutputText]
    role: str = "assistant"


class ReasoningOutput(msgspec.Struct, frozen=True, tag="reasoning", tag_field="type"):
    id: str
    status: ItemStatus
    content: list[ReasoningText]
    summary: list[object] = msgspec.field(default_factory=list)


class FunctionCallOutput(msgspec.Struct, frozen=True, tag="function_call", tag_field="type"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


OutputItem = OutputMessage | ReasoningOutput | FunctionCallOutput


class _InputTokensDetails(msgspec.Struct, frozen=True):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class _OutputTokensDetails(msgspec.Struct, frozen=True):
    reasoning_tokens: int = 0


class Usage(msgspec.Struct, frozen=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: _InputTokensDetails = _InputTokensDetails()
    output_tokens_details: _OutputTokensDetails = _OutputTokensDetails()

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int) -> Usage:
        return cls(input_tokens, output_tokens, input_tokens + output_tokens)


class ResponseError(msgspec.Struct, frozen=True):
    """``response.error``. OpenAI's ``code`` is one of a fixed set (``server_error``,
    ``rate_limit_exceeded``, ...); the gateway's own code is in the ``error`` event."""

    code: str
    message: str
    type: str | None = None
    param: str | None = None


class IncompleteDetails(msgspec.Struct, frozen=True):
    reason: str


class _Response(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "response"
    created_at: int
    status: ResponseStatus
    completed_at: int | None
    model: str
    output: list[OutputItem]
    usage: Usage | None
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    tools: list[FunctionToolOut]
    tool_choice: str | ToolChoiceFunctionOut
    parallel_tool_calls: bool
    max_output_tokens: int | None
    temperature: float | None
    top_p: float | None
    metadata: dict[str, str]
    user: str | None
    store: bool
    background: bool = False
    previous_response_id: str | None = None
    text: dict[str, dict[str, str]] = msgspec.field(
        default_factory=lambda: {"format": {"type": "text"}}
    )
    truncation: str = "disabled"


def _frame(kind: bytes, payload: bytes) -> bytes:
    return b"event: " + kind + b"\ndata: " + payload + b"\n\n"


#: What a finish reason makes of a response: its status and, if incomplete, why.
_ENDINGS: dict[str, tuple[ResponseStatus, str | None]] = {
    "stop": ("completed", None),
    "tool_calls": ("completed", None),
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
}


class _Item:
    """An output item being built: its index, kind, id and what it has received so far."""

    __slots__ = ("call_id", "id", "index", "kind", "name", "parts")

    def __init__(self, index: int, kind: str, item_id: str) -> None:
        self.index = index
        self.kind = kind  # "message" | "reasoning" | "function_call"
        self.id = item_id
        self.parts: list[str] = []
        self.call_id = ""
        self.name = ""

    def output(self, status: ItemStatus, *, added: bool = False) -> OutputItem:
        """The item as rendered; ``added``: as first announced (a message or reasoning item
        without content parts yet: its part is added by an event of its own)."""
        text = "".join(self.parts)
        if self.kind == "message":
            return OutputMessage(self.id, status, [] if added else [OutputText(text)])
        if self.kind == "reasoning":
            return ReasoningOutput(self.id, status, [] if added else [ReasoningText(text)])
        return FunctionCallOutput(self.id, self.call_id, self.name, text, status)


class ResponseEvents:
    """The output items of one response and, when streaming, its events (see the module doc).

    Feed it :meth:`start` once, then :meth:`text`, :meth:`reasoning` and :meth:`tool_call` as
    the run produces them, then one of :meth:`finish`, :meth:`fail` or :meth:`cancel`. Each
    returns the framed SSE events it caused (``b""`` when not streaming).
    """

    def __init__(
        self,
        meta: ResponseMeta,
        *,
        stream: bool,
        on_event: Callable[[int, bytes], None] | None = None,
    ) -> None:
        self.meta = meta
        self.stream = stream
        self._on_event = on_event
        self.sequence_number = 0
        self._items: list[_Item] = []
        #: The item that text, reasoning and argument pieces go to now.
        self._open: _Item | None = None
        #: Function call items by the run's tool call index.
        self._calls: dict[int, _Item] = {}
        self._done: set[int] = set()
        #: The finished rendering of each item that is done, by output index.
        self._outputs: dict[int, OutputItem] = {}
        self._status: ResponseStatus = "in_progress"
        self._usage: Usage | None = None
        self._error: ResponseError | None = None
        self._incomplete: IncompleteDetails | None = None
        self._completed_at: int | None = None
        self._id_stem = meta.id.removeprefix("resp_")
        #: The prebuilt bytes around a text delta of the open message: head, then tail.
        self._delta_head = b""
        self._delta_mid = b',"logprobs":[],"sequence_number":'

    @property
    def status(self) -> ResponseStatus:
        return self._status

    # --- events ----------------------------------------------------------------------------

    def _event(self, kind: str, fields: dict[str, object]) -> bytes:
        fields["type"] = kind
        number = fields["sequence_number"] = self.sequence_number
        self.sequence_number = number + 1
        framed = _frame(kind.encode(), _encode(fields))
        if self._on_event is not None:
            self._on_event(number, framed)
        return framed

    def start(self) -> bytes:
        """``response.created`` and ``response.in_progress``."""
        if not self.stream:
            return b""
        created = self._event("response.created", {"response": self._snapshot()})
        return created + self._event("response.in_progress", {"response": self._snapshot()})

    def text(self, delta: str) -> bytes:
        """A piece of the answer's text."""
        item = self._open
        out = b""
        if item is None or item.kind != "message":
            out, item = self._begin("message", "msg")
        item.parts.append(delta)
        if not self.stream:
            return out
        number = self.sequence_number
        self.sequence_number = number + 1
        framed = (
            self._delta_head + _encode(delta) + self._delta_mid + str(number).encode() + b"}\n\n"
        )
        if self._on_event is not None:
            self._on_event(number, framed)
        return out + framed

    def reasoning(self, delta: str) -> bytes:
        """A piece of the model's reasoning."""
        item = self._open
        out = b""
        if item is None or item.kind != "reasoning":
            out, item = self._begin("reasoning", "rs")
        item.parts.append(delta)
        if not self.stream:
            return out
        return out + self._event(
            "response.reasoning_text.delta",
            {"item_id": item.id, "output_index": item.index, "content_index": 0, "delta": delta},
        )

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        """A piece of client tool call ``index``; its first piece carries its id and name."""
        item = self._calls.get(index)
        out = b""
        if item is None:
            out, item = self._begin("function_call", "fc", call_id=call_id or "", name=name or "")
            self._calls[index] = item
        if not arguments:
            return out
        item.parts.append(arguments)
        if not self.stream:
            return out
        return out + self._event(
            "response.function_call_arguments.delta",
            {"item_id": item.id, "output_index": item.index, "delta": arguments},
        )

    def finish(self, finish_reason: str, usage: Usage, *, completed_at: int | None = None) -> bytes:
        """The run ended normally: ``response.completed`` or ``response.incomplete``."""
        status, reason = _ENDINGS.get(finish_reason, ("completed", None))
        item_status: ItemStatus = "completed" if status == "completed" else "incomplete"
        out = self._close_all(item_status)
        self._status, self._usage = status, usage
        if reason is not None:
            self._incomplete = IncompleteDetails(reason)
        else:
            self._completed_at = completed_at
        if not self.stream:
            return out
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, {"response": self._snapshot()})

    def fail(self, error: GatewayError, usage: Usage | None) -> bytes:
        """The run failed: an ``error`` event with the gateway's code, then ``response.failed``."""
        out = self._close_all("incomplete")
        self._status, self._usage = "failed", usage
        self._error = ResponseError(
            _openai_code(error), error.message, type=error.error_type, param=error.param
        )
        if not self.stream:
            return out
        out += self._event(
            "error", {"code": error.code, "message": error.message, "param": error.param}
        )
        return out + self._event("response.failed", {"response": self._snapshot()})

    def cancel(self, usage: Usage | None) -> bytes:
        """The run was cancelled (``agent.abort``): ``response.failed``, status ``cancelled``."""
        out = self._close_all("incomplete")
        self._status, self._usage = "cancelled", usage
        if not self.stream:
            return out
        return out + self._event("response.failed", {"response": self._snapshot()})

    # --- the object ------------------------------------------------------------------------

    def response(self) -> bytes:
        """The whole ``response`` object as it stands (the non-streaming answer)."""
        return _encode(self._snapshot())

    def _snapshot(self) -> _Response:
        meta = self.meta
        return _Response(
            id=meta.id,
            created_at=meta.created_at,
            status=self._status,
            completed_at=self._completed_at,
            model=meta.model,
            output=self._final_output(),
            usage=self._usage,
            error=self._error,
            incomplete_details=self._incomplete,
            instructions=meta.instructions,
            tools=meta.tools,
            tool_choice=meta.tool_choice,
            parallel_tool_calls=meta.parallel_tool_calls,
            max_output_tokens=meta.max_output_tokens,
            temperature=meta.temperature,
            top_p=meta.top_p,
            metadata=meta.metadata,
            user=meta.user,
            store=meta.store,
            background=meta.background,
            previous_response_id=meta.previous_response_id,
        )

    def _final_output(self) -> list[OutputItem]:
        """The output items so far (an item not done yet shows as ``in_progress``)."""
        return [self._outputs.get(item.index) or item.output("in_progress") for item in self._items]

    # --- items -----------------------------------------------------------------------------

    def _begin(
        self, kind: str, prefix: str, *, call_id: str = "", name: str = ""
    ) -> tuple[bytes, _Item]:
        out = b""
        if self._open is not None and self._open.kind != "function_call":
            out = self._close(self._open, "completed")
        index = len(self._items)
        item = _Item(index, kind, f"{prefix}_{self._id_stem}_{index}")
        item.call_id, item.name = call_id, name
        self._items.append(item)
        self._open = item
        if not self.stream:
            return out, item
        out += self._event(
            "response.output_item.added",
            {"output_index": index, "item": _plain(item.output("in_progress", added=True))},
        )
        if kind == "message":
            out += self._event(
                "response.content_part.added",
                {
                    "item_id": item.id,
                    "output_index": index,
                    "content_index": 0,
                    "part": _plain(OutputText("")),
                },
            )
            self._delta_head = (
                b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                b'"item_id":'
                + _encode(item.id)
                + b',"output_index":'
                + str(index).encode()
                + b',"content_index":0,"delta":'
            )
        elif kind == "reasoning":
            out += self._event(
                "response.content_part.added",
                {
                    "item_id": item.id,
                    "output_index": index,
                    "content_index": 0,
                    "part": _plain(ReasoningText("")),
                },
            )
        return out, item

    def _close_all(self, status: ItemStatus) -> bytes:
        out = b""
        for item in self._items:
            if item.index not in self._done:
                out += self._close(item, status)
        self._open = None
        return out

    def _close(self, item: _Item, status: ItemStatus) -> bytes:
        self._done.add(item.index)
        finished = item.output(status)
        self._outputs[item.index] = finished
        if self._open is item:
            self._open = None
        if not self.stream:
            return b""
        text = "".join(item.parts)
        common: dict[str, object] = {"item_id": item.id, "output_index": item.index}
        out = b""
        if item.kind == "message":
            out += self._event(
                "response.output_text.done",
                {**common, "content_index": 0, "text": text, "logprobs": []},
            )
            out += self._event(
                "response.content_part.done",
                {**common, "content_index": 0, "part": _plain(OutputText(text))},
            )
        elif item.kind == "reasoning":
            out += self._event(
                "response.reasoning_text.done", {**common, "content_index": 0, "text": text}
            )
            out += self._event(
                "response.content_part.done",
                {**common, "content_index": 0, "part": _plain(ReasoningText(text))},
            )
        else:
            out += self._event(
                "response.function_call_arguments.done", {**common, "arguments": text}
            )
        return out + self._event(
            "response.output_item.done", {"output_index": item.index, "item": _plain(finished)}
        )


def _plain(value: msgspec.Struct) -> object:
    """A struct as builtins, to be encoded inside an event's fields."""
    return msgspec.to_builtins(value)


def _openai_code(error: GatewayError) -> str:
    """The OpenAI ``response.error.code`` closest to ``error`` (the API allows only a few)."""
    if error.http_status == 429 or (isinstance(error, UpstreamError) and error.status == 429):
        return "rate_limit_exceeded"
    return "server_error"


def lost_response(body: bytes, message: str) -> bytes:
    """A stored response object (``body``) whose run was lost, as ``failed`` with ``message``
    (``response.error.code`` ``server_error``); a body that does not decode becomes a bare
    failed object."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        decoded = None
    response: dict[str, object] = decoded if isinstance(decoded, dict) else {"object": "response"}
    response["status"] = "failed"
    response["error"] = {"code": "server_error", "message": message}
    return _encode(response)
