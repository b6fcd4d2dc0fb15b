"""The mock upstream in a process of its own, driven over stdin/stdout (JSON lines).

Benchmark tooling. ``python -m benchmarks.upstream_server`` serves :class:`MockUpstream` on
127.0.0.1 (a free port) and prints one line ``{"url": ...}``. Then each line it reads on stdin
is a command and gets one JSON line back:

* ``{"op": "scenario", "tokens": [...], "first_token_delay": s, "pace": s}``: what every
  request is answered with from now on;
* ``{"op": "records"}``: the requests seen since the last ``records`` (then forgotten), with
  their times on ``CLOCK_MONOTONIC`` (``time.monotonic()``), comparable across processes;
* ``{"op": "stats"}``: open and total connections.

End of stdin stops the server. Times: the mock stamps requests with ``trio.current_time()``,
which is ``time.perf_counter()`` plus a random per-run offset; this process measures that
offset once against ``time.monotonic()`` and reports monotonic times, so a load generator in
another process can subtract its own ``time.monotonic()`` stamps from them (both clocks are
``CLOCK_MONOTONIC`` on Linux).

Imports the mock upstream's modules only (never ``trio_gateway``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Literal

import msgspec
import trio

from .mock_upstream import MockUpstream, RecordedRequest, Scenario

__all__ = ["RequestRecord", "request_tag"]

#: Requests carry ``"<TAG_PREFIX><n>"`` as their user message, so records can be matched to
#: the client's requests through the gateway.
TAG_PREFIX = "bench-request-"


class ScenarioCommand(msgspec.Struct, tag="scenario", tag_field="op"):
    tokens: list[str]
    first_token_delay: float = 0.0
    pace: float = 0.0


class RecordsCommand(msgspec.Struct, tag="records", tag_field="op"):
    pass


class StatsCommand(msgspec.Struct, tag="stats", tag_field="op"):
    pass


Command = ScenarioCommand | RecordsCommand | StatsCommand


class RequestRecord(msgspec.Struct, frozen=True):
    """One request as the mock saw it; times are ``time.monotonic()`` seconds."""

    tag: str | None
    received_at: float
    completed_at: float | None
    closed_at: float | None
    closed_by: Literal["client", "server"] | None
    tokens_sent: int


class Stats(msgspec.Struct, frozen=True):
    open_connections: int
    total_connections: int
    requests: int


def request_tag(body: object) -> str | None:
    """The bench tag in the last message of a chat request body, if any."""
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    content = last.get("content") if isinstance(last, dict) else None
    if isinstance(content, str) and content.startswith(TAG_PREFIX):
        return content
    return None


def _record(request: RecordedRequest, offset: float) -> RequestRecord:
    def mono(value: float | None) -> float | None:
        return None if value is None else value + offset

    return RequestRecord(
        tag=request_tag(request.body),
        received_at=request.received_at + offset,
        completed_at=mono(request.completed_at),
        closed_at=mono(request.closed_at),
        closed_by=request.closed_by,
        tokens_sent=request.tokens_sent,
    )


def _clock_offset() -> float:
    """``time.monotonic() - trio.current_time()``, the smallest of a few paired readings."""
    best = float("inf")
    offset = 0.0
    for _ in range(5):
        before = time.monotonic()
        now = trio.current_time()
        after = time.monotonic()
        if after - before < best:
            best = after - before
            offset = (before + after) / 2 - now
    return offset


async def _serve_commands(upstream: MockUpstream, offset: float) -> None:
    decoder = msgspec.json.Decoder(Command)
    encoder = msgspec.json.Encoder()
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    pending = b""
    async with stdin, stdout:
        while True:
            data = await stdin.receive_some(65536)
            if not data:
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                command = decoder.decode(line)
                reply: object
                if isinstance(command, ScenarioCommand):
                    upstream.scenarios["default"] = Scenario(
                        tokens=list(command.tokens),
                        first_token_delay=command.first_token_delay,
                        pace=command.pace,
                    )
                    reply = {"ok": True}
                elif isinstance(command, RecordsCommand):
                    reply = [_record(request, offset) for request in upstream.requests]
                    upstream.requests.clear()
                else:
                    reply = Stats(
                        upstream.open_connections,
                        upstream.total_connections,
                        len(upstream.requests),
                    )
                await stdout.send_all(encoder.encode(reply) + b"\n")


async def main() -> None:
    upstream = MockUpstream()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(upstream.serve)
        offset = _clock_offset()
        sys.stdout.write(msgspec.json.encode({"url": url}).decode() + "\n")
        sys.stdout.flush()
        await _serve_commands(upstream, offset)
        nursery.cancel_scope.cancel(reason="stdin closed: the benchmark is over")


if __name__ == "__main__":
    trio.run(main)
