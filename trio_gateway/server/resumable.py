"""Serving stored runs to HTTP clients: finding a stored response, streaming its events to a
reader (replayed, then live), and the body of a stored run streamed to the client that
started it.

Shared by the Responses routes and resumable chat completion streams. A reader is an async
generator of bytes (no nursery inside: it only waits on the log or sleeps between polls);
:class:`LoggedRunBody` owns the run of a foreground stream in a per-request nursery, as the
plain stream bodies do, and sends what the run's log holds, so the client and any later
reader see the same numbered events. Imports quart's ``ResponseBody``, the agent runtime,
``sessions`` and ``wire``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import trio
from quart import Response
from quart.wrappers.response import ResponseBody

from .. import metrics
from ..agent import AgentRuntime
from ..agent.routing import find_agent
from ..cancellation import STREAM_ABANDONED
from ..errors import ResponseNotFoundError
from ..sessions.store import StoredResponse
from ..wire.sse import KEEP_ALIVE
from .response_log import LiveLog, ResponseLogs, follow_stored

__all__ = ["LoggedRunBody", "find_stored", "reader_body", "sse_response"]

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def find_stored(
    runtime: AgentRuntime,
    logs: ResponseLogs,
    response_id: str,
    *,
    kind: str,
    header_agent_id: str | None,
    what: str = "response",
) -> StoredResponse:
    """The stored response ``response_id`` of the agent the request names (the
    ``x-epiloop-agent-id`` header, else the default agent): live here, else from the store.
    Unknown, expired, of another kind or of another agent: :class:`ResponseNotFoundError`."""
    agent = find_agent(
        runtime.config,
        None if header_agent_id is None else header_agent_id.strip(),
        param="x-epiloop-agent-id",
    )
    live = logs.get(response_id)
    record = live.record if live is not None else await runtime.sessions.get_response(response_id)
    if (
        record is None
        or record.kind != kind
        or record.agent_id.lower() != agent.id.lower()
        or (record.expires_at is not None and record.expires_at <= time.time())
    ):
        raise ResponseNotFoundError(
            f"No {what} with id {response_id!r} is stored for agent {agent.id!r}: it was never "
            "stored (or not with 'store': true), was deleted, is past its retention "
            "(gateway.http.endpoints.responses.retentionSeconds) or belongs to another agent.",
            param="response_id",
        )
    return record


def reader_body(
    runtime: AgentRuntime, logs: ResponseLogs, record: StoredResponse, after: int
) -> AsyncIterator[bytes]:
    """The events of ``record`` after ``after``: live ones from this instance's log, else
    replayed from the store and polled for (a run on another instance), framed for SSE."""
    http = runtime.config.gateway.http
    keep_alive = http.keep_alive_seconds
    live = logs.get(record.id)
    if live is not None:
        chunks = live.follow(after)
    else:
        agent = find_agent(runtime.config, record.agent_id, param="x-epiloop-agent-id")
        deadline = agent.timeout_seconds or runtime.config.agents.defaults.timeout_seconds
        chunks = follow_stored(
            runtime.sessions,
            record.id,
            after,
            poll_seconds=logs.settings().poll_seconds,
            keep_alive_seconds=keep_alive,
            give_up_at=record.created_at + deadline + 60.0,
            live=lambda: logs.get(record.id),
        )
    return _with_keep_alives(chunks)


async def _with_keep_alives(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    metrics.ACTIVE_STREAMS.inc()
    try:
        async for chunk in chunks:
            yield chunk or KEEP_ALIVE
    finally:
        metrics.ACTIVE_STREAMS.dec()


def sse_response(body: AsyncIterator[bytes] | ResponseBody) -> Response:
    response = Response(body, status=200, content_type="text/event-stream")
    response.headers.update(_SSE_HEADERS)
    response.timeout = None  # the run deadline bounds the stream, not quart
    return response


class LoggedRunBody(ResponseBody):
    """A foreground stored stream: ``run`` (which writes ``log``) in a per-request nursery,
    the client reading the log from its start. The client going away cancels the run."""

    def __init__(self, log: LiveLog, run: Callable[[], Awaitable[None]]) -> None:
        self._log = log
        self._run = run
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> LoggedRunBody:
        manager = trio.open_nursery()
        self._nursery = await manager.__aenter__()
        self._nursery_manager = manager
        self._nursery.start_soon(self._run)
        metrics.ACTIVE_STREAMS.inc()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._nursery_manager is not None
        assert self._nursery is not None
        if exc_type is not None:
            # The client went away (or the send failed): the run stops, its end is logged.
            self._nursery.cancel_scope.cancel(reason=STREAM_ABANDONED)
        try:
            await self._nursery_manager.__aexit__(exc_type, exc_value, tb)
        finally:
            metrics.ACTIVE_STREAMS.dec()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._log.follow(-1):
            yield chunk or KEEP_ALIVE
