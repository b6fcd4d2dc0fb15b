"""The result document as markdown: the tables ``benchmarks.run`` prints and writes next to
the JSON, and ``benchmarks.publish`` writes to ``RESULTS-tables.md``.

Benchmark tooling; pure functions from a :class:`report.Report` to text, no I/O.
"""

from __future__ import annotations

from .report import Report, floor_targets
from .results import ClusterResult, DisconnectResult, FloorResult, MemoryResult
from .summary import Comparison, Percentiles, PhaseSummary
from .targets import level

__all__ = ["markdown"]


def _f(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _signed(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:+,.{digits}f}"


def _p(values: Percentiles | None, attribute: str, digits: int = 2) -> str:
    return "n/a" if values is None else _f(getattr(values, attribute), digits)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _cluster_section(c: ClusterResult) -> list[str]:
    out = ["", f"## Cluster (PostgreSQL): {c.server}", ""]
    out += _table(
        ["measure", "goal", "measured"],
        [
            [
                "added TTFT p50, stateful, C=1 (PostgreSQL minus SQLite)",
                "<= 1 ms",
                f"{_signed(c.added_ttft_p50_ms)} ms (SQLite {_p(c.stateful_sqlite.ttft_ms, 'p50')}"
                f", PostgreSQL {_p(c.stateful_postgres.ttft_ms, 'p50')}; bg s "
                f"{_f(c.stateful_sqlite.resources.background_cpu_s, 1)} / "
                f"{_f(c.stateful_postgres.resources.background_cpu_s, 1)})",
            ],
            [
                f"database round trips per stateful run ({c.round_trip_runs} runs)",
                "<= 3",
                f"{_f(c.round_trips_per_run, 2)} (idle: {c.idle_round_trips_per_s:.2f}/s per "
                "instance)",
            ],
            [
                f"cross-instance abort ({c.aborts} aborts, {c.abort_failures} failed)",
                "p99 <= 50 ms",
                f"p50 {_p(c.abort_ms, 'p50')} ms, p99 {_p(c.abort_ms, 'p99')} ms",
            ],
        ],
    )
    out += ["", f"Round trips: {c.round_trip_method}. Messages in the window: "]
    out[-1] += ", ".join(f"{k} {v}" for k, v in sorted(c.round_trip_messages.items())) + "."
    out += ["", "Statements per stateful run (each Bind or simple query, by its first words):", ""]
    out += _table(
        ["statement", "per run"],
        [
            [f"`{text}`", _f(count / c.round_trip_runs, 2)]
            for text, count in sorted(c.round_trip_statements.items(), key=lambda kv: -kv[1])
        ],
    )
    out += [
        "",
        f"An idle instance (lease {c.lease_seconds:g} s, heartbeat every "
        f"{c.lease_seconds / 3:.2f} s) over {c.idle_window_s:g} s: "
        f"{c.idle_round_trips_per_s:.2f} round trips/s; statements: "
        + (", ".join(f"`{k}` {v}" for k, v in sorted(c.idle_statements.items())) or "none")
        + ".",
    ]
    out += ["", "Stateful streaming at C=200 on PostgreSQL:", ""]
    out += _table(
        [
            "hypercorn workers",
            "tokens/s (steady)",
            "gap p99 ms",
            "CPU µs/token",
            "busy",
            "bg s",
            "errors",
        ],
        [
            [
                str(workers),
                _f(phase.steady_tokens_per_s or phase.tokens_per_s, 0),
                _p(phase.gap_ms, "p99"),
                _f(phase.cpu_per_token_us, 1),
                _busy(phase),
                _f(phase.resources.background_cpu_s, 1),
                _errors(phase),
            ]
            for workers, phase in zip(c.throughput_workers, c.throughput, strict=True)
        ],
    )
    load = ", ".join(
        f"{workers} worker(s): load side {phase.load_side_busy * 100:.0f}% of its core"
        for workers, phase in zip(c.throughput_workers, c.throughput, strict=True)
    )
    out += ["", f"What the load generator and the mock took: {load}."]
    return out


def _busy(phase: PhaseSummary) -> str:
    return "/".join(f"{share * 100:.0f}%" for share in phase.resources.core_busy.values())


def _kernel(phase: PhaseSummary) -> str:
    cpu = phase.resources.gateway_cpu_s
    return "n/a" if cpu <= 0 else f"{phase.resources.gateway_system_cpu_s / cpu * 100:.0f}%"


def _errors(phase: PhaseSummary) -> str:
    if not phase.errors:
        return "0"
    kinds = ", ".join(f"{kind}: {count}" for kind, count in phase.error_kinds.items())
    return f"{phase.errors} ({kinds})"


def _streaming_table(comparisons: list[Comparison], side: str) -> list[str]:
    """Section 1's table; ``side`` names the measured stack in the headers (``gw``)."""
    rows = []
    for c in comparisons:
        d, g = c.direct, c.gateway
        rows.append(
            [
                str(c.concurrency),
                f"{g.completed}/{g.requests}",
                f"{_p(d.ttft_ms, 'p50')} / {_p(g.ttft_ms, 'p50')}",
                _signed(c.added_ttft_ms.p50 if c.added_ttft_ms else None),
                _signed(c.added_ttft_ms.p99 if c.added_ttft_ms else None),
                f"{_p(d.gap_ms, 'p50')} / {_p(g.gap_ms, 'p50')}",
                f"{_p(d.gap_ms, 'p99')} / {_p(g.gap_ms, 'p99')}",
                _signed(c.added_gap_ms.p99 if c.added_gap_ms else None),
                f"{_f(d.steady_tokens_per_s or d.tokens_per_s, 0)} / "
                f"{_f(g.steady_tokens_per_s or g.tokens_per_s, 0)}",
                f"{_f(g.cpu_per_token_us, 1)} ({_kernel(g)})",
                _busy(g),
                f"{_f(d.resources.background_cpu_s, 1)} / {_f(g.resources.background_cpu_s, 1)}",
                _errors(g),
            ]
        )
    return _table(
        [
            "C",
            f"{side} ok",
            f"TTFT p50 d / {side}",
            "+TTFT p50",
            "+TTFT p99",
            f"gap p50 d / {side}",
            f"gap p99 d / {side}",
            "+gap p99",
            f"tokens/s d / {side}",
            f"{side} CPU µs/token (kernel)",
            "busy",
            f"bg s d / {side}",
            f"{side} errors",
        ],
        rows,
    )


_PROCESS_NAMES = {
    "direct": "mock upstream (reference)",
    "floor-bare": "bare relay",
    "floor-quart": "quart relay",
}


def _memory_table(memories: list[MemoryResult]) -> list[str]:
    rows = []
    for memory in memories:
        steps = ", ".join(
            f"{step.ready}: {step.rss_mib:.1f}"
            + (f" ({step.failed} failed)" if step.failed else "")
            for step in memory.steps
        )
        rows.append(
            [
                _PROCESS_NAMES.get(memory.target, memory.target),
                _f(memory.baseline_rss_mib, 1),
                steps,
                f"{_f(memory.per_stream_kib, 1)} ({_f(memory.per_stream_with_baseline_kib, 1)})",
                _f(memory.after_close_rss_mib, 1),
                _f(memory.upstream_released_s, 3),
            ]
        )
    return _table(
        [
            "process",
            "RSS before, MiB",
            "open streams: RSS MiB",
            "KiB per stream (with baseline)",
            "RSS after close, MiB",
            "upstream freed after s",
        ],
        rows,
    )


def _disconnect_table(results: list[DisconnectResult]) -> list[str]:
    return _table(
        [
            "",
            "C",
            "disconnected",
            "cancelled",
            "not cancelled",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
        ],
        [
            [
                d.target,
                str(d.concurrency),
                str(d.disconnected),
                str(d.cancelled),
                str(d.not_cancelled),
                _p(d.latency_ms, "p50"),
                _p(d.latency_ms, "p90"),
                _p(d.latency_ms, "p99"),
                _p(d.latency_ms, "max"),
            ]
            for d in results
        ],
    )


_RELAYS = {
    "bare": (
        "bare relay",
        "a plain ASGI app on hypercorn's trio worker (as the gateway is served) that parses "
        "nothing: it forwards the request body to the mock over the gateway's own HTTP/1.1 "
        "transport (`Http11Transport`, pooled keep-alive) and the upstream's body chunks to the "
        "client unchanged, the read in a task of the request's nursery, through a bounded "
        "channel, cancelled by a disconnect",
    ),
    "quart": (
        "quart relay",
        "the same relay as a quart-trio route in the gateway's quart shape: "
        "`await request.get_data()`, the upstream head awaited in the route, then a "
        "`quart.Response` whose `ResponseBody` opens the per-request nursery in `__aenter__` "
        "and yields the channel's chunks (as the gateway's `ChatStreamBody`), with no error "
        "handlers, hooks or ASGI wrapper",
    ),
}


def _floor_section(report: Report, floors: list[FloorResult]) -> list[str]:
    rows = report.floor_targets or floor_targets(report)
    relays = [
        f"The *{_RELAYS[f.framework][0]}* (`{f.command}`, start-up RSS "
        f"{f.startup_rss_mib:.0f} MiB) is {_RELAYS[f.framework][1]}."
        for f in floors
        if f.framework in _RELAYS
    ]
    out = [
        "",
        "## Stack floor: a bare hypercorn relay and a quart-trio relay",
        "",
        f"Each relay runs alone, {floors[0].cpus} (the gateway idles meanwhile). "
        + " ".join(relays)
        + " The bare relay's numbers are the cost of the serving stack and the shape the "
        "gateway commits to; *quart minus bare* is what quart-trio (with quart and werkzeug) "
        "adds to it, and *gateway minus quart relay* what the gateway's own logic adds (the "
        "relays pass each chunk on as it comes; the gateway coalesces chunks for a client that "
        "falls behind, so under load it can beat them). Gateway numbers are this run's (n/a: "
        "not run). "
        + (
            "All are compared with the same direct phases (the latency scenario's)."
            if floors[0].direct_reused
            else "The relays' direct phases were measured once, in this scenario, and shared."
        ),
        "",
    ]
    out += _table(
        [
            "target",
            "goal",
            "gateway",
            "bare relay",
            "quart relay",
            "quart minus bare (quart-trio)",
            "gateway minus quart relay (the gateway's logic)",
        ],
        [
            [
                row.name,
                row.goal,
                f"{_f(row.gateway, 1)} {row.unit}",
                f"{_f(row.bare, 1)} {row.unit}",
                f"{_f(row.quart, 1)} {row.unit}",
                f"{_signed(row.quart_minus_bare, 1)} {row.unit}",
                f"{_signed(row.gateway_minus_quart, 1)} {row.unit}",
            ]
            for row in rows
        ],
    )
    for floor in floors:
        name = _RELAYS.get(floor.framework, (floor.framework, ""))[0]
        out += ["", f"Streaming through the {name} (as section 1):", ""]
        out += _streaming_table(floor.latency, floor.framework)
        out += ["", f"Idle streams and disconnects through the {name} (as sections 4 and 5):", ""]
        out += _memory_table([floor.memory])
        out += [""]
        out += _disconnect_table([floor.disconnect])
    return out


def markdown(report: Report) -> str:
    """The report as markdown tables."""
    m = report.machine
    out: list[str] = [
        f"# Benchmark results: profile `{report.profile.name}`",
        "",
        f"Run {report.started_at}, {report.duration_s:.0f} s. Machine: {m.cpu_model}, "
        f"{m.cpus} cores, {m.memory_gib} GiB, Linux {m.kernel}, Python {m.python}; "
        f"load average at start {m.load_average_at_start:.2f}.",
        "",
        "Versions: " + ", ".join(f"{name} {version}" for name, version in m.versions.items()),
        "",
        f"Gateway: commit {m.git_commit or '?'}"
        + (f" with local changes in {', '.join(m.git_modified)}" if m.git_modified else "")
        + f"; started as `{report.gateway_command}`. Pinning: {report.pinning}.",
        "",
        f"Upstream: mock (`benchmarks/mock_upstream.py`), {report.profile.tokens} tokens per "
        f"answer, first token after {report.profile.first_token_delay_s * 1000:g} ms, then one "
        f"every {report.profile.pace_s * 1000:g} ms. Direct = the same load generator against "
        "the mock itself.",
        "",
        "## Targets",
        "",
    ]
    out += _table(
        ["target", "goal", "measured", "met"],
        [
            [
                check.name,
                check.goal,
                f"{_f(check.measured, 1)} {check.unit}",
                {True: "yes", False: "**no**", None: "not measured"}[check.met],
            ]
            for check in report.targets
        ],
    )
    out += [""]
    for check in report.targets:
        if check.note:
            out.append(f"- {check.name}: {check.note}.")
    if report.latency:
        out += [
            "",
            "## 1. Streaming: added latency (gateway minus direct), throughput, CPU per token",
            "",
            "Milliseconds. *busy* = each core's busy share during the gateway phase (core 0: "
            "gateway, core 1: load generator + mock); *bg* = CPU seconds other programs used "
            "during the direct / gateway phase (a phase that shared its cores is not comparable).",
            "",
        ]
        out += _streaming_table(report.latency, "gw")
        out += [
            "",
            "Load side (mock + load generator) busy share of its core, direct / gateway: "
            + ", ".join(
                f"C={c.concurrency}: {c.direct.load_side_busy * 100:.0f}% / "
                f"{c.gateway.load_side_busy * 100:.0f}%"
                for c in report.latency
            )
            + ". Gateway peak RSS per level: "
            + ", ".join(
                f"C={c.concurrency}: {c.gateway.resources.gateway_peak_rss_mib:.0f} MiB"
                for c in report.latency
            )
            + ".",
        ]
    if report.non_streaming is not None:
        c = report.non_streaming
        out += [
            "",
            f"## 3. Non-streaming requests at saturation (C={c.concurrency}, "
            f"{report.profile.nonstream_s:g} s each)",
            "",
        ]
        out += _table(
            ["", "requests/s", "p50 ms", "p99 ms", "gw CPU µs/request", "busy", "errors"],
            [
                [
                    phase.target,
                    _f(phase.requests_per_s, 0),
                    _p(phase.total_ms, "p50"),
                    _p(phase.total_ms, "p99"),
                    _f(phase.cpu_per_request_us, 0),
                    _busy(phase),
                    _errors(phase),
                ]
                for phase in (c.direct, c.gateway)
            ],
        )
        out += ["", f"Gateway / direct requests/s: {_f(c.requests_per_s_ratio, 2)}."]
    if report.memory:
        out += ["", "## 4. Memory per open idle stream", ""]
        out += _memory_table(report.memory)
    if report.disconnect:
        out += ["", "## 5. Disconnect to upstream cancel", ""]
        out += _disconnect_table(report.disconnect)
    out += ["", "## 6. hypercorn --workers", ""]
    if report.workers is not None:
        w = report.workers
        out += [
            f"`{w.command}`, {w.cpus}; {w.processes} processes, idle RSS {w.idle_rss_mib:.0f} MiB "
            "(all processes); CPU seconds per process over the scenario (master first): "
            + ", ".join(f"{cpu:.1f}" for cpu in w.process_cpu_s)
            + ". Single-process numbers are the pinned one-core gateway above.",
            "",
        ]
        rows = []
        for phase in w.streaming:
            single = level(report.latency, phase.concurrency)
            rows.append(
                [
                    f"streaming C={phase.concurrency}",
                    _f(single.gateway.steady_tokens_per_s or single.gateway.tokens_per_s, 0)
                    if single
                    else "n/a",
                    _f(phase.steady_tokens_per_s or phase.tokens_per_s, 0),
                    _p(phase.gap_ms, "p99"),
                    _f(phase.cpu_per_token_us, 1),
                    _busy(phase),
                    _errors(phase),
                ]
            )
        if w.non_streaming is not None:
            phase = w.non_streaming.gateway
            single_plain = report.non_streaming
            rows.append(
                [
                    f"non-streaming C={phase.concurrency} (requests/s)",
                    _f(single_plain.gateway.requests_per_s, 0) if single_plain else "n/a",
                    _f(phase.requests_per_s, 0),
                    _p(phase.total_ms, "p99"),
                    _f(phase.cpu_per_request_us, 0) + " /req",
                    _busy(phase),
                    _errors(phase),
                ]
            )
        out += _table(
            [
                "load",
                "1 process (tokens/s)",
                f"{w.workers} workers",
                "gap/latency p99 ms",
                "CPU µs/token",
                "busy",
                "errors",
            ],
            rows,
        )
    else:
        out.append(f"Not run: {report.workers_skipped or 'skipped'}.")
    if report.floors:
        out += _floor_section(report, report.floors)
    if report.cluster is not None:
        out += _cluster_section(report.cluster)
    elif report.cluster_skipped:
        out += ["", "## Cluster (PostgreSQL)", "", f"Not run: {report.cluster_skipped}."]
    if report.cpu_profile is not None:
        p = report.cpu_profile
        out += [
            "",
            f"## Where the gateway's CPU goes (py-spy, C={p.concurrency}, {p.seconds:g} s, "
            f"{p.breakdown.samples} samples)",
            "",
            f"CPU per token during the profile: {_f(p.phase.cpu_per_token_us, 1)} µs "
            "(py-spy itself slows the gateway a little).",
            "",
        ]
        out += _table(
            ["layer", "share", "µs per token"],
            [
                [layer.layer, f"{layer.share * 100:.1f}%", _f(layer.us_per_token, 1)]
                for layer in p.breakdown.layers
            ],
        )
        out += ["", "Top frames by self time:", ""]
        out += _table(
            ["frame", "share"],
            [[f"`{frame.frame}`", f"{frame.share * 100:.1f}%"] for frame in p.breakdown.top_self],
        )
    if report.notes:
        out += ["", "## Notes", ""]
        out += [f"- {note}" for note in report.notes]
    seconds = ", ".join(f"{name} {value:.0f} s" for name, value in report.scenario_seconds.items())
    out += ["", f"Scenario durations: {seconds}.", ""]
    return "\n".join(out)
