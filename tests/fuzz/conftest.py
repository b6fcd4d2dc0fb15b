"""Fixtures of the fuzz tests: one gateway subprocess per module, checked after every test."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fuzz.gateway_process import GatewayProcess, running_gateway

#: How quickly ``GET /healthz`` must answer after a batch of fuzz examples.
HEALTHZ_BOUND_SECONDS = 2.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with running_gateway(tmp_path_factory.mktemp("gateway")) as process:
        yield process


@pytest.fixture(autouse=True)
def gateway_still_serves(request: pytest.FixtureRequest, gateway: GatewayProcess) -> Iterator[None]:
    """After each test (a batch of examples): the gateway runs, ``/healthz`` answers 200
    quickly, and nothing was logged at ERROR (but the known bugs of
    :data:`~fuzz.gateway_process.KNOWN_ERRORS`, and in expected failures, which pin bugs)."""
    gateway.mark()
    yield
    gateway.assert_running()
    response = httpx.get(f"{gateway.url}/healthz", timeout=HEALTHZ_BOUND_SECONDS)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}
    if request.node.get_closest_marker("xfail") is None:
        assert not gateway.errors(known=False), gateway.describe_errors()
