"""Scenario 10: a streamed Responses run against a streamed chat completion, and the cost of the
event log (``python -m benchmarks.responses``).

Benchmark tooling, run on its own (it is not part of ``benchmarks.run``'s report). One gateway
with the SQLite session store (where the event log of every stored response is written) and
the Responses endpoint on, the mock upstream at the usual pace (64 tokens, the first after
20 ms, then one every 10 ms), pinned as in the other scenarios. At concurrency 50 it measures,
alternating the two APIs for ``--rounds`` rounds so that drift hits both alike:

- chat completions (``stream: true``): nothing stored;
- Responses (``stream: true``; ``store`` is true by default): every event kept in the run's
  log and written to the store in batches;

the gateway's CPU seconds per streamed token of each (a Responses token is one
``response.output_text.delta`` event), their ratio, and, from the gateway's own counters
(``epiloop_response_log_writes_total`` / ``_events_total`` on ``/metrics``), how many store
writes the event logs took: per run and per event. Prints a JSON summary and a small table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import trio

from .loadgen import LoadSpec, Target
from .phases import Bench, run_phase
from .processes import GatewayProcess, open_gateway, open_upstream
from .profiles import PROFILES
from .summary import PhaseSummary

__all__ = ["main"]

_CONCURRENCY = 50
_METRIC = re.compile(rb"^(epiloop_response_log_(?:writes|events))_total (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class Side:
    name: str
    cpu_s: float
    tokens: int
    requests: int
    errors: int

    @property
    def cpu_per_token_us(self) -> float:
        return self.cpu_s / max(self.tokens, 1) * 1e6


def _counters(gateway: GatewayProcess) -> dict[str, float]:
    request = urllib.request.Request(
        f"http://{gateway.host}:{gateway.port}/metrics",
        headers={"Authorization": f"Bearer {gateway.token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        body = answer.read()
    return {name.decode(): float(value) for name, value in _METRIC.findall(body)}


def _side(name: str, summary: PhaseSummary) -> Side:
    return Side(
        name,
        summary.resources.gateway_cpu_s,
        summary.tokens,
        summary.requests,
        summary.errors,
    )


async def _run(
    requests: int, rounds: int, workdir: Path, *, store: str, flush_seconds: float
) -> dict[str, object]:
    profile = PROFILES["short"]
    cpus = sorted(os.sched_getaffinity(0))
    gateway_cpus = {cpus[0]} if len(cpus) > 1 else None
    load_cpus = {cpus[1]} if len(cpus) > 1 else None
    override = {
        "gateway": {
            "http": {"endpoints": {"responses": {"enabled": True, "flushSeconds": flush_seconds}}}
        },
        "session": {"store": store},
    }
    async with (
        open_upstream(cpus=load_cpus) as upstream,
        open_gateway(upstream.url, workdir, cpus=gateway_cpus, overrides=override) as gateway,
    ):
        bench = Bench(profile, upstream, gateway, workdir, gateway_cpus, load_cpus)
        await bench.streaming_upstream()
        chat = bench.through(gateway)
        responses = Target(
            "gateway-responses",
            gateway.host,
            gateway.port,
            "epiloop:main",
            path="/v1/responses",
            headers=dict(chat.headers),
            api="responses",
        )
        unstored = replace(
            responses, name="gateway-responses-unstored", extra_body={"store": False}
        )
        spec = LoadSpec(_CONCURRENCY, requests, profile.phase_max_s)
        sides: dict[str, list[Side]] = {"chat": [], "responses_unstored": [], "responses": []}
        writes = events = runs = 0.0
        for _ in range(rounds):
            sides["chat"].append(_side("chat", await run_phase(bench, chat, spec, gateway.pid)))
            sides["responses_unstored"].append(
                _side("responses_unstored", await run_phase(bench, unstored, spec, gateway.pid))
            )
            before = _counters(gateway)
            summary = await run_phase(bench, responses, spec, gateway.pid)
            after = _counters(gateway)
            sides["responses"].append(_side("responses", summary))
            # The warm-up's runs are counted too: one request per slot.
            runs += summary.requests + _CONCURRENCY
            writes += after.get("epiloop_response_log_writes", 0) - before.get(
                "epiloop_response_log_writes", 0
            )
            events += after.get("epiloop_response_log_events", 0) - before.get(
                "epiloop_response_log_events", 0
            )
    pooled = {
        name: Side(
            name,
            sum(s.cpu_s for s in parts),
            sum(s.tokens for s in parts),
            sum(s.requests for s in parts),
            sum(s.errors for s in parts),
        )
        for name, parts in sides.items()
    }
    chat_us = pooled["chat"].cpu_per_token_us
    responses_us = pooled["responses"].cpu_per_token_us
    return {
        "session_store": store,
        "flush_seconds": flush_seconds,
        "concurrency": _CONCURRENCY,
        "rounds": rounds,
        "requests_per_round": requests,
        "chat": {**pooled["chat"].__dict__, "cpu_per_token_us": chat_us},
        "responses_unstored": {
            **pooled["responses_unstored"].__dict__,
            "cpu_per_token_us": pooled["responses_unstored"].cpu_per_token_us,
        },
        "responses": {**pooled["responses"].__dict__, "cpu_per_token_us": responses_us},
        "responses_over_chat": responses_us / chat_us if chat_us else None,
        "event_log": {
            "runs": runs,
            "writes": writes,
            "events": events,
            "writes_per_run": writes / runs if runs else None,
            "events_per_write": events / writes if writes else None,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.responses", description=__doc__)
    parser.add_argument("--requests", type=int, default=150, help="measured requests per phase")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three phases")
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    parser.add_argument(
        "--flush-seconds", type=float, default=1.0, help="the event log's flushSeconds"
    )
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="epiloop-bench-responses-") as directory:
        result = trio.run(
            partial(
                _run,
                arguments.requests,
                arguments.rounds,
                Path(directory),
                store=arguments.store,
                flush_seconds=arguments.flush_seconds,
            )
        )
    json.dump(result, sys.stdout, indent=2)
    print()
    print(_line(result), file=sys.stderr)


def _line(result: dict[str, object]) -> str:
    def per_token(side: str) -> float:
        values = result[side]
        assert isinstance(values, dict)
        return float(values["cpu_per_token_us"])

    log = result["event_log"]
    assert isinstance(log, dict)
    return (
        f"C={_CONCURRENCY} ({result['session_store']}, flush {result['flush_seconds']} s): "
        f"CPU per token: chat {per_token('chat'):.1f} µs, unstored responses "
        f"{per_token('responses_unstored'):.1f} µs, stored responses "
        f"{per_token('responses'):.1f} µs (x{result['responses_over_chat']:.3f} of chat); "
        f"event log: {log['writes_per_run']:.2f} writes per run, "
        f"{log['events_per_write']:.1f} events per write"
    )


if __name__ == "__main__":
    main()
