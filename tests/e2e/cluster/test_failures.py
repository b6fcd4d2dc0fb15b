"""The cluster when something fails: a lane holder killed (``kill -9``) or paused past its
lease (``SIGSTOP``), the LISTEN connection cut by the server, PostgreSQL restarted mid-traffic.

Each test names what must never happen: a session stuck behind a dead process, a paused
process writing into a transcript another run moved on, an abort lost with a notification, a
stateful answer silently not stored.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import psycopg
import pytest
import trio
from e2e.cluster.harness import (
    LEASE_SECONDS,
    TOKEN,
    Node,
    StreamOutcome,
    UpstreamFactory,
    control,
    open_cluster,
    stream_chat,
    transcript_of,
    user_messages,
)
from postgres_server import open_private_postgres, postgres_binaries

from benchmarks.mock_upstream import Scenario

BOUND = 30
#: While PostgreSQL is down: a stateless request needs no database, so it answers about as
#: fast as ever; a stateful one is refused once the pool gave up on a connection (5 s).
STATELESS_BOUND = 3
REFUSAL_BOUND = 8
#: From PostgreSQL back to every instance ready again.
RECOVERY_BOUND = 15
QUICK = Scenario(tokens=["quick ", "reply"], pace=0.01)
SLOW = Scenario(tokens=["slow "] * 60, first_token_delay=0.05, pace=0.05)  # about 3 s


async def _start_stream(
    nursery: trio.Nursery,
    client: httpx.AsyncClient,
    node: Node,
    message: str,
    session_key: str | None,
) -> list[StreamOutcome]:
    """Start a streaming request in ``nursery``; return once its first content arrived. The
    list gets its outcome when it ends."""
    streaming = trio.Event()
    outcomes: list[StreamOutcome] = []

    async def run() -> None:
        outcomes.append(
            await stream_chat(client, node, message, session_key=session_key, first_chunk=streaming)
        )

    nursery.start_soon(run)
    with trio.fail_after(BOUND):
        await streaming.wait()
    return outcomes


async def _session(node: Node, key: str) -> list[tuple[str, str, str]]:
    async with control(node) as client:
        return transcript_of(await client.request("sessions.get", {"key": key}))


async def test_killed_lane_holder_releases_the_session_after_its_lease(
    tmp_path: Path, pg_dsn: str, serve_upstream: UpstreamFactory
) -> None:
    # Upstream calls in order: the first turn, the run that dies, the run after it.
    upstream = await serve_upstream({"cluster": [QUICK, SLOW, QUICK]})
    async with (
        open_cluster(tmp_path, pg_dsn, upstream.url) as nodes,
        httpx.AsyncClient(timeout=BOUND) as client,
        trio.open_nursery() as background,
    ):
        first = await stream_chat(client, nodes[2], "first", session_key="survivor")
        assert first.done, first
        dying = await _start_stream(background, client, nodes[0], "dies", "survivor")
        after: list[StreamOutcome] = []

        async def next_run() -> None:
            after.append(await stream_chat(client, nodes[1], "after", session_key="survivor"))

        background.start_soon(next_run)
        await trio.sleep(0.5)
        assert len(upstream.requests) == 2  # the next run waits for the lane
        nodes[0].kill()
        killed_at = trio.current_time()
        with trio.fail_after(BOUND):
            while not after or not dying:
                await trio.sleep(0.02)
        transcript = await _session(nodes[1], "survivor")

    [outcome] = after
    assert (outcome.status, outcome.done, outcome.error) == (200, True, None), outcome
    assert not dying[0].done
    [_, _, third] = upstream.requests
    waited = third.received_at - killed_at
    # Not before the lease could have expired (its last renewal was at most a third of the
    # lease before the kill), and not much after.
    assert LEASE_SECONDS / 2 <= waited <= LEASE_SECONDS + 3, waited
    # The dead run left nothing; the next run saw the whole history before it.
    assert user_messages(third) == ["first", "after"]
    assert transcript == [
        ("user", "first", "completed"),
        ("assistant", "quick reply", "completed"),
        ("user", "after", "completed"),
        ("assistant", "quick reply", "completed"),
    ]


async def test_paused_lane_holder_cannot_write_after_losing_its_lease(
    tmp_path: Path, pg_dsn: str, serve_upstream: UpstreamFactory
) -> None:
    upstream = await serve_upstream({"cluster": [SLOW, QUICK]})
    async with (
        open_cluster(tmp_path, pg_dsn, upstream.url) as nodes,
        httpx.AsyncClient(timeout=BOUND) as client,
        trio.open_nursery() as background,
    ):
        paused = await _start_stream(background, client, nodes[0], "paused", "fenced")
        nodes[0].pause()
        try:
            # Another instance takes the session once the paused one's lease expired.
            with trio.fail_after(BOUND):
                taken = await stream_chat(client, nodes[1], "taken", session_key="fenced")
            assert (taken.status, taken.done, taken.error) == (200, True, None), taken
            # The paused process's upstream stream ended meanwhile (the mock kept writing).
            with trio.fail_after(BOUND):
                while upstream.requests[0].completed_at is None:
                    await trio.sleep(0.05)
        finally:
            nodes[0].resume()
        # Resumed, it reads the rest of its answer, then fails to store its turn.
        with trio.fail_after(BOUND):
            while not paused:
                await trio.sleep(0.02)
        transcript = await _session(nodes[2], "fenced")
        assert nodes[0].process.poll() is None, nodes[0].log_tail()

    [outcome] = paused
    assert outcome.status == 200
    assert not outcome.done, outcome
    assert outcome.error is not None, outcome
    assert outcome.error["code"] == "lease_lost"
    assert transcript == [
        ("user", "taken", "completed"),
        ("assistant", "quick reply", "completed"),
    ]


def _listeners(dsn: str) -> list[int]:
    """The backends of this database waiting on LISTEN (the instances' listener connections)."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute(
            """
            SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND query ILIKE 'listen%'
            """
        ).fetchall()
    return [int(row[0]) for row in rows]


