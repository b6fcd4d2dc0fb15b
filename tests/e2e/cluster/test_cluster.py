"""Three real gateway processes sharing one PostgreSQL database keep one process's promises:
a session's runs go one at a time in arrival order whichever process they reach, ``status``,
``agent.abort`` and ``agent.wait`` see every instance's runs, and the cluster-wide cap holds.

The upstream (a mock in the test's process) records when each upstream request started and
ended: what the lane assertions read.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
from e2e.cluster.harness import (
    LEASE_SECONDS,
    StreamOutcome,
    UpstreamFactory,
    busy_interval,
    control,
    most_at_once,
    open_cluster,
    overlapping,
    stream_chat,
    transcript_of,
    user_messages,
)

from benchmarks.mock_upstream import Scenario

#: Bound on one test's traffic (start-up is bounded apart).
BOUND = 30
#: Between two requests of the lane test: enough for each to be queued before the next comes.
STAGGER = 0.25
REPLY = [f"w{index} " for index in range(10)]


async def test_lane_runs_one_at_a_time_in_arrival_order_across_instances(
    tmp_path: Path, pg_dsn: str, serve_upstream: UpstreamFactory
) -> None:
    # About 0.6 s per run against 0.25 s between arrivals: every run but the first waits.
    upstream = await serve_upstream(
        {"cluster": Scenario(tokens=REPLY, first_token_delay=0.1, pace=0.05)}
    )
    async with open_cluster(tmp_path, pg_dsn, upstream.url) as nodes:
        outcomes: dict[int, StreamOutcome] = {}
        async with httpx.AsyncClient(timeout=BOUND) as client:

            async def send(index: int) -> None:
                node = nodes[index % len(nodes)]
                outcomes[index] = await stream_chat(
                    client, node, f"turn {index}", session_key="shared-lane"
                )

            with trio.fail_after(BOUND):
                async with trio.open_nursery() as requests:
                    for index in range(6):
                        requests.start_soon(send, index)
                        await trio.sleep(STAGGER)
        async with control(nodes[1]) as plane:
            detail = await plane.request("sessions.get", {"key": "shared-lane"})

    for index, outcome in sorted(outcomes.items()):
        assert (outcome.status, outcome.done, outcome.error) == (200, True, None), (index, outcome)
        assert outcome.text == "".join(REPLY)
    calls = upstream.requests
    assert len(calls) == 6
    intervals = [busy_interval(call) for call in calls]
    assert overlapping(intervals) == [], intervals
    # FIFO by arrival, and each run saw every earlier turn.
    turns = [f"turn {index}" for index in range(6)]
    assert [user_messages(call) for call in calls] == [turns[: i + 1] for i in range(6)]
    expected = []
    for turn in turns:
        expected += [("user", turn, "completed"), ("assistant", "".join(REPLY), "completed")]
    assert transcript_of(detail) == expected


async def test_status_abort_and_wait_work_from_other_instances(
    tmp_path: Path, pg_dsn: str, serve_upstream: UpstreamFactory
) -> None:
    upstream = await serve_upstream({"cluster": Scenario(tokens=["x "] * 200, pace=0.05)})
    async with (
        open_cluster(tmp_path, pg_dsn, upstream.url) as nodes,
        httpx.AsyncClient(timeout=BOUND) as client,
        trio.open_nursery() as background,
    ):
        streaming = trio.Event()
        outcomes: list[StreamOutcome] = []

        async def run() -> None:
            outcomes.append(
                await stream_chat(
                    client, nodes[0], "long", session_key="watched", first_chunk=streaming
                )
            )

        background.start_soon(run)
        with trio.fail_after(BOUND):
            await streaming.wait()
        async with control(nodes[1]) as second, control(nodes[2]) as third:
            status = await second.request("status")
            runs = status["runs"]
            assert isinstance(runs, list)
            listed = [run for run in runs if run["sessionKey"] == "watched"]
            assert len(listed) == 1, runs
            assert listed[0]["instanceId"] == "gw-0"
            run_id = listed[0]["runId"]
            assert isinstance(run_id, str)

            waited: list[dict[str, object]] = []

            async def wait() -> None:
                waited.append(await third.request("agent.wait", {"runId": run_id}))

            background.start_soon(wait)
            await trio.sleep(0.2)  # the wait is registered before the run ends
            asked = trio.current_time()
            assert await second.abort(run_id=run_id) == [run_id]
            with trio.fail_after(BOUND):
                await upstream.requests[0].closed.wait()
                while not waited or not outcomes:
                    await trio.sleep(0.02)
            upstream_stopped = upstream.requests[0].closed_at
            assert upstream_stopped is not None
            # The fast path (NOTIFY) at work: well under one heartbeat, and the instance says
            # which path brought the abort.
            assert upstream_stopped - asked < LEASE_SECONDS / 3
            assert f"cluster.abort.notified run_id={run_id}" in nodes[0].log_tail(1 << 20)

            status = await third.request("status")
            assert isinstance(status["runs"], list)
            assert [r for r in status["runs"] if r["sessionKey"] == "watched"] == []

    [outcome] = outcomes
    assert outcome.run_id == run_id
    assert not outcome.done
    assert outcome.error is not None
    assert outcome.error["code"] == "run_aborted"
    [result] = waited
    assert (result["runId"], result["status"]) == (run_id, "aborted")


async def test_cluster_cap_queues_then_refuses_across_instances(
    tmp_path: Path, pg_dsn: str, serve_upstream: UpstreamFactory
) -> None:
    upstream = await serve_upstream(
        {"cluster": Scenario(tokens=["y "] * 12, first_token_delay=0.1, pace=0.1)}
    )
    overrides = {"agents": {"defaults": {"clusterMaxConcurrent": 2, "maxQueued": 1}}}
    async with (
        open_cluster(tmp_path, pg_dsn, upstream.url, overrides=overrides) as nodes,
        httpx.AsyncClient(timeout=BOUND) as client,
    ):
        outcomes: dict[str, StreamOutcome] = {}

        async def send(name: str, node_index: int) -> None:
            outcomes[name] = await stream_chat(client, nodes[node_index], name, session_key=None)

        with trio.fail_after(BOUND):
            async with trio.open_nursery() as requests:
                # Two runs on two instances take the cluster's two slots.
                requests.start_soon(send, "first", 0)
                requests.start_soon(send, "second", 1)
                while len(upstream.requests) < 2:
                    await trio.sleep(0.02)
                # A third, on the third instance, queues: its upstream call waits.
                requests.start_soon(send, "queued", 2)
                await trio.sleep(0.4)
                assert len(upstream.requests) == 2
                # That instance's queue (maxQueued 1) is full: refused at once.
                refused = await stream_chat(client, nodes[2], "refused", session_key=None)
                assert len(upstream.requests) == 2

    assert refused.status == 429, refused
    assert refused.body is not None
    assert refused.body["error"]["code"] == "gateway_overloaded"
    assert refused.headers.get("retry-after"), refused.headers
    for name in ("first", "second", "queued"):
        assert (outcomes[name].status, outcomes[name].done) == (200, True), outcomes[name]
    assert len(upstream.requests) == 3
    assert most_at_once([busy_interval(call) for call in upstream.requests]) == 2
