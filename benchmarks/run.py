"""Run the benchmark suite: ``python -m benchmarks.run --profile short|long``.

Benchmark tooling (``nox -s bench`` runs the short profile), run from the repository's root.
It starts the mock upstream and the gateway as processes of their own, pins the gateway to
core 0 and itself (the load generator) and the mock to core 1, runs the scenarios (see
:mod:`benchmarks.scenarios` and README.md), and writes
``benchmarks/results/<time>-<profile>.json`` and ``.md`` plus ``latest-<profile>.*``, and the
PNG plots ``<time>-<profile>-<chart>.png`` when matplotlib is installed (the ``bench`` extra;
it says so when it is not). The ``floor`` scenario also starts ``benchmarks.floor_relay`` (a
bare relay on the same serving stack, then the same relay as a quart-trio route) on the
gateway's core, while the gateway idles. Every load phase is bounded in count and time; the
whole run stops by itself. ``benchmarks.publish`` turns a results JSON into
``RESULTS-tables.md`` and the plots ``RESULTS.md`` links to.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import msgspec
import psycopg
import trio

from . import cluster, plots, procstats, profiling, report, scenarios, tables
from .loadgen import LoadResult
from .phases import Bench
from .processes import BENCH_DIR, open_gateway, open_upstream
from .profiles import PROFILES

__all__ = ["main"]

SCENARIOS = (
    "latency",
    "non-streaming",
    "memory",
    "disconnect",
    "workers",
    "profile",
    "floor",
    "cluster",
)
#: What runs without ``--only``: ``cluster`` needs a PostgreSQL server and is asked for by name.
DEFAULT_SCENARIOS = tuple(name for name in SCENARIOS if name != "cluster")
_T = TypeVar("_T")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        help="run these scenarios only (default: all but cluster, which needs PostgreSQL)",
    )
    parser.add_argument("--skip", nargs="+", choices=SCENARIOS, default=[])
    parser.add_argument(
        "--py-spy",
        type=float,
        metavar="SECONDS",
        help="profile the gateway with py-spy for SECONDS at concurrency 50 "
        "(default: the profile's setting; 0: off)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the gateway, mock and load generator at this niceness (e.g. -10 on a shared "
        "machine, as root; default 0)",
    )
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results")
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temporary directory (configs, gateway logs, state) instead of removing it",
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="also write every request's record (times, gaps, errors) as <name>-requests.json",
    )
    return parser.parse_args(argv)


def _pinning(no_pin: bool) -> tuple[set[int] | None, set[int] | None, str]:
    available = sorted(os.sched_getaffinity(0))
    if no_pin:
        return None, None, "none (--no-pin)"
    if len(available) < 2:
        return None, None, f"none (only {len(available)} core available)"
    gateway, load = {available[0]}, {available[1]}
    return (
        gateway,
        load,
        f"gateway on core {available[0]}; load generator, mock upstream and py-spy on core "
        f"{available[1]}",
    )


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _timed(seconds: dict[str, float], name: str, step: Callable[[], Awaitable[_T]]) -> _T:
    started = time.monotonic()
    try:
        return await step()
    finally:
        seconds[name] = time.monotonic() - started
        print(f"  {name}: {seconds[name]:.1f} s", file=sys.stderr, flush=True)


async def run(arguments: argparse.Namespace) -> tuple[report.Report, list[LoadResult]]:
    profile = PROFILES[arguments.profile]
    if arguments.py_spy is not None:
        profile = msgspec.structs.replace(profile, profile_s=arguments.py_spy)
    wanted = set(arguments.only or DEFAULT_SCENARIOS) - set(arguments.skip)
    all_cpus = set(os.sched_getaffinity(0))
    gateway_cpus, load_cpus, pinning = _pinning(arguments.no_pin)
    if load_cpus is not None:
        os.sched_setaffinity(0, load_cpus)  # the load generator; children inherit it
    _raise_file_limit()
    if arguments.nice:
        os.setpriority(os.PRIO_PROCESS, 0, arguments.nice)  # children inherit it
    started = time.monotonic()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    seconds: dict[str, float] = {}
    notes: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="epiloop-bench-"))
    raw: list[LoadResult] = []
    result: report.Report
    async with open_upstream(cpus=load_cpus) as upstream:
        async with open_gateway(upstream.url, workdir, cpus=gateway_cpus) as gateway:
            await trio.sleep(0.5)
            startup_rss = procstats.sample(gateway.pid).rss_bytes
            bench = Bench(profile, upstream, gateway, workdir, gateway_cpus, load_cpus, all_cpus)
            if arguments.raw:
                bench.raw = raw
            result = report.Report(
                profile=profile,
                started_at=stamp,
                duration_s=0.0,
                machine=report.machine(),
                pinning=pinning,
                gateway_startup_rss_mib=startup_rss / 1024 / 1024,
                gateway_command="python -m trio_gateway gateway --port 0 --config FILE",
            )
            print(f"benchmark profile {profile.name}: {pinning}", file=sys.stderr, flush=True)
            # Memory first, on the fresh gateway: what earlier scenarios allocated and freed
            # would otherwise hide the first streams' cost.
            if "memory" in wanted:
                result.memory = await _timed(
                    seconds, "memory", lambda: scenarios.idle_streams(bench)
                )
            if "latency" in wanted:
                result.latency = await _timed(
                    seconds, "latency", lambda: scenarios.streaming_latency(bench)
                )
            if "non-streaming" in wanted:
                result.non_streaming = await _timed(
                    seconds, "non-streaming", lambda: scenarios.non_streaming(bench)
                )
            if "disconnect" in wanted:
                result.disconnect = await _timed(
                    seconds, "disconnect", lambda: scenarios.disconnects(bench)
                )
            if "profile" in wanted and profile.profile_s > 0:
                if profiling.py_spy() is None:
                    notes.append("py-spy profile skipped: py-spy is not installed")
                else:
                    result.cpu_profile = await _timed(
                        seconds, "profile", lambda: scenarios.cpu_profile(bench)
                    )
            if "floor" in wanted:
                # Each relay (bare, then quart-trio) takes the gateway's core while the gateway
                # idles; the direct phases of the latency scenario (same spec) are the floors'
                # baseline too.
                direct = {c.concurrency: c.direct for c in result.latency}
                result.floors = await _timed(
                    seconds, "floor", lambda: scenarios.floors(bench, direct)
                )
        if "workers" in wanted:
            try:
                plain = result.non_streaming.direct if result.non_streaming else None
                result.workers = await _timed(
                    seconds, "workers", lambda: scenarios.workers(bench, plain)
                )
            except (RuntimeError, trio.TooSlowError) as exc:
                result.workers_skipped = f"the workers gateway did not run: {exc}"
        else:
            result.workers_skipped = "not selected"
        if "cluster" in wanted:
            try:
                result.cluster = await _timed(seconds, "cluster", lambda: cluster.cluster(bench))
            except (RuntimeError, trio.TooSlowError, psycopg.Error) as exc:
                result.cluster_skipped = f"the cluster scenario did not run: {exc}"
        else:
            result.cluster_skipped = "not selected (python -m benchmarks.run --only cluster)"
    result.duration_s = time.monotonic() - started
    result.scenario_seconds = seconds
    if arguments.nice:
        notes.append(f"processes ran at niceness {arguments.nice}")
    notes.append(
        f"waited {bench.quiet_waited_s:.1f} s in all for other programs to leave the cores "
        f"idle; {bench.noisy_phases} phase(s) started while they used more than a tenth of a "
        "core (see the bg column)"
    )
    result.notes = notes + bench.notes
    result.targets = report.check_targets(result)
    result.floor_targets = report.floor_targets(result)
    result.workdir = str(workdir)
    return result, raw


def _name(result: report.Report) -> str:
    return f"{result.started_at.replace(':', '')}-{result.profile.name}"


def _write(result: report.Report, raw: list[LoadResult], output: Path) -> tuple[Path, Path]:
    output.mkdir(parents=True, exist_ok=True)
    name = _name(result)
    data = msgspec.json.format(msgspec.json.encode(result), indent=2)
    text = tables.markdown(result)
    json_path = output / f"{name}.json"
    md_path = output / f"{name}.md"
    json_path.write_bytes(data)
    md_path.write_text(text)
    (output / f"latest-{result.profile.name}.json").write_bytes(data)
    (output / f"latest-{result.profile.name}.md").write_text(text)
    if raw:
        (output / f"{name}-requests.json").write_bytes(msgspec.json.encode(raw))
    return json_path, md_path


def _keep_profile(result: report.Report, output: Path) -> None:
    """Copy py-spy's raw stacks next to the results (the work directory goes away)."""
    profile = result.cpu_profile
    if profile is None or not Path(profile.raw_path).exists():
        return
    output.mkdir(parents=True, exist_ok=True)
    kept = output / f"{_name(result)}-py-spy.txt"
    shutil.copyfile(profile.raw_path, kept)
    result.cpu_profile = msgspec.structs.replace(profile, raw_path=str(kept))


def main(argv: list[str] | None = None) -> None:
    arguments = _arguments(argv)
    result, raw = trio.run(run, arguments)
    _keep_profile(result, arguments.output)
    if not arguments.keep_workdir:
        shutil.rmtree(result.workdir, ignore_errors=True)
    json_path, md_path = _write(result, raw, arguments.output)
    print(tables.markdown(result))
    print(f"\nwrote {json_path} and {md_path}", file=sys.stderr)
    if plots.available():
        for path in plots.render(result, arguments.output, prefix=f"{_name(result)}-"):
            print(f"wrote {path}", file=sys.stderr)
    else:
        print(f"plots not rendered: {plots.MISSING}", file=sys.stderr)


if __name__ == "__main__":
    main()
