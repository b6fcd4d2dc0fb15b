"""CPU seconds and memory of a process (and its children) from ``/proc``.

Benchmark tooling; Linux only. ``cpu_seconds`` is ``utime + stime`` from ``/proc/<pid>/stat``
(every thread of the process), in clock ticks turned into seconds. Memory comes from
``/proc/<pid>/status``: ``VmRSS`` now and ``VmHWM`` (the peak since start, or since
:func:`reset_peak`). A *tree* is a process with its descendants, for a server whose workers
are child processes (``hypercorn --workers N``). :func:`cpu_busy_seconds` reads ``/proc/stat``:
how busy each core was, so a run can tell how much CPU other programs on a shared machine took.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcSample",
    "children",
    "cpu_busy_seconds",
    "reset_peak",
    "sample",
    "sample_tree",
    "tree",
]

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One reading of a process, or the sum over a process tree."""

    cpu_seconds: float
    rss_bytes: int
    peak_rss_bytes: int
    processes: int = 1
    #: The kernel's share of ``cpu_seconds`` (``stime``): system calls, the TCP stack.
    system_seconds: float = 0.0


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """``(user + system, system)`` seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # Fields 14 and 15 of the stat line (utime, stime) are 11 and 12 after the name and state.
    user, system = int(fields[11]) / _TICKS, int(fields[12]) / _TICKS
    return user + system, system


def _memory(pid: int) -> tuple[int, int]:
    rss = peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return rss, peak


def sample(pid: int) -> ProcSample:
    """CPU seconds used so far and memory of ``pid``."""
    rss, peak = _memory(pid)
    cpu, system = _cpu_seconds(pid)
    return ProcSample(cpu, rss, peak, system_seconds=system)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (from every thread's ``children`` list)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            found.extend(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids = [pid]
    index = 0
    while index < len(pids):
        pids.extend(children(pids[index]))
        index += 1
    return pids


def sample_tree(pid: int) -> ProcSample:
    """The sum over ``pid`` and its descendants (processes that vanish are skipped)."""
    cpu = system = 0.0
    rss = peak = count = 0
    for member in tree(pid):
        try:
            one = sample(member)
        except (FileNotFoundError, ProcessLookupError):
            continue
        cpu += one.cpu_seconds
        system += one.system_seconds
        rss += one.rss_bytes
        peak += one.peak_rss_bytes
        count += 1
    return ProcSample(cpu, rss, peak, count, system)


def reset_peak(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (``clear_refs`` 5); ``False`` if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cpu_busy_seconds() -> dict[int, float]:
    """Busy seconds of each core since boot (everything but idle and iowait)."""
    busy: dict[int, float] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *values = line.split()
        ticks = [int(value) for value in values]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        # guest time is already counted in user time
        busy[int(name[3:])] = (sum(ticks[:8]) - idle) / _TICKS
    return busy
