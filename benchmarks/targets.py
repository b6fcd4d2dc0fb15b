"""The suite's targets: the numbers each is read from, the goals, and the floor section's rows.

Benchmark tooling; pure functions and msgspec structs (they are part of the result JSON), no
I/O. :func:`stack_numbers` reads one serving stack's target numbers (the gateway's, or a floor
relay's) out of its scenario results; :func:`target_checks` compares the gateway's with the
goals (measured by the suite, never asserted in tests); :func:`floor_rows` puts the gateway
beside the two floor relays, target by target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from .results import DisconnectResult, MemoryResult
from .summary import Comparison, PhaseSummary

__all__ = [
    "FloorRow",
    "StackNumbers",
    "TargetCheck",
    "floor_rows",
    "level",
    "rate",
    "stack_numbers",
    "target_checks",
]


class TargetCheck(msgspec.Struct, frozen=True):
    name: str
    goal: str
    measured: float | None
    unit: str
    met: bool | None
    note: str = ""


class StackNumbers(msgspec.Struct, frozen=True):
    """The targets' numbers for one serving stack: the gateway, or the floor relay
    (``None``: not measured)."""

    added_ttft_p50_ms: float | None = None
    added_gap_p99_ms: float | None = None
    cpu_per_token_us: float | None = None
    tokens_per_s: float | None = None
    idle_rss_mib: float | None = None
    per_stream_kib: float | None = None
    cancel_p99_ms: float | None = None


def level(comparisons: list[Comparison], concurrency: int) -> Comparison | None:
    for comparison in comparisons:
        if comparison.concurrency == concurrency:
            return comparison
    return None


def rate(phase: PhaseSummary) -> float:
    return phase.steady_tokens_per_s or phase.tokens_per_s


def stack_numbers(
    latency: list[Comparison],
    memory: MemoryResult | None,
    disconnect: DisconnectResult | None,
    *,
    idle_rss_mib: float | None = None,
) -> StackNumbers:
    """The target numbers out of one stack's streaming comparisons (the stack is their
    ``gateway`` side), its idle-stream memory and its disconnect latencies."""
    one = level(latency, 1)
    fifty = level(latency, 50)
    top = level(latency, 200)
    return StackNumbers(
        added_ttft_p50_ms=one.added_ttft_ms.p50 if one and one.added_ttft_ms else None,
        added_gap_p99_ms=fifty.added_gap_ms.p99 if fifty and fifty.added_gap_ms else None,
        cpu_per_token_us=fifty.gateway.cpu_per_token_us if fifty else None,
        tokens_per_s=rate(top.gateway) if top else None,
        idle_rss_mib=idle_rss_mib,
        per_stream_kib=memory.per_stream_kib if memory else None,
        cancel_p99_ms=disconnect.latency_ms.p99 if disconnect and disconnect.latency_ms else None,
    )


@dataclass(frozen=True)
class _Goal:
    name: str
    goal: str
    unit: str
    value: Callable[[StackNumbers], float | None]
    ok: Callable[[float], bool]
    note: str
    #: Shown in the floor section (idle RSS is not: the relay imports the gateway's package).
    floor: bool = True


_GOALS = (
    _Goal(
        "added TTFT p50, concurrency 1",
        "<= 1 ms",
        "ms",
        lambda numbers: numbers.added_ttft_p50_ms,
        lambda value: value <= 1.0,
        "gateway TTFT p50 minus direct TTFT p50",
    ),
    _Goal(
        "added inter-token gap p99, concurrency 50",
        "<= 2 ms",
        "ms",
        lambda numbers: numbers.added_gap_p99_ms,
        lambda value: value <= 2.0,
        "gateway gap p99 minus direct gap p99",
    ),
    _Goal(
        "gateway CPU per streamed token, concurrency 50",
        "<= 80 µs",
        "µs",
        lambda numbers: numbers.cpu_per_token_us,
        lambda value: value <= 80.0,
        "gateway process CPU seconds / tokens delivered",
    ),
    _Goal(
        "streamed tokens/s, concurrency 200",
        ">= 8,500/s",
        "tokens/s",
        lambda numbers: numbers.tokens_per_s,
        lambda value: value >= 8500,
        "sustained tokens/s through the gateway (one core)",
    ),
    _Goal(
        "idle RSS",
        "<= 60 MiB",
        "MiB",
        lambda numbers: numbers.idle_rss_mib,
        lambda value: value <= 60.0,
        "gateway RSS after start-up, before any request",
        floor=False,
    ),
    _Goal(
        "RSS per open idle stream",
        "<= 40 KiB",
        "KiB",
        lambda numbers: numbers.per_stream_kib,
        lambda value: value <= 40.0,
        "slope of gateway RSS over open idle streams",
    ),
    _Goal(
        "disconnect to upstream cancel p99",
        "<= 10 ms",
        "ms",
        lambda numbers: numbers.cancel_p99_ms,
        lambda value: value <= 10.0,
        "client close to the mock seeing its connection closed",
    ),
)


def target_checks(numbers: StackNumbers, latency: list[Comparison]) -> list[TargetCheck]:
    """The gateway's target ``numbers`` against the goals (``met`` is ``None`` when a scenario
    did not run); ``latency`` (the streaming comparisons) says what the load side offered."""
    top = level(latency, 200)
    checks: list[TargetCheck] = []
    for goal in _GOALS:
        note = goal.note
        if goal.unit == "tokens/s" and top is not None:
            direct = rate(top.direct)
            note += f"; offered by the load side directly: {direct:,.0f}/s"
            if direct < 8500:
                note += " (below the target: the load side cannot verify it)"
        measured = goal.value(numbers)
        met = None if measured is None else goal.ok(measured)
        checks.append(TargetCheck(goal.name, goal.goal, measured, goal.unit, met, note))
    return checks


class FloorRow(msgspec.Struct, frozen=True):
    """One target: the gateway's number, the two relays', and what each layer adds (``None``:
    not measured). Differences are negative for tokens/s when the upper layer delivers fewer."""

    name: str
    goal: str
    unit: str
    gateway: float | None
    #: The bare ASGI relay: the serving stack and the gateway's shape.
    bare: float | None
    #: The same relay as a quart-trio route.
    quart: float | None
    #: ``quart - bare``: what quart-trio (with quart and werkzeug) costs.
    quart_minus_bare: float | None
    #: ``gateway - quart``: what the gateway's own logic costs.
    gateway_minus_quart: float | None


def _minus(upper: float | None, lower: float | None) -> float | None:
    return None if upper is None or lower is None else upper - lower


def floor_rows(gateway: StackNumbers, bare: StackNumbers, quart: StackNumbers) -> list[FloorRow]:
    """The floor section's table: per target (idle RSS aside), the three stacks and what each
    layer adds to the one below it."""
    rows: list[FloorRow] = []
    for goal in _GOALS:
        if not goal.floor:
            continue
        ours, base, framed = goal.value(gateway), goal.value(bare), goal.value(quart)
        rows.append(
            FloorRow(
                goal.name,
                goal.goal,
                goal.unit,
                ours,
                base,
                framed,
                quart_minus_bare=_minus(framed, base),
                gateway_minus_quart=_minus(ours, framed),
            )
        )
    return rows