def _terminate(dsn: str, pids: list[int]) -> None:
    with psycopg.connect(dsn, autocommit=True) as connection:
        for pid in pids:
            connection.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_abort_lands_when_the_listener_connection_was_terminated(
    tmp_path: Path, pg_dsn: str, serve_upstream: UpstreamFactory
) -> None:
    upstream = await serve_upstream({"cluster": Scenario(tokens=["z "] * 200, pace=0.05)})
    async with (
        open_cluster(tmp_path, pg_dsn, upstream.url) as nodes,
        httpx.AsyncClient(timeout=BOUND) as client,
        trio.open_nursery() as background,
    ):
        listeners = await trio.to_thread.run_sync(_listeners, pg_dsn)
        assert len(listeners) == len(nodes), listeners
        running = await _start_stream(background, client, nodes[0], "long", "cut-off")
        # Every instance loses its listener; the abort's notification goes nowhere.
        await trio.to_thread.run_sync(_terminate, pg_dsn, listeners)
        async with control(nodes[1]) as second:
            asked = trio.current_time()
            await second.abort(session_key="cut-off")
        with trio.fail_after(BOUND):
            await upstream.requests[0].closed.wait()
            while not running:
                await trio.sleep(0.02)
        took = trio.current_time() - asked
        # The durable path: the stored request is seen at the next heartbeat (a third of the
        # lease) at worst; the bound leaves room for a loaded machine.
        assert took < LEASE_SECONDS, took
        # The listeners are replaced.
        with trio.fail_after(BOUND):
            while True:
                now = await trio.to_thread.run_sync(_listeners, pg_dsn)
                if len(now) == len(nodes) and not set(now) & set(listeners):
                    break
                await trio.sleep(0.1)

    [outcome] = running
    assert not outcome.done
    assert outcome.error is not None
    assert outcome.error["code"] == "run_aborted"


async def _ready(http: httpx.AsyncClient, node: Node) -> bool:
    return (await http.get(f"{node.url}/readyz")).status_code == 200


async def _wait_ready(
    http: httpx.AsyncClient, nodes: list[Node], ready: bool, bound: float = BOUND
) -> None:
    with trio.fail_after(bound):
        while True:
            states = [await _ready(http, node) for node in nodes]
            if all(state == ready for state in states):
                return
            await trio.sleep(0.1)


async def test_postgres_restart_mid_traffic(
    tmp_path: Path, serve_upstream: UpstreamFactory
) -> None:
    bin_dir = postgres_binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    upstream = await serve_upstream({"cluster": [QUICK, SLOW, QUICK]})
    async with (
        open_private_postgres(bin_dir) as server,
        open_cluster(tmp_path, server.dsn, upstream.url, instances=2) as nodes,
        httpx.AsyncClient(timeout=BOUND) as http,
        openai.AsyncOpenAI(
            base_url=nodes[0].api_url, api_key=TOKEN, max_retries=0, timeout=BOUND
        ) as sdk,
        trio.open_nursery() as background,
    ):
        before = await stream_chat(http, nodes[0], "before", session_key="kept")
        assert before.done, before
        in_flight = await _start_stream(background, http, nodes[1], "in flight", "lost")
        await server.stop()
        try:
            await _wait_ready(http, nodes, ready=False)
            # Stateless requests keep working.
            with trio.fail_after(STATELESS_BOUND):
                answer = await sdk.chat.completions.create(
                    model="epiloop", messages=[{"role": "user", "content": "stateless"}]
                )
            assert answer.choices[0].message.content == "quick reply"
            # Stateful ones are refused before the first byte, or end with an error.
            with trio.fail_after(REFUSAL_BOUND):
                refused = await stream_chat(http, nodes[0], "refused", session_key="kept")
            if refused.status == 200:
                assert refused.error is not None, refused
                assert not refused.done, refused
            else:
                assert refused.status == 503, refused
                assert refused.body is not None
                assert refused.body["error"]["code"] == "session_store_unavailable"
            # The run whose turn could not be stored says so: no [DONE].
            with trio.fail_after(BOUND):
                while not in_flight:
                    await trio.sleep(0.05)
            [lost] = in_flight
            assert lost.status == 200
            assert not lost.done, lost
            assert lost.error is not None, lost
        finally:
            await server.start()
        # Back by itself.
        await _wait_ready(http, nodes, ready=True, bound=RECOVERY_BOUND)
        after = await stream_chat(http, nodes[1], "after", session_key="kept")
        assert (after.status, after.done, after.error) == (200, True, None), after
        transcript = await _session(nodes[0], "kept")

    assert [entry[1] for entry in transcript] == ["before", "quick reply", "after", "quick reply"]
