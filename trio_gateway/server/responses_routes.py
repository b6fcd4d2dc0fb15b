"""The Responses routes: ``POST /v1/responses`` on the same agent path as chat completions, and
the stored responses (``GET``, ``?stream=true&starting_after=N``, ``/cancel``, ``DELETE``,
``/input_items``). Thin: check, parse, hand over to the agent runtime, encode.

They exist only while ``gateway.http.endpoints.responses.enabled`` is true and need the bearer
credential. Agent selection (``model: "epiloop:<id>"``, the ``x-epiloop-agent-id`` header) and
the session headers are those of chat completions; a stored response is found only for the
agent the request names (the header, else the default agent). Everything that can fail is
checked before the first byte of the answer, so those failures are real HTTP errors; a
streamed run that fails later ends with an ``error`` event and ``response.failed``.

With ``store`` (the default) the run's events are rendered as they come into the run's log
(:mod:`~trio_gateway.server.response_log`), and the client that started it reads that log like
any later reader. A ``background`` run lives in the runtime's background nursery: the answer
comes at once and the run goes on without its client (bounded by the agent's run deadline). A
stored response without a session header runs in a recorded session of its own, which
``previous_response_id`` continues right after that response's turn. With ``store: false`` the
run streams as in chat completions and nothing is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
import trio
from quart import Response, request
from quart_trio import QuartTrio

from ..agent import AdmittedRun, AgentRuntime, RunEvent, RunFailed, RunFinished, RunRequest
from ..agent.routing import named_agent
from ..errors import (
    EndpointDisabledError,
    GatewayError,
    InvalidRequestError,
    ResponseNotFoundError,
    RunAbortedError,
    RunLostError,
)
from ..providers.base import ReasoningDelta, TextDelta, TokenUsage, ToolCallDelta
from ..sessions.store import UNFINISHED, StoredResponse, StoredResponseStatus
from ..wire.images import image_limits
from ..wire.response_events import (
    FunctionToolOut,
    ResponseEvents,
    ResponseMeta,
    ToolChoiceFunctionOut,
    Usage,
    response_id,
)
from ..wire.responses import (
    ResponsesRequest,
    chat_tool_choice,
    check_limits,
    input_items,
    parse_responses_request,
    to_messages,
    to_tool_specs,
)
from .app_state import authorize, request_cleanups
from .response_log import LiveLog, ResponseLogs
from .resumable import LoggedRunBody, find_stored, reader_body, sse_response
from .streaming import KeepAliveClock, RunStreamBody

__all__ = ["ResponsesRenderer", "register_responses_routes", "run_request"]

logger = logging.getLogger(__name__)

_STOPPED = "The gateway stopped before the run ended."
_START_POLL_SECONDS = 0.005

#: How long cancelling (or deleting) a response waits for its run to end before answering.
CANCEL_WAIT_SECONDS = 5.0

_ENABLE_KEY = "gateway.http.endpoints.responses.enabled"
_DISABLED = (
    "The OpenAI-compatible Responses endpoint (POST /v1/responses) is disabled. "
    f"Enable it with {_ENABLE_KEY}: true in the gateway config."
)
_SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def run_request(
    parsed: ResponsesRequest,
    *,
    header_agent_id: str | None,
    header_session_key: str | None,
    previous: StoredResponse | None = None,
) -> RunRequest:
    """A Responses request and the gateway's headers, in the runtime's terms. A stored
    response runs in a recorded session (its own, without a session header); ``previous``
    continues the session of that response, right after its turn."""
    agent_id, agent_param = named_agent(header_agent_id=header_agent_id, model=parsed.model)
    session_key, continue_at = header_session_key, None
    if previous is not None:
        session_key, continue_at = previous.session_key, previous.session_position
    return RunRequest(
        messages=to_messages(parsed),
        agent_id=agent_id,
        agent_param=agent_param,
        session_key=session_key,
        default_session="own" if parsed.store else "stateless",
        continue_at=continue_at,
        source="responses",
        user=parsed.user,
        client_tools=to_tool_specs(parsed.tools),
        tool_choice=chat_tool_choice(parsed),
        max_tokens=parsed.max_output_tokens,
        temperature=parsed.temperature,
        top_p=parsed.top_p,
    )


def response_meta(parsed: ResponsesRequest, *, run_id: str, created: int) -> ResponseMeta:
    """The invariant part of the response: its id, and the request's settings echoed."""
    tool_choice: str | ToolChoiceFunctionOut = parsed.tool_choice or "auto"
    if parsed.tool_choice_function is not None:
        tool_choice = ToolChoiceFunctionOut(parsed.tool_choice_function)
    return ResponseMeta(
        id=response_id(run_id),
        created_at=created,
        model=parsed.model,
        instructions=parsed.instructions,
        tools=[
            FunctionToolOut(tool.name, tool.description, tool.parameters, tool.strict)
            for tool in parsed.tools
        ],
        tool_choice=tool_choice,
        parallel_tool_calls=parsed.parallel_tool_calls,
        max_output_tokens=parsed.max_output_tokens,
        temperature=parsed.temperature,
        top_p=parsed.top_p,
        metadata=parsed.metadata,
        user=parsed.user,
        store=parsed.store,
        background=parsed.background,
        previous_response_id=parsed.previous_response_id,
    )


