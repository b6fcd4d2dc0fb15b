"""The cluster scenario's counting relay: it passes PostgreSQL's protocol on unchanged and counts
the client's round trips and statements exactly."""

from __future__ import annotations

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from benchmarks.pg_proxy import CountingProxy


def _exchange(dsn: str) -> list[object]:
    results: list[object] = []
    with psycopg.connect(dsn, autocommit=True) as connection:
        for value in range(7):  # prepared by psycopg after a few runs: Bind without Parse
            row = connection.execute("SELECT %s::int + 1", (value,)).fetchone()
            results.append(row[0] if row else None)
        connection.execute("CREATE TEMP TABLE counted (x int)")  # no parameter: a simple query
        with connection.transaction():  # BEGIN and COMMIT: simple queries
            connection.execute("INSERT INTO counted VALUES (%s)", (1,))
            connection.execute("INSERT INTO counted VALUES (%s)", (2,))
        row = connection.execute("SELECT count(*) FROM counted").fetchone()
        results.append(row[0] if row else None)
    return results


async def test_counting_proxy_counts_round_trips_and_statements(pg_dsn: str) -> None:
    parts = conninfo_to_dict(pg_dsn)
    proxy = CountingProxy(str(parts["host"]), int(str(parts.get("port", 5432))))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        proxied = make_conninfo(
            pg_dsn, host="127.0.0.1", port=port, sslmode="disable", gssencmode="disable"
        )
        with trio.fail_after(30):
            before = proxy.statistics()
            results = await trio.to_thread.run_sync(_exchange, proxied)
        after = proxy.statistics()
        nursery.cancel_scope.cancel(reason="done")
    assert results == [*range(1, 8), 2]
    assert after.connections - before.connections == 1
    statements = after.statements
    assert statements["SELECT $1::int + 1"] == 7
    assert statements["INSERT INTO counted VALUES"] == 2
    assert statements["CREATE TEMP TABLE counted"] == 1
    assert statements["SELECT count(*) FROM counted"] == 1
    assert statements["BEGIN"] == 1
    assert statements["COMMIT"] == 1
    assert after.messages["B"] == 9
    assert after.messages["Q"] == 4
    # One round trip per statement, and one more when psycopg prepared the repeated SELECT
    # (a Parse and a Sync of its own, before the Bind that follows).
    assert after.round_trips == after.messages["S"] + after.messages["Q"]
    assert after.round_trips == sum(statements.values()) + 1
