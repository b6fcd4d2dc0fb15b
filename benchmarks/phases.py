"""Measuring one phase: the running processes a scenario uses (:class:`Bench`), waiting for a
quiet machine, and one load run with what every process used meanwhile.

Benchmark tooling. Every measured phase (:func:`run_phase`) is preceded by a warm-up (one
request per slot) whose keep-alive connections the phase then reuses, and is measured with the
gateway's CPU and memory (``/proc``), the load side's CPU and each core's busy time
(:class:`summary.ResourceUse`), so a run on a shared machine can show how much other programs
took meanwhile (:func:`wait_quiet` waits, bounded, for them to leave the cores idle first).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from . import procstats
from .loadgen import LoadClient, LoadResult, LoadSpec, Target, run_load
from .processes import FloorRelayProcess, GatewayProcess, UpstreamProcess
from .profiles import Profile
from .summary import PhaseSummary, ResourceUse, mib, summarize

__all__ = ["TOKEN_TEXT", "Bench", "measure", "run_phase", "wait_quiet"]

#: Each streamed token's text: one ``~`` each (see ``loadgen.TOKEN_MARK``).
TOKEN_TEXT = " tok~"
_PEAK_SAMPLE_SECONDS = 0.05
#: Other programs may use this much of one core while a phase waits for quiet.
_QUIET_CORES = 0.1
_QUIET_WINDOW_S = 0.25


@dataclass
class Bench:
    """What the scenarios run against."""

    profile: Profile
    upstream: UpstreamProcess
    gateway: GatewayProcess
    workdir: Path
    #: CPUs of the gateway and of the load side (``None``: not pinned).
    gateway_cpus: set[int] | None
    load_cpus: set[int] | None
    #: Every CPU this run may use (the workers of scenario 6 get them all).
    all_cpus: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    #: Seconds spent waiting for quiet so far, and phases that started without it.
    quiet_waited_s: float = 0.0
    noisy_phases: int = 0
    #: When a list: every measured run's per-request records are kept here (``--raw``).
    raw: list[LoadResult] | None = None

    @property
    def direct(self) -> Target:
        return Target("direct", "127.0.0.1", self.upstream.port, "bench")

    def through(self, gateway: GatewayProcess) -> Target:
        return Target(
            "gateway",
            gateway.host,
            gateway.port,
            "epiloop:main",
            headers={"Authorization": f"Bearer {gateway.token}"},
        )

    def through_floor(self, relay: FloorRelayProcess, framework: str) -> Target:
        return Target(f"floor-{framework}", relay.host, relay.port, "bench")

    async def streaming_upstream(self, *, first_token_delay: float | None = None) -> None:
        profile = self.profile
        await self.upstream.set_scenario(
            [TOKEN_TEXT] * profile.tokens,
            first_token_delay=(
                profile.first_token_delay_s if first_token_delay is None else first_token_delay
            ),
            pace=profile.pace_s,
        )

    async def instant_upstream(self) -> None:
        await self.upstream.set_scenario(
            [TOKEN_TEXT] * self.profile.tokens, first_token_delay=0.0, pace=0.0
        )


@dataclass(frozen=True)
class _Snapshot:
    at: float
    gateway: procstats.ProcSample
    upstream_cpu: float
    loadgen_cpu: float
    busy: dict[int, float]


def _snapshot(bench: Bench, gateway_pid: int) -> _Snapshot:
    return _Snapshot(
        at=time.monotonic(),
        gateway=procstats.sample_tree(gateway_pid),
        upstream_cpu=procstats.sample(bench.upstream.pid).cpu_seconds,
        loadgen_cpu=procstats.sample(os.getpid()).cpu_seconds,
        busy=procstats.cpu_busy_seconds(),
    )


def _our_cpu(bench: Bench, gateway_pid: int) -> float:
    return (
        procstats.sample_tree(gateway_pid).cpu_seconds
        + procstats.sample(bench.upstream.pid).cpu_seconds
        + procstats.sample(os.getpid()).cpu_seconds
    )


async def wait_quiet(bench: Bench, gateway_pid: int) -> float:
    """Wait (bounded by the profile) until other programs use less than a tenth of a core;
    return the cores they used in the last window."""
    profile = bench.profile
    bound = min(profile.quiet_wait_s, profile.quiet_budget_s - bench.quiet_waited_s)
    started = time.monotonic()
    while True:
        busy_before = sum(procstats.cpu_busy_seconds().values())
        ours_before = _our_cpu(bench, gateway_pid)
        window_start = time.monotonic()
        await trio.sleep(_QUIET_WINDOW_S)
        window = time.monotonic() - window_start
        busy = sum(procstats.cpu_busy_seconds().values()) - busy_before
        others = max(0.0, busy - (_our_cpu(bench, gateway_pid) - ours_before)) / window
        waited = time.monotonic() - started
        if others <= _QUIET_CORES or waited >= bound:
            bench.quiet_waited_s += waited
            if others > _QUIET_CORES:
                bench.noisy_phases += 1
            return others


async def _watch_peak(pid: int, peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], procstats.sample_tree(pid).rss_bytes)
        await trio.sleep(_PEAK_SAMPLE_SECONDS)


async def measure(
    bench: Bench, client: LoadClient, spec: LoadSpec, gateway_pid: int
) -> tuple[LoadResult, ResourceUse]:
    """Run ``spec`` and measure what every process used meanwhile."""
    await bench.upstream.records()  # the mock keeps every request's record until asked
    await wait_quiet(bench, gateway_pid)
    for pid in procstats.tree(gateway_pid):
        procstats.reset_peak(pid)
    before = _snapshot(bench, gateway_pid)
    peak = [before.gateway.rss_bytes]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_peak, gateway_pid, peak)
        result = await run_load(client, spec)
        nursery.cancel_scope.cancel(reason="the phase is over")
    after = _snapshot(bench, gateway_pid)
    elapsed = after.at - before.at
    busy = {core: after.busy[core] - before.busy.get(core, 0.0) for core in after.busy}
    gateway_cpu = after.gateway.cpu_seconds - before.gateway.cpu_seconds
    upstream_cpu = after.upstream_cpu - before.upstream_cpu
    loadgen_cpu = after.loadgen_cpu - before.loadgen_cpu
    resources = ResourceUse(
        gateway_cpu_s=gateway_cpu,
        gateway_system_cpu_s=after.gateway.system_seconds - before.gateway.system_seconds,
        gateway_rss_mib=mib(after.gateway.rss_bytes),
        gateway_peak_rss_mib=mib(max(peak[0], after.gateway.peak_rss_bytes)),
        upstream_cpu_s=upstream_cpu,
        loadgen_cpu_s=loadgen_cpu,
        core_busy={str(core): seconds / elapsed for core, seconds in sorted(busy.items())},
        background_cpu_s=sum(busy.values()) - gateway_cpu - upstream_cpu - loadgen_cpu,
    )
    return result, resources


async def run_phase(
    bench: Bench,
    target: Target,
    spec: LoadSpec,
    gateway_pid: int,
    *,
    rounds: int = 1,
    warm_up: bool = True,
) -> PhaseSummary:
    """``spec`` against ``target`` (``rounds`` times, each after a warm-up unless ``warm_up`` is
    false), its runs pooled into one summary; process ``gateway_pid`` is the measured one."""
    runs: list[LoadResult] = []
    parts: list[ResourceUse] = []
    for _ in range(rounds):
        client = LoadClient(target)
        try:
            if warm_up:
                warm = LoadSpec(
                    concurrency=spec.concurrency,
                    requests=spec.concurrency,
                    max_seconds=spec.max_seconds,
                    stream=spec.stream,
                )
                await run_load(client, warm)
            result, resources = await measure(bench, client, spec, gateway_pid)
        finally:
            client.close()
        if bench.raw is not None:
            bench.raw.append(result)
        runs.append(result)
        parts.append(resources)
    return summarize(runs, parts, gateway=target.name != "direct")
