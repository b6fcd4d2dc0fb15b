"""Several runtimes in one process, one PostgreSQL database, distinct instance ids: lanes,
aborts, waits, status and the cluster cap across instances."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import psycopg
import pytest
import trio
from gateway_harness import make_config, open_test_runtime

from benchmarks.scripted_provider import Hang, Pause, Say, ScriptedProvider
from trio_gateway.agent import AgentRuntime, RunEvent, RunRequest, RunResult, RunStarted
from trio_gateway.cluster import ClusterNode, lanes
from trio_gateway.errors import OverloadedError, SessionBusyError
from trio_gateway.messages import Message
from trio_gateway.pg import migrate, open_database
from trio_gateway.pg.instances import register
from trio_gateway.server.control_methods import status
from trio_gateway.sessions import MemorySessionStore
from trio_gateway.sessions.postgres import PostgresSessionStore
from trio_gateway.wire.control import NoParams

BOUND = 20


def config(dsn: str, instance: str, **defaults: Any) -> Any:
    queue_timeout = defaults.pop("queue_timeout", 30)
    lease = defaults.pop("lease", 1)
    return make_config(
        {
            "gateway": {"instanceId": instance},
            "session": {
                "store": "postgres",
                "postgres": {"dsn": dsn, "leaseSeconds": lease, "poolSize": 4},
                "queueTimeoutSeconds": queue_timeout,
            },
            "agents": {"defaults": defaults},
        }
    )


@asynccontextmanager
async def instances(
    dsn: str, *providers: ScriptedProvider, **defaults: Any
) -> AsyncIterator[list[AgentRuntime]]:
    """One runtime per provider (instances "i0", "i1", ...), sharing one session store."""
    store = MemorySessionStore()
    async with AsyncExitStack() as stack:
        runtimes = [
            await stack.enter_async_context(
                open_test_runtime(
                    config(dsn, f"i{n}", **defaults),
                    providers={"local": provider},
                    sessions=store,
                )
            )
            for n, provider in enumerate(providers)
        ]
        yield runtimes


def request(text: str, session: str | None = "s") -> RunRequest:
    return RunRequest(
        messages=(Message("user", text),),
        session_key=session,
        default_session="stateless",
        source="ws",
    )


async def run(
    runtime: AgentRuntime, text: str, session: str | None = "s", started: list[str] | None = None
) -> RunResult:
    prepared = await runtime.prepare(request(text, session))

    async def emit(event: RunEvent) -> None:
        if isinstance(event, RunStarted) and started is not None:
            started.append(text)

    with await runtime.admit(prepared) as admitted:
        return await admitted.run(emit)


def cluster_of(runtime: AgentRuntime) -> ClusterNode:
    assert runtime.cluster is not None
    return runtime.cluster


async def wait_until(condition: Callable[[], Any]) -> None:
    with trio.fail_after(BOUND):
        while not await condition():
            await trio.sleep(0.01)


async def waiting_count(runtime: AgentRuntime) -> int:
    return sum(run.state == "waiting" for run in await cluster_of(runtime).live_runs())


async def test_cluster_lane_is_fifo_across_instances(pg_dsn: str) -> None:
    slow = ScriptedProvider([Pause(0.1), Say("ok")])
    async with instances(pg_dsn, slow, slow) as (a, b), trio.open_nursery() as nursery:
        started: list[str] = []
        nursery.start_soon(run, a, "r0", "s", started)
        await wait_until(lambda: _running(a, 1))
        for n, runtime in enumerate([b, a, b], start=1):
            nursery.start_soon(run, runtime, f"r{n}", "s", started)
            await wait_until(lambda n=n: _waiting_is(a, n))  # type: ignore[misc]
    assert started == ["r0", "r1", "r2", "r3"]


async def _running(runtime: AgentRuntime, count: int) -> bool:
    runs = await cluster_of(runtime).live_runs()
    return sum(run.state == "running" for run in runs) == count


async def _waiting_is(runtime: AgentRuntime, count: int) -> bool:
    return await waiting_count(runtime) == count


async def test_cluster_lane_wait_ends_in_409_and_leaves_no_row(pg_dsn: str) -> None:
    async with (
        instances(
            pg_dsn, ScriptedProvider([Hang()]), ScriptedProvider([Say("x")]), queue_timeout=0.3
        ) as (a, b),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(run, a, "holder")
        await wait_until(lambda: _running(a, 1))
        with trio.fail_after(BOUND), pytest.raises(SessionBusyError):
            await run(b, "late")
        assert len(await cluster_of(b).live_runs()) == 1
        nursery.cancel_scope.cancel()


async def test_cluster_cancelled_waiter_leaves_no_row(pg_dsn: str) -> None:
    async with (
        instances(pg_dsn, ScriptedProvider([Hang()]), ScriptedProvider([Say("x")])) as (a, b),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(run, a, "holder")
        await wait_until(lambda: _running(a, 1))
        with trio.move_on_after(0.3) as waited:
            await run(b, "gives up")
        assert waited.cancelled_caught
        assert [r.state for r in await cluster_of(b).live_runs()] == ["running"]
        nursery.cancel_scope.cancel()


async def test_cluster_abort_status_and_wait_from_another_instance(pg_dsn: str) -> None:
    async with (
        instances(
            pg_dsn, ScriptedProvider([Say("partial "), Hang()]), ScriptedProvider([Say("x")])
        ) as (a, b),
        trio.open_nursery() as nursery,
    ):
        results: list[RunResult] = []

        async def victim() -> None:
            results.append(await run(a, "long"))

        nursery.start_soon(victim)
        await wait_until(lambda: _running(a, 1))
        (run_id,) = [r.run_id for r in a.active_runs.running()]
        # status on b lists a's run, with a's instance id
        shown = await status(b, NoParams())
        assert shown.instance_id == "i1"
        assert [(r.run_id, r.instance_id) for r in shown.runs] == [(run_id, "i0")]
        waited: list[dict[str, object] | None] = []

        async def wait_on_b() -> None:
            waited.append(await cluster_of(b).wait_result(run_id))

        nursery.start_soon(wait_on_b)
        with trio.fail_after(1):  # the notification, not a heartbeat
            assert await cluster_of(b).request_abort(run_id) == [run_id]
            while not results:
                await trio.sleep(0.005)
        assert results[0].status == "aborted"
        with trio.fail_after(BOUND):
            while not waited:
                await trio.sleep(0.01)
        assert waited[0] is not None
        assert waited[0]["status"] == "aborted"
        assert waited[0]["text"] == "partial "


async def test_cluster_abort_whose_notification_was_lost_lands_at_the_next_beat(
    pg_dsn: str,
) -> None:
    async with (
        instances(pg_dsn, ScriptedProvider([Hang()])) as (a,),
        trio.open_nursery() as nursery,
    ):
        results: list[RunResult] = []

        async def victim() -> None:
            results.append(await run(a, "long"))

        nursery.start_soon(victim)
        await wait_until(lambda: _running(a, 1))
        (run_id,) = [r.run_id for r in a.active_runs.running()]
        # The request stored, its notification never sent (lost).
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE epiloop_runs SET abort_reason = 'lost' WHERE run_id = %s", (run_id,)
            )
        with trio.fail_after(1 / 3 + 0.5):  # one heartbeat (leaseSeconds / 3) and a margin
            while not results:
                await trio.sleep(0.01)
        assert results[0].status == "aborted"


async def test_cluster_holder_that_stopped_renewing_is_passed_after_its_lease(
    pg_dsn: str,
) -> None:
    async with instances(pg_dsn, ScriptedProvider([Say("x")])) as (b,):
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            # A "killed" instance: its row expires in 1 s and nobody renews it.
            conn.execute(
                "INSERT INTO epiloop_instances (instance_id, host, pid, version, expires_at) "
                "VALUES ('killed', 'h', 1, 'v', now() + interval '1 second')"
            )
            conn.execute(
                "SELECT epiloop_enter('dead-run', 'killed', 'main', 's', 'http', NULL, true, NULL)"
            )
        started = trio.current_time()
        with trio.fail_after(BOUND):
            result = await run(b, "after the dead")
        assert result.status == "completed"
        assert 0.5 < trio.current_time() - started < 1 + 1  # the lease, plus a poll or two


async def test_cluster_cap_queues_then_refuses_with_429(pg_dsn: str) -> None:
    async with (
        instances(
            pg_dsn,
            ScriptedProvider([Hang()]),
            ScriptedProvider([Say("x")]),
            clusterMaxConcurrent=1,
            maxQueued=1,
        ) as (a, b),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(run, a, "holder", None)
        await wait_until(lambda: _running(a, 1))
        results: list[RunResult] = []

        async def queued() -> None:
            results.append(await run(b, "queued", None))

        nursery.start_soon(queued)
        await wait_until(lambda: _waiting_is(b, 1))
        with trio.fail_after(BOUND), pytest.raises(OverloadedError):
            await run(b, "refused", None)
        assert not results
        a.active_runs.abort_all("test")
        with trio.fail_after(BOUND):
            while not results:
                await trio.sleep(0.01)
        assert results[0].status == "completed"


async def test_cluster_stateful_run_costs_one_round_trip_before_its_end(pg_dsn: str) -> None:
    async with instances(pg_dsn, ScriptedProvider([Say("x")]), lease=60) as (a,):
        db = cluster_of(a).db
        await run(a, "warm up")
        await wait_until(lambda: _no_runs(a))  # its release written
        before = db.statistics().calls
        prepared = await a.prepare(request("counted"))
        with await a.admit(prepared) as admitted:
            result = await admitted.run(_ignore)
            during = db.statistics().calls - before
        assert result.status == "completed"
        # admission (register + lane + slot) in one statement; the session store's get and
        # record_turn are the other two round trips of the hot path (a memory store here).
        assert during == 1
        with trio.fail_after(BOUND):
            while db.statistics().calls - before < 2:  # the batched release, after the run
                await trio.sleep(0.01)
        assert await cluster_of(a).live_runs() == []


async def test_cluster_listener_reconnects_and_notifications_work_again(pg_dsn: str) -> None:
    async with (
        instances(pg_dsn, ScriptedProvider([Hang()]), ScriptedProvider([Say("x")]), lease=60) as (
            a,
            b,
        ),
        trio.open_nursery() as nursery,
    ):
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'epiloop-listener' AND pid <> pg_backend_pid()"
            )
        with trio.fail_after(BOUND):
            node = cluster_of(a)
            while node.listener_connections < 2 or node.health() is not None:
                await trio.sleep(0.01)
        results: list[RunResult] = []

        async def victim() -> None:
            results.append(await run(a, "long"))

        nursery.start_soon(victim)
        await wait_until(lambda: _running(a, 1))
        (run_id,) = [r.run_id for r in a.active_runs.running()]
        with trio.fail_after(1):  # lease 60: only the notification can be this fast
            await cluster_of(b).request_abort(run_id)
            while not results:
                await trio.sleep(0.005)
        assert results[0].status == "aborted"


async def _no_runs(runtime: AgentRuntime) -> bool:
    return await cluster_of(runtime).live_runs() == []


async def _ignore(event: RunEvent) -> None:
    await trio.lowlevel.checkpoint()


async def test_cluster_database_lost_stateful_503_stateless_runs_then_recovers(
    pg_dsn: str,
) -> None:
    import os

    from psycopg.conninfo import conninfo_to_dict

    from trio_gateway.errors import SessionStoreUnavailableError

    server = os.environ.get("EPILOOP_TEST_POSTGRES", DEFAULT_SERVER)
    name = conninfo_to_dict(pg_dsn)["dbname"]
    async with instances(pg_dsn, ScriptedProvider([Say("x")])) as (a,):
        node = cluster_of(a)
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            try:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                with trio.fail_after(BOUND):
                    while node.health() is None:
                        await trio.sleep(0.01)
                with trio.fail_after(BOUND):
                    assert (await run(a, "stateless", None)).status == "completed"
                with trio.fail_after(BOUND), pytest.raises(SessionStoreUnavailableError):
                    await run(a, "stateful")
            finally:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        with trio.fail_after(BOUND):
            while node.health() is not None:
                await trio.sleep(0.05)
            assert (await run(a, "stateful again")).status == "completed"


DEFAULT_SERVER = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


async def test_cluster_restart_with_the_same_instance_id_frees_what_it_held(pg_dsn: str) -> None:
    # A previous process "i0" holds the lane of "s" with a run, and is killed (-9). Its
    # successor takes the same id (a fixed gateway.instanceId, or <host>-<pid> with the same
    # pid in a container), so its row is renewed and never expires: the run it left must not
    # hold the lane for as long as the new process lives.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate(conn)
        register(conn, "i0", 1, "old")
        entry = lanes.Entry("ghost", "i0", "main", "s", "http", None, needs_lane=True)
        assert lanes.enter(conn, entry, None).outcome is lanes.Outcome.RUNNING
    async with instances(pg_dsn, ScriptedProvider([Say("x")]), queue_timeout=5) as (a,):
        assert [r.run_id for r in await cluster_of(a).live_runs()] == []
        with trio.fail_after(BOUND):
            started = trio.current_time()
            assert (await run(a, "hello")).status == "completed"
        assert trio.current_time() - started < 1  # at once, not after a lease or a 409


@asynccontextmanager
async def shared_store(dsn: str) -> AsyncIterator[PostgresSessionStore]:
    async with open_database(dsn, pool_size=4) as db:
        await db.run(migrate, cancellable=False)
        yield PostgresSessionStore(db)


@pytest.mark.parametrize("operation", ["delete", "reset"])
async def test_cluster_session_cleared_while_a_run_is_in_flight_stays_cleared(
    pg_dsn: str, operation: str
) -> None:
    provider = ScriptedProvider([Say("one")])
    async with (
        shared_store(pg_dsn) as store,
        open_test_runtime(config(pg_dsn, "i0"), providers={"local": provider}, sessions=store) as a,
        trio.open_nursery() as nursery,
    ):
        await run(a, "first")
        provider.steps = (Say("partial"), Hang())
        results: list[RunResult] = []

        async def in_flight() -> None:
            results.append(await run(a, "second"))

        nursery.start_soon(in_flight)
        await wait_until(lambda: _active(a))
        # The session is cleared (from any instance) before the run's abort lands: the run
        # then ends and writes its aborted turn under the fence it was granted.
        assert await getattr(store, operation)("s") is True
        assert len(a.active_runs.abort_session("s")) == 1
        with trio.fail_after(BOUND):
            while not results:
                await trio.sleep(0.01)
        assert results[0].status == "aborted"
        session = await store.get("s")
        if operation == "delete":
            assert session is None
        else:
            assert session is not None
            assert session.transcript == []
        # The lane is free for the next run.
        provider.steps = (Say("three"),)
        with trio.fail_after(BOUND):
            assert (await run(a, "third")).status == "completed"


async def _active(runtime: AgentRuntime) -> bool:
    await trio.lowlevel.checkpoint()
    return bool(runtime.active_runs.running())


async def test_cluster_stateful_run_survives_pooled_connections_terminated(pg_dsn: str) -> None:
    # lease 60: no heartbeat uses (and so repairs) the pool during the test.
    async with instances(pg_dsn, ScriptedProvider([Say("x")]), lease=60) as (a,):
        assert (await run(a, "warm up")).status == "completed"
        await wait_until(lambda: _no_runs(a))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'epiloop-gateway' "
                "AND pid <> pg_backend_pid()"
            ).fetchone()
        assert killed is not None
        assert killed[0] >= 1
        await trio.sleep(0.1)  # the terminations land
        # The first statement of the next run (its admission) finds a dead connection: it is
        # tried again on a fresh one, not answered with 503.
        with trio.fail_after(BOUND):
            assert (await run(a, "after")).status == "completed"
