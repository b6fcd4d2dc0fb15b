"""Publish a run: ``RESULTS-tables.md`` and the plots ``RESULTS.md`` links to, from the results
JSON that ``benchmarks.run`` wrote.

    python -m benchmarks.publish benchmarks/results/latest-long.json

Benchmark tooling. ``RESULTS.md`` is written by hand (what the numbers mean, across runs);
``RESULTS-tables.md`` is generated, never edited: the run's tables (:func:`tables.markdown`)
under a banner naming the JSON it came from, and links to the PNG plots (:mod:`benchmarks.plots`)
written to ``benchmarks/figures/``. Without matplotlib it stops with a clear message before
writing anything, unless ``--no-plots`` asks for the tables alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import msgspec

from . import plots, tables
from .report import Report, read_report

__all__ = ["main", "tables_document"]

BENCH_DIR = Path(__file__).resolve().parent
TABLES = BENCH_DIR / "RESULTS-tables.md"
FIGURES = BENCH_DIR / "figures"


def tables_document(report: Report, source: str, figures: list[tuple[str, str]]) -> str:
    """The generated tables file: a banner naming ``source`` (the JSON's file name), the run's
    tables, then ``figures`` (``(title, relative path)``) as image links."""
    banner = (
        f"<!-- Generated from {source} by `python -m benchmarks.publish`: do not edit by hand, "
        "regenerate it. The written analysis is in RESULTS.md. -->"
    )
    out = [banner, "", tables.markdown(report).rstrip("\n")]
    if figures:
        out += ["", "## Plots", ""]
        for title, path in figures:
            out += [f"![{title}]({path})", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.publish",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("results", type=Path, help="a results JSON written by benchmarks.run")
    parser.add_argument("--tables", type=Path, default=TABLES, help="default: %(default)s")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="default: %(default)s")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = _arguments(argv)
    if not arguments.no_plots and not plots.available():
        print(
            f"benchmarks.publish: {plots.MISSING}; --no-plots writes the tables alone",
            file=sys.stderr,
        )
        return 2
    try:
        report = read_report(arguments.results.read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        print(f"benchmarks.publish: cannot read {arguments.results}: {exc}", file=sys.stderr)
        return 2
    figures: list[tuple[str, str]] = []
    if not arguments.no_plots:
        charts = {chart.name: chart.title for chart in plots.charts(report)}
        for path in plots.render(report, arguments.figures):
            link = os.path.relpath(path.resolve(), arguments.tables.resolve().parent)
            figures.append((charts[path.stem], Path(link).as_posix()))
            print(f"wrote {path}", file=sys.stderr)
    text = tables_document(report, arguments.results.name, figures)
    arguments.tables.parent.mkdir(parents=True, exist_ok=True)
    arguments.tables.write_text(text, encoding="utf-8")
    print(f"wrote {arguments.tables}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
