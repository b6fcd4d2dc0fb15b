"""The report's plots and the published tables (benchmarks/plots.py, benchmarks/publish.py).

The results document is made by the suite's own code path: request records summarised by
``summary.summarize`` and compared by ``summary.compare``, put in a ``Report`` and read back from
its JSON, as ``benchmarks.publish`` reads what ``benchmarks.run`` wrote. Drawing needs
matplotlib (the ``bench`` extra): that one test is skipped without it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import msgspec
import pytest

from benchmarks import plots, publish
from benchmarks.loadgen import LoadResult, LoadSpec, RequestResult
from benchmarks.profiles import SHORT
from benchmarks.report import Machine, Report, read_report
from benchmarks.results import DisconnectResult, FloorResult, MemoryResult
from benchmarks.summary import Comparison, PhaseSummary, ResourceUse, compare, summarize

LEVELS = (1, 50, 200)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def phase(
    target: str, concurrency: int, ttft_ms: float, gap_ms: float, cpu_s: float
) -> PhaseSummary:
    """Four streamed requests of three tokens: the last one's TTFT twice the others' (so p50 and
    p99 differ), gaps of ``gap_ms``; ``cpu_s`` of the measured process's CPU."""
    spec = LoadSpec(concurrency, requests=4, max_seconds=10.0)
    requests = [
        RequestResult(
            f"bench-request-{index}",
            started_at=100.0 + index * 0.01,
            status=200,
            head_seconds=0.001,
            ttft_seconds=ttft_ms / 1000 * (2 if index == 3 else 1),
            total_seconds=0.5,
            tokens=3,
            gaps=[gap_ms / 1000, gap_ms / 1000],
        )
        for index in range(4)
    ]
    use = ResourceUse(
        gateway_cpu_s=cpu_s,
        gateway_system_cpu_s=cpu_s / 10,
        gateway_rss_mib=50.0,
        gateway_peak_rss_mib=51.0,
        upstream_cpu_s=0.1,
        loadgen_cpu_s=0.1,
        core_busy={"0": 0.5, "1": 0.4},
        background_cpu_s=0.0,
    )
    load = LoadResult(target, spec, 100.0, 101.0, requests)
    return summarize([load], [use], gateway=target != "direct")


def levels(target: str, ttft_ms: float, gap_ms: float, cpu_s: float) -> list[Comparison]:
    """``target`` against direct at each level; both get slower with concurrency."""
    return [
        compare(
            phase("direct", level, 20.0 + level / 10, 10.0, 0.0),
            phase(target, level, ttft_ms + level, gap_ms + level / 100, cpu_s),
        )
        for level in LEVELS
    ]


def relay(framework: str, ttft_ms: float, gap_ms: float, cpu_s: float) -> FloorResult:
    target = f"floor-{framework}"
    return FloorResult(
        framework=framework,
        command=f"python -m benchmarks.floor_relay --upstream URL --framework {framework}",
        cpus="on cores 0",
        startup_rss_mib=50.0,
        latency=levels(target, ttft_ms, gap_ms, cpu_s),
        memory=MemoryResult(target, 50.0, [], 33.0, 32.0, 50.0, 0.01),
        disconnect=DisconnectResult(target, 20, 10, 10, 10, 0, None, {}),
        direct_reused=True,
    )


@pytest.fixture
def report() -> Report:
    """A report with the latency and floor scenarios, as ``benchmarks.publish`` reads it."""
    made = Report(
        profile=SHORT,
        started_at="2026-01-01T00:00:00Z",
        duration_s=1.0,
        machine=Machine("cpu", 2, 4.0, "6.1", "3.11.9", {}, None, [], 0.0),
        pinning="none",
        gateway_startup_rss_mib=50.0,
        gateway_command="python -m trio_gateway gateway",
        latency=levels("gateway", 25.0, 10.5, 0.0024),
        floors=[relay("bare", 21.0, 10.1, 0.0012), relay("quart", 22.0, 10.2, 0.0018)],
    )
    return read_report(msgspec.json.encode(made))


def curves(chart: plots.Chart) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    return {
        (panel.title, curve.label): (curve.concurrency, curve.values)
        for panel in chart.panels
        for curve in panel.curves
    }


