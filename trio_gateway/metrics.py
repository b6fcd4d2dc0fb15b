"""Prometheus metrics, with the standard client library.

Everything the gateway counts is defined here, once; the rest of the package calls these
objects. Under several worker processes (hypercorn ``--workers``), set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before start: the client library then keeps
the values in files there, gauges are summed over live processes, and :func:`render` collects
all workers into one answer.

Metric names (all prefixed ``epiloop_``) are listed in docs/operations.md.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from .cancellation import cancel_cause

__all__ = [
    "ACTIVE_RUNS",
    "ACTIVE_STREAMS",
    "AUTH_FAILURES",
    "CANCELLED_RUNS",
    "CONTENT_TYPE",
    "DISCONNECT_CANCELLED_RUNS",
    "HTTP_REQUESTS",
    "QUEUE_DEPTH",
    "RESPONSE_LOG_EVENTS",
    "RESPONSE_LOG_WRITES",
    "RUN_DURATION",
    "SESSION_RECORD_FAILURES",
    "TOKENS",
    "TOOL_CALLS",
    "TTFT",
    "UPSTREAM_ERRORS",
    "count_cancelled_run",
    "render",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

HTTP_REQUESTS = Counter(
    "epiloop_http_requests",
    "HTTP requests answered, by route and status.",
    ["route", "method", "status"],
)
ACTIVE_RUNS = Gauge(
    "epiloop_active_runs",
    "Agent runs in progress, by transport.",
    ["source"],
    multiprocess_mode="livesum",
)
ACTIVE_STREAMS = Gauge(
    "epiloop_active_streams",
    "SSE responses being streamed.",
    multiprocess_mode="livesum",
)
QUEUE_DEPTH = Gauge(
    "epiloop_queue_depth",
    "Requests waiting: for a run slot (slots) or for their session's lane (sessions).",
    ["queue"],
    multiprocess_mode="livesum",
)
TTFT = Histogram(
    "epiloop_time_to_first_token_seconds",
    "From the start of a run to its first text, by agent.",
    ["agent"],
    buckets=_LATENCY_BUCKETS,
)
RUN_DURATION = Histogram(
    "epiloop_run_duration_seconds",
    "Duration of agent runs, by agent and outcome.",
    ["agent", "status"],
    buckets=_DURATION_BUCKETS,
)
RESPONSE_LOG_WRITES = Counter(
    "epiloop_response_log_writes",
    "Writes of stored responses' event logs to the session store (one per batch).",
)
RESPONSE_LOG_EVENTS = Counter(
    "epiloop_response_log_events",
    "Events of stored responses written to the session store.",
)
TOKENS = Counter(
    "epiloop_tokens",
    "Model tokens, by agent and direction (in: prompt, out: completion).",
    ["agent", "direction"],
)
UPSTREAM_ERRORS = Counter(
    "epiloop_upstream_errors",
    "Failed upstream model calls (each attempt), by provider and kind.",
    ["provider", "kind"],
)
TOOL_CALLS = Counter(
    "epiloop_tool_calls",
    "Agent tool calls, by tool and outcome (ok, error).",
    ["tool", "outcome"],
)
DISCONNECT_CANCELLED_RUNS = Counter(
    "epiloop_disconnect_cancelled_runs",
    "Runs cancelled because their client went away.",
)
CANCELLED_RUNS = Counter(
    "epiloop_cancelled_runs",
    "Runs cancelled from outside, by cause (see trio_gateway.cancellation).",
    ["reason"],
)
SESSION_RECORD_FAILURES = Counter(
    "epiloop_session_record_failures",
    "Turns the session store could not store, by reason (error, timeout, lease_lost).",
    ["reason"],
)
AUTH_FAILURES = Counter(
    "epiloop_auth_failures",
    "Refused credentials, by transport (http, ws).",
    ["transport"],
)


def render() -> bytes:
    """The Prometheus text exposition of every metric (of every worker, in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # the library's own API
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def count_cancelled_run(exc: BaseException, *, draining: bool) -> None:
    """Count a run that ``exc`` ended, if it was a cancellation, under its cause."""
    cause = cancel_cause(exc, draining=draining)
    if cause is None:
        return
    CANCELLED_RUNS.labels(cause).inc()
    if cause == "client_disconnect":
        DISCONNECT_CANCELLED_RUNS.inc()
