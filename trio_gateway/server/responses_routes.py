"""The Responses route: ``POST /v1/responses`` on the same agent path as chat completions. Thin:
check, parse, hand over to the agent runtime, encode.

It exists only while ``gateway.http.endpoints.responses.enabled`` is true and needs the bearer
credential. Agent selection (``model: "epiloop:<id>"``, the ``x-epiloop-agent-id`` header) and
the session headers are those of chat completions. Everything that can fail is checked before
the first byte of the answer, so those failures are real HTTP errors; a streamed run that fails
later ends with an ``error`` event and ``response.failed``. Not served yet: background runs,
retrieving, cancelling or deleting a stored response, ``previous_response_id``.
"""

from __future__ import annotations

import time

from quart import Response, request
from quart_trio import QuartTrio

from ..agent import AgentRuntime, RunEvent, RunFailed, RunFinished, RunRequest
from ..agent.routing import named_agent
from ..errors import EndpointDisabledError, InvalidRequestError, RunAbortedError
from ..providers.base import ReasoningDelta, TextDelta, TokenUsage, ToolCallDelta
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
    parse_responses_request,
    to_messages,
    to_tool_specs,
)
from .app_state import authorize, request_cleanups
from .streaming import KeepAliveClock, RunStreamBody

__all__ = ["ResponsesRenderer", "register_responses_routes", "run_request"]

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
    parsed: ResponsesRequest, *, header_agent_id: str | None, header_session_key: str | None
) -> RunRequest:
    """A Responses request and the gateway's headers, in the runtime's terms."""
    agent_id, agent_param = named_agent(header_agent_id=header_agent_id, model=parsed.model)
    return RunRequest(
        messages=to_messages(parsed),
        agent_id=agent_id,
        agent_param=agent_param,
        session_key=header_session_key,
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
    )


def _usage(usage: TokenUsage) -> Usage:
    return Usage.of(usage.prompt_tokens, usage.completion_tokens)


class ResponsesRenderer:
    """A run's events as Responses stream events (a :class:`StreamRenderer`); with
    ``stream=False`` it only collects the output for the final object."""

    def __init__(self, events: ResponseEvents) -> None:
        self.events = events

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
        return self.events.fail(failed.error, _usage(failed.usage))

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


def register_responses_routes(app: QuartTrio, runtime: AgentRuntime, clock: KeepAliveClock) -> None:
    @app.route("/v1/responses", methods=["POST"], provide_automatic_options=False)
    async def create_response() -> Response:
        # The config is read per request: a reload applies to the next one.
        if not runtime.config.gateway.http.endpoints.responses.enabled:
            raise EndpointDisabledError(_DISABLED)
        authorize(runtime)
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
        try:
            prepared = await runtime.prepare(
                run_request(
                    parsed,
                    header_agent_id=request.headers.get("x-epiloop-agent-id"),
                    header_session_key=request.headers.get("x-epiloop-session-key"),
                )
            )
        except InvalidRequestError as exc:
            raise _tool_param(exc) from None
        admitted = await runtime.admit(prepared)  # a 409 or 429 comes before the first byte
        meta = response_meta(parsed, run_id=prepared.run_id, created=prepared.created)
        renderer = ResponsesRenderer(ResponseEvents(meta, stream=parsed.stream))
        if parsed.stream:
            # The body releases the admission when its run ends; the app releases it after the
            # response in any case (a client gone before the body started, say).
            request_cleanups().append(admitted.release)
            stream = RunStreamBody(
                admitted,
                renderer,
                clock=clock,
                keep_alive_seconds=http.keep_alive_seconds,
                buffer_events=http.stream_buffer_events,
                stall_seconds=http.stream_stall_seconds,
            )
            response = Response(stream, status=200, content_type="text/event-stream")
            response.headers.update(_SSE_HEADERS)
            response.timeout = None  # the run deadline bounds the stream, not quart
            return response
        with admitted:
            result = await admitted.run(renderer.collect)
        if result.status == "failed" and result.error is not None:
            # A failed run is an HTTP error, as for chat completions (its usage is in the
            # session); a cancelled one is a response with the status "cancelled".
            raise result.error
        return Response(renderer.events.response(), status=200, content_type="application/json")
