"""Fixtures for every test module."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture
def reclaim_client_sockets() -> Iterator[None]:
    """Collect garbage at the end of the test.

    trio-websocket, as a client, leaves the TCP socket of a connection the gateway closed to
    the garbage collector. Collected at an arbitrary later moment, its ResourceWarning would
    fail whichever test happens to run then. Modules whose clients leave such sockets use this
    fixture beside their warning filter, so the sockets are reclaimed (and the warning filtered)
    inside the test that left them.
    """
    yield
    gc.collect()
