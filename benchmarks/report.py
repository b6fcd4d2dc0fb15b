"""The result document of a benchmark run: machine, versions, scenarios, targets (the JSON).

Benchmark tooling. :class:`Report` is what ``benchmarks.run`` writes as JSON and what
:func:`read_report` reads back (``benchmarks.tables`` renders it as markdown,
``benchmarks.plots`` as PNG plots); :func:`machine` collects the machine's facts;
:func:`check_targets` and :func:`floor_targets` fill in its target tables (``benchmarks.targets``
has the goals).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import msgspec

from .profiles import Profile
from .results import (
    ClusterResult,
    DisconnectResult,
    FloorResult,
    MemoryResult,
    ProfileResult,
    WorkersResult,
)
from .summary import Comparison
from .targets import FloorRow, StackNumbers, TargetCheck, floor_rows, stack_numbers, target_checks

__all__ = [
    "Machine",
    "Report",
    "check_targets",
    "floor_targets",
    "machine",
    "read_report",
]

_PACKAGES = (
    "trio-gateway",
    "trio",
    "quart",
    "quart-trio",
    "hypercorn",
    "h11",
    "httpx",
    "httpcore",
    "msgspec",
    "werkzeug",
)


class Machine(msgspec.Struct, frozen=True):
    cpu_model: str
    cpus: int
    memory_gib: float
    kernel: str
    python: str
    versions: dict[str, str]
    git_commit: str | None
    #: Files of the working tree that differ from the commit (the gateway as measured).
    git_modified: list[str]
    #: Load average (1 min) when the run started: other programs on a shared machine.
    load_average_at_start: float


class Report(msgspec.Struct):
    profile: Profile
    started_at: str
    duration_s: float
    machine: Machine
    pinning: str
    gateway_startup_rss_mib: float
    gateway_command: str
    latency: list[Comparison] = msgspec.field(default_factory=list)
    non_streaming: Comparison | None = None
    memory: list[MemoryResult] = msgspec.field(default_factory=list)
    disconnect: list[DisconnectResult] = msgspec.field(default_factory=list)
    workers: WorkersResult | None = None
    workers_skipped: str | None = None
    #: The ``cluster`` scenario (PostgreSQL); ``cluster_skipped`` says why it did not run.
    cluster: ClusterResult | None = None
    cluster_skipped: str | None = None
    cpu_profile: ProfileResult | None = None
    #: The ``floor`` scenario: the bare relay's and the quart-trio relay's results (on the
    #: gateway's stack), and its table by target.
    floors: list[FloorResult] = msgspec.field(default_factory=list)
    floor_targets: list[FloorRow] = msgspec.field(default_factory=list)
    targets: list[TargetCheck] = msgspec.field(default_factory=list)
    scenario_seconds: dict[str, float] = msgspec.field(default_factory=dict)
    notes: list[str] = msgspec.field(default_factory=list)
    #: The temporary directory of the run (configs, gateway logs); removed unless kept.
    workdir: str = ""


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.rstrip("\n")


def machine() -> Machine:
    """Facts about this machine and the installed versions (read-only git queries)."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) / 1024 / 1024
                break
    except OSError:
        pass
    versions: dict[str, str] = {}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    status = _git("status", "--porcelain", "--", "trio_gateway", "pyproject.toml") or ""
    return Machine(
        cpu_model=model,
        cpus=os.cpu_count() or 0,
        memory_gib=round(memory, 1),
        kernel=platform.release(),
        python=platform.python_version(),
        versions=versions,
        git_commit=(_git("rev-parse", "--short", "HEAD") or "").strip() or None,
        git_modified=[line[3:] for line in status.splitlines() if line.strip()],
        load_average_at_start=os.getloadavg()[0],
    )


def read_report(data: bytes) -> Report:
    """A report from the JSON ``benchmarks.run`` wrote (``msgspec.ValidationError`` when it is
    not one)."""
    return msgspec.json.decode(data, type=Report)


# -- targets ---------------------------------------------------------------------------------------


def _gateway_numbers(report: Report) -> StackNumbers:
    return stack_numbers(
        report.latency,
        next((m for m in report.memory if m.target == "gateway"), None),
        next((d for d in report.disconnect if d.target == "gateway"), None),
        idle_rss_mib=report.gateway_startup_rss_mib or None,
    )


def check_targets(report: Report) -> list[TargetCheck]:
    """The targets against this report's numbers (``met`` is ``None`` when a scenario did not
    run)."""
    return target_checks(_gateway_numbers(report), report.latency)


def _floor_numbers(report: Report, framework: str) -> StackNumbers:
    for result in report.floors:
        if result.framework == framework:
            return stack_numbers(result.latency, result.memory, result.disconnect)
    return StackNumbers()


def floor_targets(report: Report) -> list[FloorRow]:
    """:func:`floor_rows` for a report (empty when the floor scenario did not run)."""
    if not report.floors:
        return []
    return floor_rows(
        _gateway_numbers(report), _floor_numbers(report, "bare"), _floor_numbers(report, "quart")
    )
