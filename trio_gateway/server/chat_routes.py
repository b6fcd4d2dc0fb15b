"""The chat routes: chat completions and the models list. Thin: check, parse, hand over to the
agent runtime, encode.

``POST /v1/chat/completions`` and ``GET /v1/models[/<model>]`` exist only while
``gateway.http.endpoints.chatCompletions.enabled`` is true; both need the bearer credential.
Everything that can fail is checked before the first byte of the answer, so those failures are
real HTTP errors; what fails later is reported inside the stream.

A streamed chat completion started with ``x-epiloop-resumable: true`` is a stored run: its
chunks are numbered (SSE ``id:`` lines) into an event log
(:mod:`~trio_gateway.server.response_log`), the run lives in the runtime's background nursery
and goes on when its client goes, and ``GET /v1/chat/completions/{id}/stream`` with
``Last-Event-ID`` continues it. Without that header a client that goes away cancels the run at
once, as always.
"""

from __future__ import annotations

import logging
import time

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from ..agent import (
    AdmittedRun,
    AgentRuntime,
    RunEvent,
    RunFailed,
    RunFinished,
    RunRequest,
)
from ..agent.routing import agent_id_from_model, named_agent, select_agent
from ..errors import (
    EndpointDisabledError,
    InvalidRequestError,
    ModelNotFoundError,
    RunAbortedError,
    RunLostError,
)
from ..providers.base import ReasoningDelta, TextDelta, ToolCallDelta
from ..sessions.store import StoredResponse, StoredResponseStatus
from ..wire.chat import (
    ChatRequest,
    check_limits,
    parse_chat_request,
    to_messages,
    to_tool_specs,
)
from ..wire.chunks import (
    ChunkEncoder,
    FunctionCallOut,
    ToolCallOut,
    Usage,
    encode_completion,
    server_timing,
)
from ..wire.images import image_limits
from .app_state import authorize, request_cleanups
from .response_log import LiveLog, ResponseLogs
from .resumable import find_stored, reader_body, sse_response
from .streaming import ChatRenderer, ChatStreamBody, KeepAliveClock

__all__ = ["register_chat_routes"]

logger = logging.getLogger(__name__)

_RESUMABLE_HEADER = "x-epiloop-resumable"

_ENABLE_KEY = "gateway.http.endpoints.chatCompletions.enabled"
_SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class _Model(msgspec.Struct, frozen=True):
    id: str
    created: int
    owned_by: str = "epiloop"
    object: str = "model"


class _ModelList(msgspec.Struct, frozen=True):
    data: list[_Model]
    object: str = "list"


#: What a disabled endpoint answers: the endpoint asked for, and the one key that serves it.
_CHAT_DISABLED = (
    "The OpenAI-compatible chat completions endpoint (POST /v1/chat/completions) is disabled. "
    f"Enable it with {_ENABLE_KEY}: true in the gateway config."
)
_MODELS_DISABLED = (
    "The OpenAI-compatible models endpoint (GET /v1/models) is disabled: it is served together "
    f"with chat completions. Enable both with {_ENABLE_KEY}: true in the gateway config."
)


async def _discard(event: RunEvent) -> None:
    """A non-streaming answer needs only the run's result, not its events."""


def run_request(
    chat: ChatRequest, *, header_agent_id: str | None, header_session_key: str | None
) -> RunRequest:
    """An OpenAI chat request and the gateway's headers, in the runtime's terms."""
    agent_id, agent_param = named_agent(header_agent_id=header_agent_id, model=chat.model)
    stop = chat.stop
    return RunRequest(
        messages=to_messages(chat.messages),
        agent_id=agent_id,
        agent_param=agent_param,
        session_key=header_session_key,
        user=chat.user,
        client_tools=to_tool_specs(chat.tools),
        tool_choice=chat.tool_choice,
        max_tokens=chat.token_limit,
        temperature=chat.temperature,
        top_p=chat.top_p,
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
    )


