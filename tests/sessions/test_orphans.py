"""Which stored responses lost their run: the table of the module's rules."""

from __future__ import annotations

import pytest

from trio_gateway.sessions.orphans import orphaned
from trio_gateway.sessions.store import StoredResponse, StoredResponseStatus


def stored(response_id: str, instance: str, status: StoredResponseStatus) -> StoredResponse:
    return StoredResponse(
        id=response_id,
        kind="response",
        agent_id="main",
        run_id="r",
        status=status,
        instance_id=instance,
        created_at=0.0,
        body=b"{}",
    )


@pytest.mark.parametrize(
    ("record", "live_here", "live_instances", "lost"),
    [
        # live here: never lost
        (stored("a", "me", "in_progress"), {"a"}, set(), False),
        # own instance, not live here: lost (restarted under the same id)
        (stored("a", "me", "in_progress"), set(), {"me"}, True),
        (stored("a", "me", "queued"), set(), set(), True),
        # another instance that is alive: not lost
        (stored("a", "other", "in_progress"), set(), {"other"}, False),
        # another instance that is gone: lost
        (stored("a", "other", "in_progress"), set(), {"third"}, True),
        # finished: never lost
        (stored("a", "other", "completed"), set(), set(), False),
    ],
)
def test_orphaned_follows_the_rules(
    record: StoredResponse, live_here: set[str], live_instances: set[str], lost: bool
) -> None:
    found = orphaned(
        [record],
        own_instance="me",
        live_here=frozenset(live_here),
        live_instances=frozenset(live_instances),
    )
    assert found == ([record] if lost else [])