def _usage(usage: TokenUsage) -> Usage:
    return Usage.of(usage.prompt_tokens, usage.completion_tokens)


class ResponsesRenderer:
    """A run's events as Responses stream events (a :class:`StreamRenderer`); with
    ``stream=False`` it only collects the output for the final object."""

    def __init__(self, events: ResponseEvents) -> None:
        self.events = events
        #: Why the run failed (not for an abort: that is a cancelled response).
        self.error: GatewayError | None = None

    def opening(self) -> bytes:
        return self.events.start()

    def text(self, text: str) -> bytes:
        return self.events.text(text)

    def reasoning(self, text: str) -> bytes:
        return self.events.reasoning(text)

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        return self.events.tool_call(index, call_id, name, arguments)

    def finished(self, finished: RunFinished) -> bytes:
        return self.events.finish(
            finished.finish_reason, _usage(finished.usage), completed_at=int(time.time())
        )

    def failed(self, failed: RunFailed) -> bytes:
        if isinstance(failed.error, RunAbortedError):
            return self.events.cancel(_usage(failed.usage))
        self.error = failed.error
        return self.events.fail(failed.error, _usage(failed.usage))

    def logged_emit(self, log: LiveLog) -> Callable[[RunEvent], Awaitable[None]]:
        """The ``emit`` of a stored run: each event rendered at once into ``log`` (which
        refuses more than its bound: the run then fails, its ending still logged)."""
        events = self.events

        async def emit(event: RunEvent) -> None:
            kind = type(event)
            if kind is TextDelta:
                assert isinstance(event, TextDelta)
                log.check_room()
                events.text(event.text)
            elif kind is ReasoningDelta:
                assert isinstance(event, ReasoningDelta)
                log.check_room()
                events.reasoning(event.text)
            elif isinstance(event, ToolCallDelta):
                log.check_room()
                events.tool_call(event.index, event.id, event.name, event.arguments)
            elif isinstance(event, RunFinished):
                self.finished(event)
            elif isinstance(event, RunFailed):
                self.failed(event)

        return emit

    async def collect(self, event: RunEvent) -> None:
        """The ``emit`` of a non-streaming run: the same items as a stream, no bytes."""
        if type(event) is TextDelta:
            self.events.text(event.text)
        elif type(event) is ReasoningDelta:
            self.events.reasoning(event.text)
        elif isinstance(event, ToolCallDelta):
            self.events.tool_call(event.index, event.id, event.name, event.arguments)
        elif isinstance(event, RunFinished):
            self.finished(event)
        elif isinstance(event, RunFailed):
            self.failed(event)


def _tool_param(error: InvalidRequestError) -> InvalidRequestError:
    """A runtime refusal of a client tool names chat's ``tools[i].function.name``; Responses
    tools are flat (``tools[i].name``)."""
    param = error.param
    if param is not None and param.startswith("tools[") and param.endswith(".function.name"):
        error.param = param.removesuffix(".function.name") + ".name"
    return error


_STORED_STATUS: dict[str, StoredResponseStatus] = {
    "queued": "queued",
    "in_progress": "in_progress",
    "completed": "completed",
    "incomplete": "incomplete",
    "failed": "failed",
    "cancelled": "cancelled",
}


async def _run_logged(
    logs: ResponseLogs,
    log: LiveLog,
    admitted: AdmittedRun,
    renderer: ResponsesRenderer,
    *,
    background: bool,
) -> None:
    """Run ``admitted`` into ``log`` until it ends. A foreground run cancelled from outside
    (its client went away) ends the response as ``cancelled``; a background one (the gateway
    is closing) as ``failed``, with the reason."""
    events = renderer.events
    position: int | None = None
    try:
        async with logs.running(log):
            try:
                with admitted:
                    result = await admitted.run(renderer.logged_emit(log))
                position = result.session_position
            finally:
                if events.status in ("in_progress", "queued"):
                    # Logged: the readers see the end.
                    if background:
                        events.fail(RunLostError(_STOPPED), None)
                    else:
                        events.cancel(None)
                log.end(
                    status=_STORED_STATUS[events.status],
                    body=events.response(),
                    session_position=position,
                )
    except Exception:
        # A bug below the runtime's own error handling: the log was ended as failed.
        logger.exception("response.run.crashed id=%s", log.id)


