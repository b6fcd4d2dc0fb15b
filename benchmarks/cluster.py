"""The ``cluster`` scenario: what the PostgreSQL store and the cluster coordination cost.

Benchmark tooling. Against a PostgreSQL server (``$EPILOOP_TEST_POSTGRES``, a libpq connection
string; default 127.0.0.1:5432, user postgres) in a database of its own, created for the run
and dropped after, it measures:

1. **Added TTFT of a stateful run** at concurrency 1: the same streaming load (each request a
   session of its own, so every run takes its lane and stores its turn) through a gateway on
   SQLite, then through one on PostgreSQL; the difference of the TTFT p50.
2. **Database round trips per run**: a gateway on PostgreSQL reached through
   :class:`~benchmarks.pg_proxy.CountingProxy`, which counts the client's round-trip messages
   (simple queries and Syncs) and names the statements: stateful runs at concurrency 1, with a
   lease so long that no heartbeat falls in the window (an idle window's rate is subtracted
   all the same). Then the heartbeat's own cost: an idle gateway at the scenario's lease,
   counted over two leases (six beats).
3. **Cross-instance abort**: two gateways on the same database; a stream runs on the first,
   ``agent.abort`` (by run id) is sent to the second over the control plane; the latency is from
   sending the abort to the first gateway's stream ending with its in-band ``run_aborted``
   event, as the streaming client sees it.
4. **Tokens/s at concurrency 200**, stateful, with ``hypercorn -k trio --workers 1`` and
   ``--workers 2`` on PostgreSQL, with the load side's share of its core.

The PostgreSQL server's CPU is not one of the runner's processes: it shows in the ``bg s``
column as background.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import msgspec
import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from trio_gateway.control_client import open_control_client

from .loadgen import LoadSpec, Target
from .pg_proxy import CountingProxy, ProxyStatistics
from .phases import TOKEN_TEXT, Bench, run_phase
from .processes import GatewayProcess, open_gateway
from .results import ClusterResult
from .summary import PhaseSummary, percentiles

__all__ = ["DEFAULT_POSTGRES", "POSTGRES_ENV", "cluster"]

POSTGRES_ENV = "EPILOOP_TEST_POSTGRES"
DEFAULT_POSTGRES = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
#: The lease of the scenario's gateways; their heartbeat runs every third of it.
LEASE_SECONDS = 10.0
_ABORT_BOUND = 10.0
#: The lease of the gateway whose round trips per run are counted: no heartbeat in the window.
_NO_BEAT_LEASE_SECONDS = 600.0
#: The idle window whose round trips are the heartbeat's (a whole number of beats).
_IDLE_WINDOW_SECONDS = 2 * LEASE_SECONDS


def _server() -> str:
    return os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)


@asynccontextmanager
async def _bench_database() -> AsyncIterator[tuple[str, str]]:
    """A database for this run (dropped at the end): its DSN and the server's description."""
    server = _server()
    name = f"epiloop_bench_{os.getpid()}"

    def create() -> str:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
            row = admin.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def drop() -> None:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    version = await trio.to_thread.run_sync(create)
    parts = conninfo_to_dict(server)
    described = f"PostgreSQL {version} at {parts.get('host', '?')}:{parts.get('port', 5432)}"
    try:
        yield make_conninfo(server, dbname=name), described
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(drop)


def _store(
    dsn: str, *, pool_size: int = 10, lease_seconds: float = LEASE_SECONDS
) -> dict[str, object]:
    return {
        "session": {
            "store": "postgres",
            "postgres": {"dsn": dsn, "leaseSeconds": lease_seconds, "poolSize": pool_size},
        }
    }


def _stateful(bench: Bench, gateway: GatewayProcess) -> Target:
    return dataclasses.replace(bench.through(gateway), stateful=True)


async def _stateful_phase(
    bench: Bench, name: str, overrides: dict[str, object], spec: LoadSpec
) -> PhaseSummary:
    async with open_gateway(
        bench.upstream.url, bench.workdir, cpus=bench.gateway_cpus, name=name, overrides=overrides
    ) as gateway:
        return await run_phase(
            bench, _stateful(bench, gateway), spec, gateway.pid, rounds=bench.profile.rounds
        )