def test_charts_put_the_gateway_beside_direct_and_the_relays(report: Report) -> None:
    charts = {chart.name: chart for chart in plots.charts(report)}
    assert list(charts) == ["ttft", "gap", "cpu-per-token"]
    stacks = ["direct", "gateway", "bare relay", "quart relay"]
    ttft = curves(charts["ttft"])
    assert sorted(ttft) == sorted((f"TTFT {q}", name) for q in ("p50", "p99") for name in stacks)
    gateway = report.latency
    assert ttft["TTFT p50", "gateway"] == (
        list(LEVELS),
        [c.gateway.ttft_ms.p50 for c in gateway if c.gateway.ttft_ms],
    )
    assert ttft["TTFT p50", "gateway"][1][0] == pytest.approx(26.0)  # 25 ms + 1 at C=1
    assert ttft["TTFT p99", "bare relay"][1] == [
        c.gateway.ttft_ms.p99 for c in report.floors[0].latency if c.gateway.ttft_ms
    ]
    assert ttft["TTFT p99", "direct"][1] == [
        c.direct.ttft_ms.p99 for c in gateway if c.direct.ttft_ms
    ]
    assert all(
        p50 < p99
        for p50, p99 in zip(
            ttft["TTFT p50", "quart relay"][1], ttft["TTFT p99", "quart relay"][1], strict=True
        )
    )
    gap = curves(charts["gap"])
    assert gap["gap p99", "quart relay"][1] == pytest.approx([10.21, 10.7, 12.2])
    cpu = curves(charts["cpu-per-token"])
    # 12 tokens per phase: 2.4 ms, 1.2 ms and 1.8 ms of CPU are 200, 100 and 150 µs per token.
    assert {label: points[0] for (_, label), points in cpu.items()} == {
        "gateway": list(LEVELS),
        "bare relay": list(LEVELS),
        "quart relay": list(LEVELS),
    }
    for label, per_token in (("gateway", 200.0), ("bare relay", 100.0), ("quart relay", 150.0)):
        assert cpu["the measured process (direct has none)", label][1] == pytest.approx(
            [per_token] * 3
        )


def test_charts_leave_out_what_did_not_run(report: Report) -> None:
    gateway_only = msgspec.structs.replace(report, floors=[])
    ttft = curves(plots.charts(gateway_only)[0])
    assert {label for _, label in ttft} == {"direct", "gateway"}
    nothing = msgspec.structs.replace(report, latency=[], floors=[])
    assert plots.charts(nothing) == []


def test_tables_document_is_the_report_under_a_banner_with_the_plots(report: Report) -> None:
    text = publish.tables_document(
        report, "latest-long.json", [("Time to first token", "figures/ttft.png")]
    )
    assert text.startswith("<!-- Generated from latest-long.json by `python -m benchmarks.publish`")
    assert "## 1. Streaming: added latency" in text
    assert "## Stack floor" in text
    assert text.endswith("## Plots\n\n![Time to first token](figures/ttft.png)\n")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_publish_draws_the_curves_and_writes_pngs_and_tables(
    report: Report, tmp_path: Path
) -> None:
    if not plots.available():
        pytest.skip(plots.MISSING)
    import numpy  # installed with matplotlib

    for chart in plots.charts(report):
        drawn = plots.figure(chart)
        for ax, panel in zip(drawn.axes, chart.panels, strict=True):
            assert ax.get_title() == panel.title
            lines = {str(line.get_label()): line for line in ax.get_lines()}
            assert set(lines) == {curve.label for curve in panel.curves}
            for curve in panel.curves:
                points = numpy.asarray(lines[curve.label].get_xydata(), dtype=float).tolist()
                expected = zip(curve.concurrency, curve.values, strict=True)
                assert points == [[float(x), y] for x, y in expected]
            legend = ax.get_legend()
            assert legend is not None
            assert {text.get_text() for text in legend.get_texts()} == set(lines)
    results = tmp_path / "results.json"
    results.write_bytes(msgspec.json.encode(report))
    tables = tmp_path / "RESULTS-tables.md"
    figures = tmp_path / "figures"
    assert publish.main([str(results), "--tables", str(tables), "--figures", str(figures)]) == 0
    written = sorted(path.name for path in figures.iterdir())
    assert written == ["cpu-per-token.png", "gap.png", "ttft.png"]
    for name in written:
        width, height = png_size(figures / name)
        assert width > 300
        assert height > 200
    text = tables.read_text(encoding="utf-8")
    assert "![Time to first token against concurrency](figures/ttft.png)" in text
    assert "(figures/cpu-per-token.png)" in text