def _query_int(name: str, *, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequestError(
            f"Invalid value for '{name}': expected an integer from {low} to {high}.", param=name
        )
    return value


def _json(payload: object) -> Response:
    return Response(msgspec.json.encode(payload), status=200, content_type="application/json")


def register_responses_routes(
    app: QuartTrio, runtime: AgentRuntime, clock: KeepAliveClock, logs: ResponseLogs
) -> None:
    def check_enabled() -> None:
        # The config is read per request: a reload applies to the next one.
        if not runtime.config.gateway.http.endpoints.responses.enabled:
            raise EndpointDisabledError(_DISABLED)
        authorize(runtime)

    async def find(response_id: str) -> StoredResponse:
        return await find_stored(
            runtime,
            logs,
            response_id,
            kind="response",
            header_agent_id=request.headers.get("x-epiloop-agent-id"),
        )

    async def previous_of(parsed: ResponsesRequest, agent_id: str | None) -> StoredResponse | None:
        """The stored response ``previous_response_id`` names, checked."""
        previous_id = parsed.previous_response_id
        if previous_id is None:
            return None
        try:
            previous = await find_stored(
                runtime, logs, previous_id, kind="response", header_agent_id=agent_id
            )
        except ResponseNotFoundError as exc:
            exc.param = "previous_response_id"
            raise
        if previous.status in UNFINISHED:
            raise InvalidRequestError(
                f"The response {previous_id!r} is still in progress: continue it once it ended.",
                param="previous_response_id",
                code="response_in_progress",
            )
        if previous.session_key is None or previous.session_position is None:
            raise InvalidRequestError(
                f"The response {previous_id!r} has no stored conversation to continue (its run "
                "ended before its turn was stored).",
                param="previous_response_id",
            )
        header_key = request.headers.get("x-epiloop-session-key")
        if header_key is not None and header_key != previous.session_key:
            raise InvalidRequestError(
                "'previous_response_id' continues that response's session; the "
                "x-epiloop-session-key header names another one.",
                param="x-epiloop-session-key",
            )
        return previous

    @app.route("/v1/responses", methods=["POST"], provide_automatic_options=False)
    async def create_response() -> Response:
        check_enabled()
        body = await request.get_data(as_text=False)
        assert isinstance(body, bytes)
        parsed = parse_responses_request(body)
        http = runtime.config.gateway.http
        check_limits(
            parsed,
            max_messages=http.max_messages,
            max_content_chars=http.max_content_chars,
            images=image_limits(http.images),
        )
        header_agent_id = request.headers.get("x-epiloop-agent-id")
        agent_id, _ = named_agent(header_agent_id=header_agent_id, model=parsed.model)
        previous = await previous_of(parsed, agent_id)
        try:
            prepared = await runtime.prepare(
                run_request(
                    parsed,
                    header_agent_id=header_agent_id,
                    header_session_key=request.headers.get("x-epiloop-session-key"),
                    previous=previous,
                )
            )
        except InvalidRequestError as exc:
            raise _tool_param(exc) from None
        admitted = await runtime.admit(prepared)  # a 409 or 429 comes before the first byte
        meta = response_meta(parsed, run_id=prepared.run_id, created=prepared.created)
        if not parsed.store:
            return await _unstored(admitted, parsed, meta)
        log = logs.create(
            StoredResponse(
                id=meta.id,
                kind="response",
                agent_id=prepared.target.agent.id,
                run_id=prepared.run_id,
                status="in_progress",
                instance_id=logs.instance_id,
                created_at=time.time(),
                body=b"{}",
                input=msgspec.json.encode(input_items(parsed, meta.id.removeprefix("resp_"))),
                session_key=prepared.target.session_key,
            )
        )
        renderer = ResponsesRenderer(ResponseEvents(meta, stream=True, on_event=log.add))
        renderer.opening()
        log.update(status="in_progress", body=renderer.events.response())
        log.snapshot = renderer.events.response
        if parsed.background:
            try:
                await log.write()  # stored before the answer: any instance can find it now
            except BaseException:
                logs.discard(log)
                admitted.release()
                raise

        async def run() -> None:
            await _run_logged(logs, log, admitted, renderer, background=parsed.background)

        if parsed.background:
            runtime.start_background(run)
            if parsed.stream:
                return sse_response(reader_body(runtime, logs, log.record, -1))
            return Response(log.record.body, status=200, content_type="application/json")
        if parsed.stream:
            request_cleanups().append(admitted.release)
            return sse_response(LoggedRunBody(log, run))
        await run()
        result = renderer.events
        if result.status == "failed" and renderer.error is not None:
            raise renderer.error
        return Response(result.response(), status=200, content_type="application/json")

    async def _unstored(
        admitted: AdmittedRun, parsed: ResponsesRequest, meta: ResponseMeta
    ) -> Response:
        """``store: false``: the run as in phase 1, nothing kept."""
        settings = runtime.config.gateway.http
        renderer = ResponsesRenderer(ResponseEvents(meta, stream=parsed.stream))
        if parsed.stream:
            # The body releases the admission when its run ends; the app releases it after the
            # response in any case (a client gone before the body started, say).
            request_cleanups().append(admitted.release)
            stream = RunStreamBody(
                admitted,
                renderer,
                clock=clock,
                keep_alive_seconds=settings.keep_alive_seconds,
                buffer_events=settings.stream_buffer_events,
                stall_seconds=settings.stream_stall_seconds,
            )
            return sse_response(stream)
        with admitted:
            result = await admitted.run(renderer.collect)
        if result.status == "failed" and result.error is not None:
            # A failed run is an HTTP error, as for chat completions (its usage is in the
            # session); a cancelled one is a response with the status "cancelled".
            raise result.error
        return Response(renderer.events.response(), status=200, content_type="application/json")

    @app.route("/v1/responses/<response_id>", methods=["GET"], provide_automatic_options=False)
    async def get_response(response_id: str) -> Response:
        check_enabled()
        record = await find(response_id)
        if request.args.get("stream", "false").lower() == "true":
            after = _query_int("starting_after", default=-1, low=-1, high=2**31 - 1)
            return sse_response(reader_body(runtime, logs, record, after))
        live = logs.get(response_id)
        body = live.current_body() if live is not None else record.body
        return Response(body, status=200, content_type="application/json")

    async def wait_ended(record: StoredResponse) -> StoredResponse:
        """``record`` once its run ended (bounded: :data:`CANCEL_WAIT_SECONDS`)."""
        with trio.move_on_after(CANCEL_WAIT_SECONDS):
            live = logs.get(record.id)
            if live is not None:
                await live.stored.wait()
                return live.record
            while True:
                stored = await runtime.sessions.get_response(record.id)
                if stored is None or stored.status not in UNFINISHED:
                    return stored or record
                await trio.sleep(logs.settings().poll_seconds)
        return (await runtime.sessions.get_response(record.id)) or record

    async def stop(record: StoredResponse) -> StoredResponse:
        """Abort the run of ``record`` (here, or on its instance) and wait for its end."""
        if record.status not in UNFINISHED:
            return record
        with trio.move_on_after(CANCEL_WAIT_SECONDS):
            while not runtime.active_runs.abort(record.run_id):
                live = logs.get(record.id)
                if live is None:
                    if runtime.cluster is not None:  # on another instance, if anywhere
                        await runtime.cluster.request_abort(record.run_id)
                    break
                if live.ended:
                    break
                # Admitted here, its task not started yet: it is about to be.
                await trio.sleep(_START_POLL_SECONDS)
        return await wait_ended(record)

    @app.route(
        "/v1/responses/<response_id>/cancel", methods=["POST"], provide_automatic_options=False
    )
    async def cancel_response(response_id: str) -> Response:
        check_enabled()
        record = await stop(await find(response_id))
        live = logs.get(response_id)
        body = live.current_body() if live is not None else record.body
        return Response(body, status=200, content_type="application/json")

    @app.route("/v1/responses/<response_id>", methods=["DELETE"], provide_automatic_options=False)
    async def delete_response(response_id: str) -> Response:
        check_enabled()
        record = await stop(await find(response_id))
        live = logs.get(response_id)
        if live is not None:
            live.deleted = True
        await runtime.sessions.delete_response(record.id)
        return _json({"id": record.id, "object": "response.deleted", "deleted": True})

    @app.route(
        "/v1/responses/<response_id>/input_items",
        methods=["GET"],
        provide_automatic_options=False,
    )
    async def list_input_items(response_id: str) -> Response:
        check_enabled()
        record = await find(response_id)
        items: list[dict[str, object]] = msgspec.json.decode(record.input)
        order = request.args.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequestError(
                "Invalid value for 'order': expected 'asc' or 'desc'.", param="order"
            )
        limit = _query_int("limit", default=20, low=1, high=100)
        if order == "desc":
            items.reverse()
        after = request.args.get("after")
        if after is not None:
            ids = [item.get("id") for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        return _json(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )
