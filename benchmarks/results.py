"""What each scenario measured: the result structs, the parts of the result JSON.

Benchmark tooling; plain msgspec structs, no I/O and no measuring (that is
:mod:`benchmarks.scenarios`' job), so the report, its tables and its plots read a run without
the code that ran it.
"""

from __future__ import annotations

import msgspec

from .profiling import Breakdown
from .summary import Comparison, Percentiles, PhaseSummary

__all__ = [
    "ClusterResult",
    "DisconnectResult",
    "FloorResult",
    "MemoryResult",
    "MemoryStep",
    "ProfileResult",
    "WorkersResult",
]


class MemoryStep(msgspec.Struct, frozen=True):
    streams: int
    ready: int
    failed: int
    rss_mib: float
    #: Seconds it took to open this step's streams.
    open_s: float


class MemoryResult(msgspec.Struct, frozen=True):
    target: str
    #: RSS of the measured process before the first stream.
    baseline_rss_mib: float
    steps: list[MemoryStep]
    #: Least-squares slope of RSS over the open streams of the steps (the baseline is left
    #: out: the first streams reuse memory that earlier requests freed).
    per_stream_kib: float | None
    #: The same slope with the baseline as a point (0 streams).
    per_stream_with_baseline_kib: float | None
    #: After every stream was closed.
    after_close_rss_mib: float
    #: Seconds from closing every client connection until the mock's open connections were
    #: back to where they were (``None``: not within the bound).
    upstream_released_s: float | None


class DisconnectResult(msgspec.Struct, frozen=True):
    target: str
    concurrency: int
    requests: int
    disconnected: int
    #: Disconnected requests whose upstream connection the mock saw closed by its client.
    cancelled: int
    #: ...and those it did not (still open, or closed by the mock itself after finishing).
    not_cancelled: int
    latency_ms: Percentiles | None
    errors: dict[str, int]


class WorkersResult(msgspec.Struct, frozen=True):
    workers: int
    #: How the workers were started, and on which CPUs.
    command: str
    cpus: str
    processes: int
    idle_rss_mib: float
    #: CPU seconds of each process of the tree over the whole scenario (master first): how
    #: evenly the workers shared the load.
    process_cpu_s: list[float]
    streaming: list[PhaseSummary]
    non_streaming: Comparison | None
    error: str | None = None


class ProfileResult(msgspec.Struct, frozen=True):
    concurrency: int
    seconds: float
    phase: PhaseSummary
    breakdown: Breakdown
    raw_path: str


class FloorResult(msgspec.Struct, frozen=True):
    """Scenarios 1, 2, 4 and 5 through one of ``benchmarks.floor_relay``'s relays (target name
    ``"floor-bare"`` or ``"floor-quart"``)."""

    #: Which relay: ``"bare"`` (a plain ASGI app) or ``"quart"`` (a quart-trio route).
    framework: str
    command: str
    cpus: str
    startup_rss_mib: float
    #: Direct, then through the relay, at ``Profile.floor_levels`` (``gateway`` is the relay).
    latency: list[Comparison]
    memory: MemoryResult
    disconnect: DisconnectResult
    #: The direct phases were reused (same spec and upstream): the latency scenario's of the
    #: same run, or (the quart relay, without it) the bare relay's; so the floors and the
    #: gateway are compared with the same baseline.
    direct_reused: bool


class ClusterResult(msgspec.Struct, frozen=True):
    """The ``cluster`` scenario (:mod:`benchmarks.cluster`): the PostgreSQL store's cost."""

    #: The PostgreSQL server (host, port, version).
    server: str
    #: Stateful streaming at concurrency 1, through a gateway on SQLite, then on PostgreSQL.
    stateful_sqlite: PhaseSummary
    stateful_postgres: PhaseSummary
    added_ttft_p50_ms: float | None
    #: Round trips per stateful run, heartbeats and listener left out; how it was counted.
    round_trips_per_run: float | None
    round_trip_runs: int
    idle_round_trips_per_s: float
    #: The run window's frontend messages and statements (by first words), all runs together.
    round_trip_messages: dict[str, int]
    round_trip_statements: dict[str, int]
    round_trip_method: str
    #: The idle window (``idle_window_s`` at ``lease_seconds``): the heartbeat's statements.
    idle_statements: dict[str, int]
    idle_window_s: float
    lease_seconds: float
    #: Cross-instance abort: agent.abort sent to one instance, the run's stream on another
    #: ending (ms).
    abort_ms: Percentiles | None
    aborts: int
    abort_failures: int
    #: Stateful streaming at concurrency 200 with hypercorn --workers 1, then 2.
    throughput: list[PhaseSummary]
    throughput_workers: list[int]