@asynccontextmanager
async def _counted_gateway(
    bench: Bench, dsn: str, name: str, lease_seconds: float
) -> AsyncIterator[tuple[GatewayProcess, CountingProxy]]:
    """A gateway on PostgreSQL reached through a :class:`CountingProxy`."""
    parts = conninfo_to_dict(dsn)
    proxy = CountingProxy(str(parts.get("host", "127.0.0.1")), int(str(parts.get("port", 5432))))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        proxied = make_conninfo(
            dsn, host="127.0.0.1", port=port, sslmode="disable", gssencmode="disable"
        )
        async with open_gateway(
            bench.upstream.url,
            bench.workdir,
            cpus=bench.gateway_cpus,
            name=name,
            overrides=_store(proxied, lease_seconds=lease_seconds),
        ) as gateway:
            yield gateway, proxy
        nursery.cancel_scope.cancel(reason="counted")


async def _round_trips(bench: Bench, dsn: str, runs: int) -> tuple[float | None, ProxyStatistics]:
    """Round trips per stateful run at concurrency 1, with a lease long enough that no
    heartbeat falls in the window (an idle window of the same gateway is subtracted all the
    same), and what the window's runs executed."""
    async with _counted_gateway(bench, dsn, "cluster-counted", _NO_BEAT_LEASE_SECONDS) as (
        gateway,
        proxy,
    ):
        target = _stateful(bench, gateway)
        # Warm: the pool's connections are open, the statements prepared.
        await run_phase(bench, target, LoadSpec(1, 5, 30.0), gateway.pid, warm_up=False)
        before = proxy.statistics()
        await trio.sleep(_IDLE_WINDOW_SECONDS / 4)
        idle_rate = (proxy.statistics().round_trips - before.round_trips) / (
            _IDLE_WINDOW_SECONDS / 4
        )
        before = proxy.statistics()
        started = time.monotonic()
        phase = await run_phase(bench, target, LoadSpec(1, runs, 120.0), gateway.pid, warm_up=False)
        elapsed = time.monotonic() - started
        after = proxy.statistics()
    window = _difference(after, before)
    trips = window.round_trips - idle_rate * elapsed
    return (trips / phase.completed if phase.completed else None), window


async def _idle_round_trips(bench: Bench, dsn: str) -> tuple[float, ProxyStatistics]:
    """Round trips per second of an idle instance at the scenario's lease (its heartbeat)."""
    async with _counted_gateway(bench, dsn, "cluster-idle", LEASE_SECONDS) as (_, proxy):
        await trio.sleep(LEASE_SECONDS / 3)  # past start-up
        before = proxy.statistics()
        await trio.sleep(_IDLE_WINDOW_SECONDS)
        window = _difference(proxy.statistics(), before)
    return window.round_trips / _IDLE_WINDOW_SECONDS, window


