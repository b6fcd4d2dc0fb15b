"""Numbers out of load runs: percentiles, per-phase summaries, gateway-vs-direct comparisons.

Benchmark tooling; pure functions and msgspec structs (they are the result JSON), no I/O.
Latencies are in milliseconds, CPU in seconds (per token: microseconds), memory in MiB.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import msgspec

from .loadgen import LoadResult

__all__ = [
    "Comparison",
    "Percentiles",
    "PhaseSummary",
    "ResourceUse",
    "added",
    "compare",
    "merge_resources",
    "percentile",
    "percentiles",
    "summarize",
]

MIB = 1024 * 1024


class Percentiles(msgspec.Struct, frozen=True):
    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float


class ResourceUse(msgspec.Struct, frozen=True):
    """What the processes used during one phase."""

    #: The gateway process (with its worker processes, if any).
    gateway_cpu_s: float
    #: The kernel's part of ``gateway_cpu_s`` (system calls, the TCP stack).
    gateway_system_cpu_s: float
    gateway_rss_mib: float
    gateway_peak_rss_mib: float
    #: The mock upstream's process and the load generator's (this benchmark runner).
    upstream_cpu_s: float
    loadgen_cpu_s: float
    #: Busy fraction of each core over the phase, everything included.
    core_busy: dict[str, float]
    #: CPU seconds other programs used meanwhile (all busy time minus the three above): a
    #: shared machine's noise.
    background_cpu_s: float


class PhaseSummary(msgspec.Struct, frozen=True):
    target: str
    concurrency: int
    stream: bool
    requests: int
    completed: int
    errors: int
    error_kinds: dict[str, int]
    elapsed_s: float
    requests_per_s: float
    tokens: int
    tokens_per_s: float
    #: Tokens per second while every slot was busy (from the start until the last request
    #: started): the sustained rate, without the ramp-down at the end.
    steady_tokens_per_s: float | None
    ttft_ms: Percentiles | None
    gap_ms: Percentiles | None
    total_ms: Percentiles | None
    resources: ResourceUse
    #: Gateway CPU per token delivered and per request (``None`` for direct phases).
    cpu_per_token_us: float | None
    cpu_per_request_us: float | None
    #: Busy fraction of one core taken by the load side (mock upstream + load generator).
    load_side_busy: float


class Added(msgspec.Struct, frozen=True):
    """Gateway minus direct, at three percentiles (ms)."""

    p50: float
    p90: float
    p99: float


class Comparison(msgspec.Struct, frozen=True):
    concurrency: int
    direct: PhaseSummary
    gateway: PhaseSummary
    added_ttft_ms: Added | None
    added_gap_ms: Added | None
    #: gateway / direct
    ttft_p50_ratio: float | None
    tokens_per_s_ratio: float | None
    requests_per_s_ratio: float | None


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted values, linearly interpolated."""
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def percentiles(values: Sequence[float], *, scale: float = 1000.0) -> Percentiles | None:
    """Percentiles of ``values`` (seconds) in milliseconds (``scale``); ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(value * scale for value in values)
    return Percentiles(
        n=len(ordered),
        mean=sum(ordered) / len(ordered),
        p50=percentile(ordered, 50),
        p90=percentile(ordered, 90),
        p99=percentile(ordered, 99),
        max=ordered[-1],
    )


def _steady(result: LoadResult) -> tuple[int, float]:
    """Tokens that arrived between the run's start and its last request start, and that window
    (seconds)."""
    if not result.results:
        return 0, 0.0
    window_end = max(request.started_at for request in result.results)
    tokens = 0
    for request in result.results:
        if request.ttft_seconds is None:
            continue
        at = request.started_at + request.ttft_seconds
        if at > window_end:
            continue
        tokens += 1
        for gap in request.gaps:
            at += gap
            if at > window_end:
                break
            tokens += 1
    return tokens, window_end - result.started_at


def merge_resources(parts: Sequence[ResourceUse], weights: Sequence[float]) -> ResourceUse:
    """Several phases' use as one: CPU adds up, memory is the largest, busy is averaged."""
    total = sum(weights) or 1.0
    cores = sorted({core for part in parts for core in part.core_busy})
    return ResourceUse(
        gateway_cpu_s=sum(part.gateway_cpu_s for part in parts),
        gateway_system_cpu_s=sum(part.gateway_system_cpu_s for part in parts),
        gateway_rss_mib=max(part.gateway_rss_mib for part in parts),
        gateway_peak_rss_mib=max(part.gateway_peak_rss_mib for part in parts),
        upstream_cpu_s=sum(part.upstream_cpu_s for part in parts),
        loadgen_cpu_s=sum(part.loadgen_cpu_s for part in parts),
        core_busy={
            core: sum(p.core_busy.get(core, 0.0) * w for p, w in zip(parts, weights, strict=True))
            / total
            for core in cores
        },
        background_cpu_s=sum(part.background_cpu_s for part in parts),
    )


