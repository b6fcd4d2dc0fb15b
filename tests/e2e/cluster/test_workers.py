"""The session lane under ``hypercorn -k trio --workers 2`` (the ASGI entry point): two worker
processes sharing one PostgreSQL database serialize a session's runs, in arrival order.

Today's failure this pins (issue 14): six concurrent requests of one session over two workers
ran two at a time, one per worker.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
from e2e.cluster.harness import (
    StreamOutcome,
    UpstreamFactory,
    busy_interval,
    control,
    open_workers,
    overlapping,
    stream_chat,
    transcript_of,
    user_messages,
)

from benchmarks.mock_upstream import Scenario

BOUND = 30
STAGGER = 0.25
REPLY = [f"v{index} " for index in range(10)]


async def test_lane_holds_across_hypercorn_workers(
    tmp_path: Path, pg_dsn: str, serve_upstream: UpstreamFactory
) -> None:
    upstream = await serve_upstream(
        {"cluster": Scenario(tokens=REPLY, first_token_delay=0.1, pace=0.05)}
    )
    async with open_workers(tmp_path, pg_dsn, upstream.url) as workers:
        outcomes: dict[int, StreamOutcome] = {}
        instances: set[str] = set()
        async with control(workers) as watcher:
            async with trio.open_nursery() as background:

                async def watch() -> None:
                    # Which workers hold the session's runs (running or waiting), as status
                    # says.
                    while True:
                        status = await watcher.request("status")
                        runs = status["runs"]
                        assert isinstance(runs, list)
                        instances.update(str(run["instanceId"]) for run in runs)
                        await trio.sleep(0.05)

                background.start_soon(watch)

                async def send(index: int) -> None:
                    # A connection of its own, so that the kernel spreads them over the workers.
                    async with httpx.AsyncClient(timeout=BOUND) as client:
                        outcomes[index] = await stream_chat(
                            client, workers, f"turn {index}", session_key="workers-lane"
                        )

                with trio.fail_after(BOUND):
                    async with trio.open_nursery() as requests:
                        for index in range(6):
                            requests.start_soon(send, index)
                            await trio.sleep(STAGGER)
                background.cancel_scope.cancel(reason="the requests are done")
            detail = await watcher.request("sessions.get", {"key": "workers-lane"})

    assert len(instances) == 2, instances  # both workers served some of them
    for index, outcome in sorted(outcomes.items()):
        assert (outcome.status, outcome.done, outcome.error) == (200, True, None), (index, outcome)
    calls = upstream.requests
    assert len(calls) == 6
    intervals = [busy_interval(call) for call in calls]
    assert overlapping(intervals) == [], intervals
    turns = [f"turn {index}" for index in range(6)]
    assert [user_messages(call) for call in calls] == [turns[: i + 1] for i in range(6)]
    assert len(transcript_of(detail)) == 12