def _difference(after: ProxyStatistics, before: ProxyStatistics) -> ProxyStatistics:
    def minus(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        return {key: a[key] - b.get(key, 0) for key in a if a[key] - b.get(key, 0)}

    return ProxyStatistics(
        after.connections - before.connections,
        after.round_trips - before.round_trips,
        minus(after.messages, before.messages),
        minus(after.statements, before.statements),
    )


async def _one_abort(
    http: httpx.AsyncClient, first: GatewayProcess, second: GatewayProcess, index: int
) -> float | None:
    """Start a stream on ``first``, abort it through ``second``; seconds until it ended."""
    headers = {
        "Authorization": f"Bearer {first.token}",
        "x-epiloop-session-key": f"abort-{index}",
    }
    body = {
        "model": "epiloop:main",
        "stream": True,
        "messages": [{"role": "user", "content": f"abort {index}"}],
    }
    second_ws = f"ws://{second.host}:{second.port}/ws"
    async with open_control_client(second_ws, token=second.token) as control:
        url = f"http://{first.host}:{first.port}/v1/chat/completions"
        async with http.stream("POST", url, json=body, headers=headers) as response:
            lines = response.aiter_lines()
            run_id: str | None = None
            async for line in lines:
                if line.startswith("data: {"):
                    run_id = msgspec.json.decode(line[6:]).get("id")
                    break
            if run_id is None:
                return None
            asked = time.monotonic()
            await control.abort(run_id=run_id)
            with trio.move_on_after(_ABORT_BOUND):
                async for line in lines:
                    if "run_aborted" in line:
                        return time.monotonic() - asked
    return None


async def _aborts(bench: Bench, dsn: str, count: int) -> tuple[list[float], int]:
    # Long answers: the stream is still going when the abort comes.
    await bench.upstream.set_scenario([TOKEN_TEXT] * 400, first_token_delay=0.0, pace=0.02)
    latencies: list[float] = []
    failures = 0
    async with (
        open_gateway(
            bench.upstream.url,
            bench.workdir,
            cpus=bench.gateway_cpus,
            name="cluster-a",
            overrides=_store(dsn),
        ) as first,
        open_gateway(
            bench.upstream.url,
            bench.workdir,
            cpus=bench.gateway_cpus,
            name="cluster-b",
            overrides=_store(dsn),
        ) as second,
        httpx.AsyncClient(timeout=30) as http,
    ):
        for index in range(count):
            took = await _one_abort(http, first, second, index)
            if took is None:
                failures += 1
            else:
                latencies.append(took)
    return latencies, failures


async def cluster(bench: Bench) -> ClusterResult:
    profile = bench.profile
    async with _bench_database() as (dsn, server):
        await bench.streaming_upstream()
        requests = max(profile.levels.get(1, 8), 20)
        spec = LoadSpec(1, requests, profile.phase_max_s)
        sqlite = await _stateful_phase(bench, "cluster-sqlite", {}, spec)
        postgres = await _stateful_phase(bench, "cluster-postgres", _store(dsn), spec)
        added = (
            postgres.ttft_ms.p50 - sqlite.ttft_ms.p50
            if postgres.ttft_ms is not None and sqlite.ttft_ms is not None
            else None
        )
        runs = max(requests, 20)
        per_run, counted = await _round_trips(bench, dsn, runs)
        idle_rate, idle = await _idle_round_trips(bench, dsn)
        latencies, failures = await _aborts(bench, dsn, max(requests, 30))
        await bench.streaming_upstream()
        throughput: list[PhaseSummary] = []
        worker_counts = [1, 2]
        for workers in worker_counts:
            async with open_gateway(
                bench.upstream.url,
                bench.workdir,
                cpus=bench.all_cpus or None,
                workers=workers,
                name=f"cluster-w{workers}",
                overrides=_store(dsn, pool_size=20),
            ) as gateway:
                spec200 = LoadSpec(200, profile.levels.get(200, 400), profile.phase_max_s)
                throughput.append(
                    await run_phase(bench, _stateful(bench, gateway), spec200, gateway.pid)
                )
    return ClusterResult(
        server=server,
        stateful_sqlite=sqlite,
        stateful_postgres=postgres,
        added_ttft_p50_ms=added,
        round_trips_per_run=per_run,
        round_trip_runs=runs,
        idle_round_trips_per_s=idle_rate,
        round_trip_messages=counted.messages,
        round_trip_statements=counted.statements,
        idle_statements=idle.statements,
        idle_window_s=_IDLE_WINDOW_SECONDS,
        lease_seconds=LEASE_SECONDS,
        round_trip_method=(
            "frontend protocol messages counted by a relay between the gateway and PostgreSQL "
            "(simple Query + Sync), with a lease too long for a heartbeat in the window, minus "
            "an idle window's rate"
        ),
        abort_ms=percentiles(latencies),
        aborts=len(latencies),
        abort_failures=failures,
        throughput=throughput,
        throughput_workers=worker_counts,
    )