class _LoggedChat:
    """A resumable chat stream's chunks, each its own numbered SSE event in ``log``."""

    def __init__(self, log: LiveLog, renderer: ChatRenderer) -> None:
        self.log = log
        self.renderer = renderer
        self.sequence = 0
        #: The run's end was logged (a ``[DONE]`` or an error event).
        self.ended: StoredResponseStatus | None = None

    def add(self, out: bytes) -> None:
        log = self.log
        for block in out.split(b"\n\n")[:-1]:
            number = self.sequence
            self.sequence = number + 1
            log.add(number, b"id: %d\n%s\n\n" % (number, block))

    async def emit(self, event: RunEvent) -> None:
        kind = type(event)
        renderer = self.renderer
        if kind is TextDelta:
            assert isinstance(event, TextDelta)
            self.log.check_room()
            self.add(renderer.text(event.text))
        elif kind is ReasoningDelta:
            assert isinstance(event, ReasoningDelta)
            self.log.check_room()
            self.add(renderer.reasoning(event.text))
        elif isinstance(event, ToolCallDelta):
            self.log.check_room()
            self.add(renderer.tool_call(event.index, event.id, event.name, event.arguments))
        elif isinstance(event, RunFinished):
            self.add(renderer.finished(event))
            self.ended = "completed"
        elif isinstance(event, RunFailed):
            self.add(renderer.failed(event))
            aborted = isinstance(event.error, RunAbortedError)
            self.ended = "cancelled" if aborted else "failed"

    async def run(self, logs: ResponseLogs, admitted: AdmittedRun) -> None:
        """The run, in the runtime's background nursery (it outlives the request)."""
        try:
            async with logs.running(self.log):
                try:
                    with admitted:
                        await admitted.run(self.emit)
                finally:
                    if self.ended is None:  # cancelled from outside: the gateway is closing
                        self.add(
                            self.renderer.failed(
                                RunFailed(RunLostError("The gateway stopped before the run ended."))
                            )
                        )
                        self.ended = "failed"
                    self.log.end(status=self.ended)
        except Exception:
            logger.exception("chat.resumable_run.crashed id=%s", self.log.id)


def _last_event_id() -> int:
    raw = request.headers.get("Last-Event-ID")
    if raw is None or not raw.strip():
        return -1
    try:
        value = int(raw)
    except ValueError:
        value = -2
    if value < -1:
        raise InvalidRequestError(
            "Invalid 'Last-Event-ID': expected the number of the last event received.",
            param="Last-Event-ID",
        )
    return value


