"""The benchmark scenarios: each runs the same load against the gateway and directly against
the mock upstream, and reports both side by side, as a result struct of the JSON.

Benchmark tooling. Each scenario is a function of a :class:`phases.Bench` (the running
processes and the profile) that returns its result struct (:mod:`benchmarks.results`);
measuring one phase is :mod:`benchmarks.phases`' job, the numbers out of it
:mod:`benchmarks.summary`'s.

1. :func:`streaming_latency`: added time to first token and inter-token gap at each
   concurrency level, with throughput and gateway CPU per token (scenario 2 reads it at 50).
3. :func:`non_streaming`: ``stream: false`` requests per second at saturation.
4. :func:`idle_streams`: memory per open idle stream (streams whose first token never comes).
5. :func:`disconnects`: client disconnect to upstream connection close, as the mock saw it.
6. :func:`workers`: scenarios 1 and 3 again against ``hypercorn -k trio --workers N``.
7. :func:`cpu_profile`: py-spy samples of the gateway under streaming load, by layer.

:func:`floor` runs the target measurements of 1, 2, 4 and 5 through ``benchmarks.floor_relay``
instead of the gateway: a relay on the same serving stack, the floor the gateway is compared
with; :func:`floors` runs it for the bare ASGI relay, then for the quart-trio one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import AsyncExitStack

import trio

from . import procstats, profiling
from .loadgen import LoadClient, LoadSpec, Target, open_streams, run_load
from .phases import Bench, measure, run_phase
from .processes import GatewayProcess, open_floor_relay, open_gateway
from .results import (
    DisconnectResult,
    FloorResult,
    MemoryResult,
    MemoryStep,
    ProfileResult,
    WorkersResult,
)
from .summary import Comparison, PhaseSummary, compare, mib, percentiles, summarize

__all__ = [
    "cpu_profile",
    "disconnects",
    "floor",
    "floors",
    "idle_streams",
    "non_streaming",
    "streaming_latency",
    "workers",
]

_STREAMS_READY_BOUND = 120.0
_SETTLE_SECONDS = 0.5
_CLOSE_WAIT_BOUND = 10.0


# -- 1 and 2: streaming latency, throughput and CPU per token ------------------------------------


async def _streaming_levels(
    bench: Bench,
    target: Target,
    pid: int,
    levels: list[int],
    direct: Mapping[int, PhaseSummary] | None = None,
) -> list[Comparison]:
    """At each concurrency level of ``levels`` (the profile's requests per level): the
    streaming load direct, then through ``target`` (process ``pid``). ``direct``: reuse these
    direct phases, by concurrency, where they exist (same spec, same upstream)."""
    profile = bench.profile
    await bench.streaming_upstream()
    comparisons: list[Comparison] = []
    for concurrency in levels:
        spec = LoadSpec(concurrency, profile.levels[concurrency], profile.phase_max_s)
        plain = (direct or {}).get(concurrency)
        if plain is None:
            plain = await run_phase(bench, bench.direct, spec, pid, rounds=profile.rounds)
        through = await run_phase(bench, target, spec, pid, rounds=profile.rounds)
        comparisons.append(compare(plain, through))
    return comparisons


async def streaming_latency(bench: Bench) -> list[Comparison]:
    """Scenario 1 (and 2): the same streaming load, direct then through the gateway, at each
    concurrency level."""
    return await _streaming_levels(
        bench, bench.through(bench.gateway), bench.gateway.pid, list(bench.profile.levels)
    )


# -- 3: non-streaming requests per second ---------------------------------------------------------


async def non_streaming(
    bench: Bench, gateway: GatewayProcess | None = None, direct: PhaseSummary | None = None
) -> Comparison:
    """Scenario 3: closed-loop ``stream: false`` requests for a fixed time, an upstream that
    answers at once (64 tokens, no delay). ``direct``: reuse that direct phase."""
    profile = bench.profile
    gateway = gateway or bench.gateway
    await bench.instant_upstream()
    spec = LoadSpec(
        profile.nonstream_concurrency,
        requests=10_000_000,
        max_seconds=profile.nonstream_s,
        stream=False,
    )
    if direct is None:
        direct = await run_phase(bench, bench.direct, spec, gateway.pid)
    through = await run_phase(bench, bench.through(gateway), spec, gateway.pid)
    return compare(direct, through)


# -- 4: memory per open idle stream ---------------------------------------------------------------


def _slope(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    denominator = sum((x - mean_x) ** 2 for x, _ in points)
    if denominator == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / denominator


async def _hold_idle_streams(
    bench: Bench, target: Target, pid: int, counts: list[int] | None = None
) -> MemoryResult:
    """Open idle streams to ``target`` until ``counts`` (default: the profile's ``idle_steps``)
    are open, reading the RSS of process ``pid`` at each; then close them all and wait for the
    mock to see every upstream connection close."""
    baseline_connections = (await bench.upstream.stats()).open_connections
    await trio.sleep(_SETTLE_SECONDS)
    baseline = procstats.sample_tree(pid).rss_bytes
    points = [(0.0, float(baseline))]
    steps: list[MemoryStep] = []
    async with AsyncExitStack() as stack:
        opened = 0
        for count in bench.profile.idle_steps if counts is None else counts:
            started = time.monotonic()
            streams = await stack.enter_async_context(open_streams(target, count - opened))
            with trio.move_on_after(_STREAMS_READY_BOUND):
                await streams.settled.wait()
            open_s = time.monotonic() - started
            await trio.sleep(_SETTLE_SECONDS)
            rss = procstats.sample_tree(pid).rss_bytes
            ready = (steps[-1].ready if steps else 0) + streams.ready
            failed = (steps[-1].failed if steps else 0) + streams.failed
            steps.append(MemoryStep(count, ready, failed, mib(rss), open_s))
            points.append((float(ready), float(rss)))
            opened = count
        closed_at = time.monotonic()
    released: float | None = None
    with trio.move_on_after(_CLOSE_WAIT_BOUND):
        while True:  # the mock is another process: poll it
            if (await bench.upstream.stats()).open_connections <= baseline_connections:
                released = time.monotonic() - closed_at
                break
            await trio.sleep(0.01)
    await trio.sleep(_SETTLE_SECONDS)
    slope = _slope(points[1:])
    with_baseline = _slope(points)
    return MemoryResult(
        target=target.name,
        baseline_rss_mib=mib(baseline),
        steps=steps,
        per_stream_kib=None if slope is None else slope / 1024,
        per_stream_with_baseline_kib=None if with_baseline is None else with_baseline / 1024,
        after_close_rss_mib=mib(procstats.sample_tree(pid).rss_bytes),
        upstream_released_s=released,
    )


async def idle_streams(bench: Bench) -> list[MemoryResult]:
    """Scenario 4: open streams whose first token never comes (the mock holds them), in steps;
    RSS at each step. The "direct" line is the mock upstream's own RSS, for scale. Run it on a
    fresh gateway: a few complete streams first (imports and caches a first request fills),
    then the steps."""
    await _fill_caches(bench, [bench.direct, bench.through(bench.gateway)])
    direct = await _hold_idle_streams(bench, bench.direct, bench.upstream.pid)
    gateway = await _hold_idle_streams(bench, bench.through(bench.gateway), bench.gateway.pid)
    return [direct, gateway]


async def _fill_caches(bench: Bench, targets: list[Target]) -> None:
    """A few complete requests to each of ``targets`` (what a first request fills: imports,
    caches, pools); then the upstream holds every stream before its first token."""
    await bench.instant_upstream()
    for target in targets:
        client = LoadClient(target)
        try:
            await run_load(client, LoadSpec(10, 20, 30.0))
        finally:
            client.close()
    await bench.streaming_upstream(first_token_delay=3600.0)


# -- 5: disconnect to upstream cancel -------------------------------------------------------------


async def _disconnect_phase(bench: Bench, target: Target) -> DisconnectResult:
    profile = bench.profile
    await bench.upstream.records()  # forget earlier requests
    spec = LoadSpec(
        profile.disconnect_concurrency,
        profile.disconnect_requests,
        profile.phase_max_s,
        disconnect_after_tokens=profile.disconnect_after_tokens,
        keep_alive=False,
    )
    client = LoadClient(target)
    try:
        result = await run_load(client, spec)
    finally:
        client.close()
    await trio.sleep(_SETTLE_SECONDS)  # let the last closes reach the mock
    records = {record.tag: record for record in await bench.upstream.records() if record.tag}
    latencies: list[float] = []
    disconnected = not_cancelled = 0
    errors: dict[str, int] = {}
    for request in result.results:
        if request.error is not None:
            errors[request.error] = errors.get(request.error, 0) + 1
        if request.disconnected_at is None:
            continue
        disconnected += 1
        record = records.get(request.tag)
        if record is None or record.closed_at is None or record.closed_by != "client":
            not_cancelled += 1
            continue
        latencies.append(record.closed_at - request.disconnected_at)
    return DisconnectResult(
        target=target.name,
        concurrency=spec.concurrency,
        requests=len(result.results),
        disconnected=disconnected,
        cancelled=len(latencies),
        not_cancelled=not_cancelled,
        latency_ms=percentiles(latencies),
        errors=errors,
    )


async def disconnects(bench: Bench) -> list[DisconnectResult]:
    """Scenario 5: each stream is closed by the client after a few tokens; latency from that
    close to the mock upstream seeing its connection closed (``time.monotonic()`` in both
    processes)."""
    await bench.streaming_upstream()
    direct = await _disconnect_phase(bench, bench.direct)
    gateway = await _disconnect_phase(bench, bench.through(bench.gateway))
    return [direct, gateway]


def _cpus_text(cpus: set[int] | None) -> str:
    return f"on cores {','.join(map(str, sorted(cpus)))}" if cpus else "not pinned"


# -- 6: hypercorn --workers N ---------------------------------------------------------------------


async def workers(bench: Bench, direct_plain: PhaseSummary | None = None) -> WorkersResult:
    """Scenario 6: the gateway under ``hypercorn -k trio --workers N``
    (``trio_gateway.server.asgi:app``) on every core (N workers on a 2-core machine need both;
    the load side stays on its core)."""
    profile = bench.profile
    command = f"hypercorn -k trio --workers {profile.workers} trio_gateway.server.asgi:app"
    # Set explicitly: unpinned, the gateway would inherit the load generator's core.
    cpus = bench.all_cpus or None
    async with open_gateway(
        bench.upstream.url, bench.workdir, cpus=cpus, workers=profile.workers
    ) as gateway:
        await trio.sleep(_SETTLE_SECONDS)
        idle = procstats.sample_tree(gateway.pid)
        members = procstats.tree(gateway.pid)
        cpu_before = [procstats.sample(pid).cpu_seconds for pid in members]
        await bench.streaming_upstream()
        streaming: list[PhaseSummary] = []
        for concurrency in profile.workers_levels:
            requests = profile.levels.get(concurrency, concurrency * 2)
            spec = LoadSpec(concurrency, requests, profile.phase_max_s)
            streaming.append(await run_phase(bench, bench.through(gateway), spec, gateway.pid))
        plain = await non_streaming(bench, gateway, direct_plain)
        cpu_after = [procstats.sample(pid).cpu_seconds for pid in members]
        return WorkersResult(
            workers=profile.workers,
            command=command,
            cpus=_cpus_text(cpus),
            processes=idle.processes,
            idle_rss_mib=mib(idle.rss_bytes),
            process_cpu_s=[
                after - before for before, after in zip(cpu_before, cpu_after, strict=True)
            ],
            streaming=streaming,
            non_streaming=plain,
        )


# -- 7: where the CPU goes ------------------------------------------------------------------------


async def cpu_profile(bench: Bench) -> ProfileResult:
    """py-spy on the gateway during a streaming phase at ``profile_concurrency``. py-spy runs
    on the load side's core and pauses the gateway briefly for each sample."""
    profile = bench.profile
    await bench.streaming_upstream()
    target = bench.through(bench.gateway)
    spec = LoadSpec(profile.profile_concurrency, 10_000_000, profile.profile_s + 0.5)
    raw = bench.workdir / "py-spy-gateway.txt"
    client = LoadClient(target)
    try:
        await run_load(client, LoadSpec(spec.concurrency, spec.concurrency, 30.0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(profiling.record, bench.gateway.pid, profile.profile_s, raw)
            result, resources = await measure(bench, client, spec, bench.gateway.pid)
    finally:
        client.close()
    phase = summarize([result], [resources], gateway=True)
    text = await trio.Path(raw).read_text(errors="replace")
    return ProfileResult(
        concurrency=spec.concurrency,
        seconds=profile.profile_s,
        phase=phase,
        breakdown=profiling.breakdown(text, cpu_per_token_us=phase.cpu_per_token_us),
        raw_path=str(raw),
    )


# -- the stack floor: the same targets through a bare relay ---------------------------------------


async def floor(
    bench: Bench, direct: Mapping[int, PhaseSummary] | None = None, framework: str = "bare"
) -> FloorResult:
    """The floor scenario for one relay (``framework``: ``bare`` or ``quart``): the targets'
    measurements (idle streams first, on the fresh relay; streaming at ``floor_levels``;
    disconnects) through it, pinned like the gateway. ``direct``: direct phases by
    concurrency to reuse (the latency scenario's, when it ran)."""
    profile = bench.profile
    levels = [level for level in profile.floor_levels if level in profile.levels]
    async with open_floor_relay(
        bench.upstream.url, cpus=bench.gateway_cpus, framework=framework
    ) as relay:
        await trio.sleep(_SETTLE_SECONDS)
        startup_rss = procstats.sample(relay.pid).rss_bytes
        target = bench.through_floor(relay, framework)
        await _fill_caches(bench, [target])
        memory = await _hold_idle_streams(bench, target, relay.pid, profile.floor_idle_steps)
        latency = await _streaming_levels(bench, target, relay.pid, levels, direct)
        disconnect = await _disconnect_phase(bench, target)
    return FloorResult(
        framework=framework,
        command=relay.command,
        cpus=_cpus_text(bench.gateway_cpus),
        startup_rss_mib=mib(startup_rss),
        latency=latency,
        memory=memory,
        disconnect=disconnect,
        direct_reused=bool(direct) and all(level in (direct or {}) for level in levels),
    )


async def floors(
    bench: Bench, direct: Mapping[int, PhaseSummary] | None = None
) -> list[FloorResult]:
    """:func:`floor` for the bare relay, then for the quart-trio one, with the same direct
    phases: ``direct`` (the latency scenario's), else the ones the bare relay's run measured."""
    bare = await floor(bench, direct, "bare")
    shared = direct or {comparison.concurrency: comparison.direct for comparison in bare.latency}
    quart = await floor(bench, shared, "quart")
    return [bare, quart]
