"""Fixtures of the cluster end-to-end tests: the mock upstream, served in the test's nursery."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
import trio
from e2e.cluster.harness import UpstreamFactory

from benchmarks.mock_upstream import MockUpstream, Scenario


@pytest.fixture
def serve_upstream(nursery: trio.Nursery) -> UpstreamFactory:
    """Start a :class:`MockUpstream` with the given scenarios (by model; the gateways ask for
    model ``cluster``); it serves until the test ends."""

    async def start(scenarios: Mapping[str, Scenario | Sequence[Scenario]]) -> MockUpstream:
        upstream = MockUpstream(scenarios)
        await nursery.start(upstream.serve)
        return upstream

    return start