def summarize(
    runs: Sequence[LoadResult], parts: Sequence[ResourceUse], *, gateway: bool
) -> PhaseSummary:
    """The numbers of one phase (several runs of the same spec pool their requests). Only
    requests without error count in the latency percentiles; tokens count from every request
    (a cut stream delivered what it delivered)."""
    first = runs[0]
    requests = [request for run in runs for request in run.results]
    ok = [request for request in requests if request.error is None]
    kinds = Counter(request.error for request in requests if request.error is not None)
    tokens = sum(request.tokens for request in requests)
    elapsed = sum(run.elapsed for run in runs)
    resources = merge_resources(parts, [run.elapsed for run in runs])
    steady = [_steady(run) for run in runs]
    steady_window = sum(window for _, window in steady)
    gaps = [gap for request in ok for gap in request.gaps]
    cpu = resources.gateway_cpu_s
    stream = first.spec.stream
    return PhaseSummary(
        target=first.target,
        concurrency=first.spec.concurrency,
        stream=stream,
        requests=len(requests),
        completed=len(ok),
        errors=len(requests) - len(ok),
        error_kinds={str(kind): count for kind, count in kinds.most_common()},
        elapsed_s=elapsed,
        requests_per_s=len(ok) / elapsed if elapsed > 0 else math.nan,
        tokens=tokens,
        tokens_per_s=tokens / elapsed if elapsed > 0 else math.nan,
        steady_tokens_per_s=(
            sum(count for count, _ in steady) / steady_window if steady_window > 0.5 else None
        ),
        ttft_ms=percentiles(
            [r.ttft_seconds for r in ok if r.ttft_seconds is not None] if stream else []
        ),
        gap_ms=percentiles(gaps),
        total_ms=percentiles([r.total_seconds for r in ok if r.total_seconds is not None]),
        resources=resources,
        cpu_per_token_us=cpu / tokens * 1e6 if gateway and tokens else None,
        cpu_per_request_us=cpu / len(ok) * 1e6 if gateway and ok else None,
        load_side_busy=(
            (resources.upstream_cpu_s + resources.loadgen_cpu_s) / elapsed
            if elapsed > 0
            else math.nan
        ),
    )


def added(gateway: Percentiles | None, direct: Percentiles | None) -> Added | None:
    if gateway is None or direct is None:
        return None
    return Added(gateway.p50 - direct.p50, gateway.p90 - direct.p90, gateway.p99 - direct.p99)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def compare(direct: PhaseSummary, gateway: PhaseSummary) -> Comparison:
    return Comparison(
        concurrency=gateway.concurrency,
        direct=direct,
        gateway=gateway,
        added_ttft_ms=added(gateway.ttft_ms, direct.ttft_ms),
        added_gap_ms=added(gateway.gap_ms, direct.gap_ms),
        ttft_p50_ratio=_ratio(
            gateway.ttft_ms.p50 if gateway.ttft_ms else None,
            direct.ttft_ms.p50 if direct.ttft_ms else None,
        ),
        tokens_per_s_ratio=_ratio(gateway.tokens_per_s, direct.tokens_per_s),
        requests_per_s_ratio=_ratio(gateway.requests_per_s, direct.requests_per_s),
    )


def mib(value: int) -> float:
    return value / MIB
