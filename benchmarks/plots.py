"""PNG plots of a benchmark run: time to first token and inter-token gap percentiles against
concurrency (the gateway beside direct and beside the floor relays), and CPU per streamed token.

Benchmark tooling. matplotlib comes with the ``bench`` extra (``pip install -e '.[bench]'``,
which ``nox -s bench`` installs); the suite runs without it. :func:`charts` picks the numbers
out of a :class:`report.Report` (plain data, no matplotlib); :func:`figure` draws one chart with
matplotlib's object API on the Agg canvas (no display, no global pyplot state); :func:`render`
writes the PNGs. matplotlib is imported only inside :func:`figure` and :func:`render`, and
:func:`available` says whether it is installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .report import Report
from .summary import Comparison, Percentiles, PhaseSummary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "MISSING",
    "Chart",
    "Curve",
    "Panel",
    "available",
    "charts",
    "figure",
    "render",
]

#: What to say when matplotlib is not installed.
MISSING = "matplotlib is not installed (pip install -e '.[bench]', or nox -s bench)"

#: Curve names, in drawing order, and their colours (the same in every chart).
_COLOURS = {
    "direct": "#7f7f7f",
    "gateway": "#1f77b4",
    "bare relay": "#2ca02c",
    "quart relay": "#ff7f0e",
}
_RELAYS = {"bare": "bare relay", "quart": "quart relay"}
_DPI = 110


@dataclass(frozen=True)
class Curve:
    """One stack's values by concurrency level (levels it was not measured at are left out)."""

    label: str
    concurrency: list[int]
    values: list[float]


@dataclass(frozen=True)
class Panel:
    title: str
    curves: list[Curve]


@dataclass(frozen=True)
class Chart:
    """One PNG: ``name`` is its file name without ``.png``; panels side by side."""

    name: str
    title: str
    unit: str
    panels: list[Panel]


def available() -> bool:
    """Whether matplotlib is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def _stacks(report: Report) -> list[tuple[str, list[PhaseSummary]]]:
    """Each measured stack's streaming phases: direct (the latency scenario's, else the floor
    scenario's), the gateway, then each floor relay."""
    direct: dict[int, PhaseSummary] = {}
    for comparisons in [report.latency, *(floor.latency for floor in report.floors)]:
        for comparison in comparisons:
            direct.setdefault(comparison.concurrency, comparison.direct)
    stacks = [("direct", [direct[level] for level in sorted(direct)])]
    stacks.append(("gateway", _through(report.latency)))
    for floor in report.floors:
        stacks.append((_RELAYS.get(floor.framework, floor.framework), _through(floor.latency)))
    return stacks


def _through(comparisons: list[Comparison]) -> list[PhaseSummary]:
    return [c.gateway for c in sorted(comparisons, key=lambda c: c.concurrency)]


def _curves(
    stacks: list[tuple[str, list[PhaseSummary]]], value: Callable[[PhaseSummary], float | None]
) -> list[Curve]:
    curves: list[Curve] = []
    for label, phases in stacks:
        points = [(phase.concurrency, value(phase)) for phase in phases]
        kept = [(level, number) for level, number in points if number is not None]
        if kept:
            curves.append(Curve(label, [level for level, _ in kept], [v for _, v in kept]))
    return curves


def _percentile(
    field: Callable[[PhaseSummary], Percentiles | None], name: str
) -> Callable[[PhaseSummary], float | None]:
    def value(phase: PhaseSummary) -> float | None:
        found = field(phase)
        return None if found is None else float(getattr(found, name))

    return value


def charts(report: Report) -> list[Chart]:
    """The charts of ``report`` that have something to show: TTFT p50/p99 (``ttft``),
    inter-token gap p50/p99 (``gap``), gateway and relay CPU per streamed token
    (``cpu-per-token``)."""
    stacks = _stacks(report)
    found = [
        Chart(
            "ttft",
            "Time to first token against concurrency",
            "ms",
            [
                Panel(f"TTFT {q}", _curves(stacks, _percentile(lambda p: p.ttft_ms, q)))
                for q in ("p50", "p99")
            ],
        ),
        Chart(
            "gap",
            "Inter-token gap against concurrency",
            "ms",
            [
                Panel(f"gap {q}", _curves(stacks, _percentile(lambda p: p.gap_ms, q)))
                for q in ("p50", "p99")
            ],
        ),
        Chart(
            "cpu-per-token",
            "CPU per streamed token",
            "µs",
            [
                Panel(
                    "the measured process (direct has none)",
                    _curves(stacks[1:], lambda p: p.cpu_per_token_us),
                )
            ],
        ),
    ]
    return [chart for chart in found if any(panel.curves for panel in chart.panels)]


def figure(chart: Chart) -> Figure:
    """``chart`` drawn on a new matplotlib figure (Agg canvas): one axes per panel, one line per
    curve, labelled with the curve's name; concurrency on a log scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = Figure(figsize=(max(6.4, 5.0 * len(chart.panels)), 3.8), layout="constrained")
    FigureCanvasAgg(drawn)
    axes = drawn.subplots(1, len(chart.panels), squeeze=False)[0]
    for ax, panel in zip(axes, chart.panels, strict=True):
        levels: set[int] = set()
        for curve in sorted(panel.curves, key=_order):
            ax.plot(
                curve.concurrency,
                curve.values,
                marker="o",
                label=curve.label,
                color=_COLOURS.get(curve.label),
            )
            levels.update(curve.concurrency)
        ax.set_xscale("log")
        ticks = sorted(levels)
        ax.set_xticks(ticks, [str(level) for level in ticks])
        ax.minorticks_off()
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel(chart.unit)
        ax.set_ylim(bottom=0)
        ax.set_title(panel.title)
        ax.grid(True, alpha=0.3)
        if panel.curves:
            ax.legend()
    drawn.suptitle(chart.title)
    return drawn


def _order(curve: Curve) -> int:
    names = list(_COLOURS)
    return names.index(curve.label) if curve.label in names else len(names)


def render(report: Report, directory: Path, *, prefix: str = "") -> list[Path]:
    """Write each chart of ``report`` as ``<directory>/<prefix><name>.png``; return the paths.
    Needs matplotlib (:func:`available`)."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for chart in charts(report):
        path = directory / f"{prefix}{chart.name}.png"
        figure(chart).savefig(path, dpi=_DPI)
        written.append(path)
    return written
