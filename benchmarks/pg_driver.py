"""How to drive PostgreSQL from trio: psycopg's blocking API in worker threads (what
``trio_gateway.pg`` does) against libpq's non-blocking interface driven by
``trio.lowlevel.wait_readable`` (what a driver of our own would do), with plain synchronous
psycopg as the floor. One statement (``SELECT $1::int``) per call, one call at a time and then
C at once, on 127.0.0.1.

    python -m benchmarks.pg_driver [--dsn DSN] [--calls N] [--concurrency C]

Prints the latency per call (p50, p99) and the CPU per call of this process for each driver.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Awaitable, Callable

import psycopg
import trio
from psycopg.pq import ExecStatus

from trio_gateway.pg import open_database

DEFAULT_DSN = os.environ.get(
    "EPILOOP_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)


class _NonBlocking:
    """One connection driven through libpq's non-blocking calls and trio's wait_readable."""

    def __init__(self, dsn: str) -> None:
        self.connection = psycopg.connect(dsn, autocommit=True)
        self.pgconn = self.connection.pgconn
        self.pgconn.nonblocking = 1
        self.lock = trio.Lock()

    async def query(self, value: int) -> int:
        async with self.lock:
            pgconn = self.pgconn
            pgconn.send_query_params(b"SELECT $1::int", [str(value).encode()])
            while pgconn.flush():
                await trio.lowlevel.wait_writable(pgconn.socket)
            result = None
            while True:
                pgconn.consume_input()
                while not pgconn.is_busy():
                    got = pgconn.get_result()
                    if got is None:
                        assert result is not None
                        if result.status != ExecStatus.TUPLES_OK:
                            raise RuntimeError(result.error_message.decode())
                        cell = result.get_value(0, 0)
                        assert cell is not None
                        return int(cell)
                    result = got
                await trio.lowlevel.wait_readable(pgconn.socket)


async def _measure(
    call: Callable[[int], Awaitable[int]], calls: int, concurrency: int
) -> tuple[list[float], float]:
    latencies: list[float] = []
    cpu = time.process_time()
    remaining = [calls]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            value = remaining[0]
            started = time.perf_counter()
            assert await call(value) == value
            latencies.append(time.perf_counter() - started)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return latencies, time.process_time() - cpu


def _line(name: str, concurrency: int, latencies: list[float], cpu: float) -> str:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1e6
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1e6
    return f"| {name} | {concurrency} | {p50:.0f} | {p99:.0f} | {cpu / len(latencies) * 1e6:.0f} |"


async def _main(dsn: str, calls: int, concurrency: int) -> None:
    print("| driver | C | p50 µs | p99 µs | CPU µs/call |")
    print("|---|---|---|---|---|")
    with psycopg.connect(dsn, autocommit=True) as sync:
        latencies = []
        cpu = time.process_time()
        for value in range(calls):
            started = time.perf_counter()
            sync.execute("SELECT %s::int", (value,)).fetchone()
            latencies.append(time.perf_counter() - started)
        print(
            _line("sync psycopg (floor, blocks the loop)", 1, latencies, time.process_time() - cpu)
        )
    async with open_database(dsn, pool_size=max(2, concurrency)) as db:

        async def threaded(value: int) -> int:
            row = await db.run(lambda c: c.execute("SELECT %s::int", (value,)).fetchone())
            assert row is not None
            return int(row[0])

        for c in (1, concurrency):
            await threaded(0)
            print(
                _line(
                    "psycopg in worker threads (trio_gateway.pg)",
                    c,
                    *await _measure(threaded, calls, c),
                )
            )
    drivers = [_NonBlocking(dsn) for _ in range(concurrency)]
    try:
        index = [0]

        async def nonblocking(value: int) -> int:
            index[0] = (index[0] + 1) % len(drivers)
            return await drivers[index[0]].query(value)

        for c in (1, concurrency):
            print(
                _line(
                    "libpq non-blocking + wait_readable", c, *await _measure(nonblocking, calls, c)
                )
            )
    finally:
        for driver in drivers:
            driver.connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    trio.run(_main, args.dsn, args.calls, args.concurrency)


if __name__ == "__main__":
    main()
