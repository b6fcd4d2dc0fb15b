"""The SSE response body of a streamed agent run: chat completions and Responses alike.

Quart sends a response body as ``async with body: async for chunk in body: await send(chunk)``.
:class:`RunStreamBody` opens the per-request nursery in ``__aenter__`` and closes it in
``__aexit__``, so the agent run (the producer) lives exactly as long as the send loop: when the
client disconnects, quart-trio cancels the send loop, ``__aexit__`` sees the exception and
cancels the run. (A nursery held across a ``yield`` of a response generator works only by luck:
with ``quart.stream_with_context`` and a middleware that awaits in ``send`` it fails with
"Nursery stack corrupted" on every disconnect. A body object that owns the nursery stayed clean
on disconnect, timeout, producer crash and such a middleware alike.)

Between the two, a bounded trio memory channel carries the run's events: a client that reads
slowly makes the run wait instead of growing a buffer. Text deltas that are already queued when
the writer comes round are coalesced into one chunk, so a client that falls behind costs fewer
writes, not more. While the run is silent a ``: keep-alive`` comment goes out every
``keep_alive_seconds``. What the events look like on the wire is a :class:`StreamRenderer`'s
business: :class:`ChatRenderer` sends chat completion chunks (``[DONE]`` only after a run really
finished; a failure is an in-band ``data: {"error": ...}`` event and the stream then ends), the
Responses route its typed events.

The keep-alives come from one :class:`KeepAliveClock` task per app, which looks at every open
stream a few times per interval and puts a tick into the channel of each one that has been
silent for an interval: the writer itself waits for events without a timeout (a cancel scope
per wait cost about 10 µs per token), and a keep-alive task per stream cost about 3.5 KiB.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, suppress
from types import TracebackType
from typing import Protocol

import trio
from quart.wrappers.response import ResponseBody

from .. import metrics
from ..agent import AdmittedRun, RunEvent, RunFailed, RunFinished
from ..cancellation import STREAM_ABANDONED, STREAM_STALLED
from ..errors import RunError
from ..providers.base import ReasoningDelta, TextDelta, ToolCallDelta
from ..wire.chunks import ChunkEncoder, Usage, timing_extension
from ..wire.error_body import encode_error_event
from ..wire.sse import DONE, KEEP_ALIVE

__all__ = ["ChatRenderer", "ChatStreamBody", "KeepAliveClock", "RunStreamBody", "StreamRenderer"]

logger = logging.getLogger(__name__)

_LOST = RunFailed(RunError("The agent run ended unexpectedly; the answer is incomplete."))


class _KeepAliveTick:
    """Put into the channel when the stream has been silent for a keep-alive interval."""


_TICK = _KeepAliveTick()
_StreamItem = RunEvent | _KeepAliveTick


#: The clock looks at the open streams at most this often, and at least every quarter interval.
_CLOCK_MAX_PERIOD = 1.0
_CLOCK_MIN_PERIOD = 0.005


class KeepAliveClock:
    """Keep-alives for every open stream of an app, from one task (:meth:`run`, started in the
    app's lifespan nursery, ended by :meth:`stop`). A stream is due when nothing was written to
    it for its ``keep_alive_seconds``; the clock then puts a tick into its channel."""

    def __init__(self) -> None:
        self._streams: set[RunStreamBody] = set()
        self._wake = trio.Event()
        self._scope = trio.CancelScope()
        self.running = False
        self._warned = False

    def register(self, stream: RunStreamBody) -> None:
        self._streams.add(stream)
        self._wake.set()
        if not self.running and not self._warned:
            self._warned = True
            logger.warning(
                "stream.keep_alive.unavailable: the app's lifespan has not started its "
                "keep-alive clock; streams get no keep-alive comments (serve the app with "
                "its ASGI lifespan on)"
            )

    def unregister(self, stream: RunStreamBody) -> None:
        self._streams.discard(stream)

    def stop(self) -> None:
        self._scope.cancel(reason="the app stopped serving")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        task_status.started()
        try:
            with self._scope:
                while True:
                    if not self._streams:
                        self._wake = trio.Event()
                        await self._wake.wait()
                        continue
                    await trio.sleep(max(self._visit(), _CLOCK_MIN_PERIOD))
        finally:
            self.running = False

    def _visit(self) -> float:
        """Tick the silent streams; return how long to sleep until the next visit."""
        now = trio.current_time()
        period = _CLOCK_MAX_PERIOD
        for stream in list(self._streams):
            try:
                period = min(period, stream.keep_alive_seconds / 4)
                stream.tick_if_silent(now)
            except Exception:
                # A bug; the clock must go on for the other streams (an exception here would
                # also end the app's lifespan nursery).
                logger.exception("stream.keep_alive.failed")
                self._streams.discard(stream)
        return period


class StreamRenderer(Protocol):
    """What a stream's events look like on the wire: each method returns the bytes to send."""

    def opening(self) -> bytes: ...

    def text(self, text: str) -> bytes: ...

    def reasoning(self, text: str) -> bytes: ...

    def tool_call(
        self, index: int, call_id: str | None, name: str | None, arguments: str
    ) -> bytes: ...

    def finished(self, finished: RunFinished) -> bytes: ...

    def failed(self, failed: RunFailed) -> bytes: ...


class ChatRenderer:
    """Chat completion chunks (``chat.completion.chunk``), then ``[DONE]``."""

    def __init__(self, encoder: ChunkEncoder, *, include_usage: bool, queue_seconds: float) -> None:
        self._encoder = encoder
        self._include_usage = include_usage
        self._queue_seconds = queue_seconds

    def opening(self) -> bytes:
        return self._encoder.role()

    def text(self, text: str) -> bytes:
        return self._encoder.content(text)

    def reasoning(self, text: str) -> bytes:
        return self._encoder.reasoning(text)

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        return self._encoder.tool_call(index, call_id, name, arguments)

    def failed(self, failed: RunFailed) -> bytes:
        return encode_error_event(failed.error)

    def finished(self, finished: RunFinished) -> bytes:
        ending = self._encoder.finish(finished.finish_reason)
        if self._include_usage:
            usage, timings = finished.usage, finished.timings
            extension = timing_extension(
                queue=self._queue_seconds,
                upstream=timings.upstream,
                tools=timings.tools,
                gateway=timings.gateway,
            )
            ending += self._encoder.usage(
                Usage.of(usage.prompt_tokens, usage.completion_tokens), extension
            )
        return ending + DONE


class RunStreamBody(ResponseBody):
    """The body of a streamed run: the run in a per-request nursery, its events through a
    bounded channel, rendered by ``renderer`` (see the module doc)."""

    def __init__(
        self,
        admitted: AdmittedRun,
        renderer: StreamRenderer,
        *,
        clock: KeepAliveClock,
        keep_alive_seconds: float,
        buffer_events: int,
        stall_seconds: float,
    ) -> None:
        self._admitted = admitted
        self._renderer = renderer
        self.keep_alive_seconds = keep_alive_seconds
        self._clock = clock
        self._buffer_events = buffer_events
        self._stall_seconds = stall_seconds
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self._send: trio.MemorySendChannel[_StreamItem] | None = None
        self._receive: trio.MemoryReceiveChannel[_StreamItem] | None = None
        #: When the writer last handed quart a chunk (trio time); the clock reads it.
        self._written_at = 0.0

    async def __aenter__(self) -> RunStreamBody:
        manager = trio.open_nursery()
        nursery = await manager.__aenter__()
        metrics.ACTIVE_STREAMS.inc()
        send, receive = trio.open_memory_channel[_StreamItem](self._buffer_events)
        self._nursery_manager, self._nursery = manager, nursery
        self._send, self._receive = send, receive
        self._written_at = trio.current_time()
        nursery.start_soon(self._produce, send)
        self._clock.register(self)
        return self

    def tick_if_silent(self, now: float) -> None:
        """The clock's visit: a keep-alive tick if nothing was written for an interval."""
        if now - self._written_at < self.keep_alive_seconds or self._send is None:
            return
        self._written_at = now
        # Refused when events are queued (the writer is busy, not silent) or the run has ended.
        with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._send.send_nowait(_TICK)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._nursery_manager is not None
        assert self._nursery is not None
        assert self._receive is not None
        self._clock.unregister(self)
        if exc_type is not None:
            # The send loop failed or was cancelled (typically: the client went away). Cancel
            # before closing the channel, so a producer blocked on a full channel sees
            # Cancelled (an aborted run), not a broken channel.
            self._nursery.cancel_scope.cancel(reason=STREAM_ABANDONED)
        self._receive.close()
        try:
            await self._nursery_manager.__aexit__(exc_type, exc_value, tb)
        finally:
            metrics.ACTIVE_STREAMS.dec()

    async def _produce(self, send: trio.MemorySendChannel[_StreamItem]) -> None:
        nursery = self._nursery
        assert nursery is not None
        stall_seconds = self._stall_seconds

        async def deliver(event: RunEvent) -> None:
            try:
                send.send_nowait(event)  # the usual case: the writer keeps up
            except trio.WouldBlock:
                pass
            else:
                # No scheduling round trip per token: the provider yields when it waits for
                # the network, and the writer then takes everything queued in one chunk.
                await trio.lowlevel.checkpoint_if_cancelled()
                return
            with trio.move_on_after(stall_seconds) as scope:
                await send.send(event)
            if scope.cancelled_caught:
                # The client stopped reading (hypercorn would hold the send forever): free the
                # run, its lane and its slot; it is recorded as aborted.
                logger.info(
                    "stream.stalled run_id=%s seconds=%g", self._admitted.run_id, stall_seconds
                )
                nursery.cancel_scope.cancel(reason=STREAM_STALLED)
                await trio.lowlevel.checkpoint()

        with send, self._admitted:
            try:
                await self._admitted.run(deliver)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The writer stopped reading; it is already ending the response.
                pass
            except Exception:
                # A bug below the runtime's own error handling. The writer sees the channel end
                # without a final event and reports an in-band error; the details stay here.
                logger.exception("stream.producer.failed run_id=%s", self._admitted.run_id)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        assert self._receive is not None
        receive = self._receive
        renderer = self._renderer
        current_time = trio.current_time
        yield renderer.opening()
        self._written_at = current_time()
        while True:
            event: _StreamItem | None
            try:
                event = receive.receive_nowait()
            except trio.WouldBlock:
                event = None
            except trio.EndOfChannel:
                event = _LOST
            if event is None:
                # Waited for outside the except block: a pending exception would stay alive
                # (with its traceback) for as long as the stream is silent.
                try:
                    event = await receive.receive()
                except trio.EndOfChannel:
                    event = _LOST
            if type(event) is TextDelta:
                texts = [event.text]
                pending: _StreamItem | None = None
                while True:  # coalesce what is already queued
                    try:
                        queued = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    if type(queued) is TextDelta:
                        texts.append(queued.text)
                    else:
                        pending = queued
                        break
                yield renderer.text(texts[0] if len(texts) == 1 else "".join(texts))
                self._written_at = current_time()
                if pending is None:
                    continue
                event = pending
            if event is _TICK:
                yield KEEP_ALIVE
            elif type(event) is ReasoningDelta:
                yield renderer.reasoning(event.text)
            elif type(event) is ToolCallDelta:
                yield renderer.tool_call(event.index, event.id, event.name, event.arguments)
            elif isinstance(event, RunFinished):
                yield renderer.finished(event)
                return
            elif isinstance(event, RunFailed):
                yield renderer.failed(event)
                return
            else:
                # RunStarted and the agent's own tool activity have no place in an OpenAI
                # stream.
                continue
            self._written_at = current_time()


class ChatStreamBody(RunStreamBody):
    """A streamed chat completion."""

    def __init__(
        self,
        admitted: AdmittedRun,
        *,
        clock: KeepAliveClock,
        model: str,
        include_usage: bool,
        keep_alive_seconds: float,
        buffer_events: int,
        stall_seconds: float,
        queue_seconds: float = 0.0,
    ) -> None:
        prepared = admitted.prepared
        encoder = ChunkEncoder(completion_id=prepared.run_id, created=prepared.created, model=model)
        super().__init__(
            admitted,
            ChatRenderer(encoder, include_usage=include_usage, queue_seconds=queue_seconds),
            clock=clock,
            keep_alive_seconds=keep_alive_seconds,
            buffer_events=buffer_events,
            stall_seconds=stall_seconds,
        )