def register_chat_routes(
    app: QuartTrio, runtime: AgentRuntime, clock: KeepAliveClock, logs: ResponseLogs
) -> None:
    """The chat routes; ``clock`` sends the keep-alives of their streams (the app runs it);
    ``logs`` keeps the resumable ones."""
    started = int(time.time())

    # The config is read per request: a reload applies to the next one.
    def check_enabled_and_authorized(disabled_message: str) -> None:
        config = runtime.config
        if not config.gateway.http.endpoints.chat_completions.enabled:
            raise EndpointDisabledError(disabled_message)
        authorize(runtime)

    @app.route("/v1/chat/completions", methods=["POST"], provide_automatic_options=False)
    async def chat_completions() -> Response:
        check_enabled_and_authorized(_CHAT_DISABLED)
        body = await request.get_data(as_text=False)
        assert isinstance(body, bytes)
        chat = parse_chat_request(body)
        limits = runtime.config.gateway.http
        check_limits(
            chat,
            max_messages=limits.max_messages,
            max_content_chars=limits.max_content_chars,
            images=image_limits(limits.images),
        )
        prepared = await runtime.prepare(
            run_request(
                chat,
                header_agent_id=request.headers.get("x-epiloop-agent-id"),
                header_session_key=request.headers.get("x-epiloop-session-key"),
            )
        )
        queue_started = time.monotonic()
        admitted = await runtime.admit(prepared)  # a 409 or 429 comes before the first byte
        queue_seconds = time.monotonic() - queue_started
        http = runtime.config.gateway.http
        resumable = request.headers.get(_RESUMABLE_HEADER, "").strip().lower() == "true"
        if chat.stream and resumable:
            log = logs.create(
                StoredResponse(
                    id=prepared.run_id,
                    kind="chat",
                    agent_id=prepared.target.agent.id,
                    run_id=prepared.run_id,
                    status="in_progress",
                    instance_id=logs.instance_id,
                    created_at=time.time(),
                    body=b"{}",
                    session_key=prepared.target.session_key,
                )
            )
            encoder = ChunkEncoder(
                completion_id=prepared.run_id, created=prepared.created, model=chat.model
            )
            logged = _LoggedChat(
                log,
                ChatRenderer(
                    encoder, include_usage=chat.include_usage, queue_seconds=queue_seconds
                ),
            )
            logged.add(logged.renderer.opening())
            try:
                await log.write()  # stored before the first byte: any instance can find it
            except BaseException:
                logs.discard(log)
                admitted.release()
                raise

            async def run() -> None:
                await logged.run(logs, admitted)

            runtime.start_background(run)
            return sse_response(reader_body(runtime, logs, log.record, -1))
        if chat.stream:
            # The body releases the admission when its run ends; the app releases it after the
            # response in any case (a client gone before the body started, say).
            request_cleanups().append(admitted.release)
            stream = ChatStreamBody(
                admitted,
                clock=clock,
                model=chat.model,
                include_usage=chat.include_usage,
                keep_alive_seconds=http.keep_alive_seconds,
                buffer_events=http.stream_buffer_events,
                stall_seconds=http.stream_stall_seconds,
                queue_seconds=queue_seconds,
            )
            response = Response(stream, status=200, content_type="text/event-stream")
            response.headers.update(_SSE_HEADERS)
            response.timeout = None  # the run deadline bounds the stream, not quart
            return response
        with admitted:
            result = await admitted.run(_discard)
        if result.error is not None:
            raise result.error
        assert result.finish_reason is not None
        usage = result.usage
        tool_calls = [
            ToolCallOut(call.id, FunctionCallOut(call.name, call.arguments))
            for call in result.tool_calls
        ]
        payload = encode_completion(
            completion_id=prepared.run_id,
            created=prepared.created,
            model=chat.model,
            content=result.text,
            finish_reason=result.finish_reason,
            usage=Usage.of(usage.prompt_tokens, usage.completion_tokens),
            tool_calls=tool_calls,
            reasoning=result.reasoning,
        )
        response = Response(payload, status=200, content_type="application/json")
        timings = result.timings
        response.headers["Server-Timing"] = server_timing(
            queue=queue_seconds,
            upstream=timings.upstream,
            tools=timings.tools,
            gateway=timings.gateway,
        )
        return response

    @app.route(
        "/v1/chat/completions/<completion_id>/stream",
        methods=["GET"],
        provide_automatic_options=False,
    )
    async def resume_chat_stream(completion_id: str) -> Response:
        check_enabled_and_authorized(_CHAT_DISABLED)
        after = _last_event_id()
        record = await find_stored(
            runtime,
            logs,
            completion_id,
            kind="chat",
            header_agent_id=request.headers.get("x-epiloop-agent-id"),
            what="resumable chat completion stream",
        )
        return sse_response(reader_body(runtime, logs, record, after))

    @app.route("/v1/models", methods=["GET"], provide_automatic_options=False)
    async def list_models() -> Response:
        check_enabled_and_authorized(_MODELS_DISABLED)
        models = _ModelList(
            [_Model(f"epiloop:{agent.id}", started) for agent in runtime.config.agents.entries]
        )
        return Response(msgspec.json.encode(models), status=200, content_type="application/json")

    @app.route("/v1/models/<path:model>", methods=["GET"], provide_automatic_options=False)
    async def get_model(model: str) -> Response:
        check_enabled_and_authorized(_MODELS_DISABLED)
        if agent_id_from_model(model) is None and model.lower() != "epiloop":
            # Chat requests send any other name to the default agent; a lookup is exact.
            raise ModelNotFoundError(f"The model {model!r} does not exist.", param="model")
        agent = select_agent(runtime.config, header_agent_id=None, model=model)
        found = _Model(f"epiloop:{agent.id}", started)
        return Response(msgspec.json.encode(found), status=200, content_type="application/json")
