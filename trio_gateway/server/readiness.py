"""Whether the gateway is ready for traffic: the checks ``GET /readyz`` and the control plane's
``health`` method report.

- ``sessionStore``: the session store answers a real read and write. It is probed
  (:meth:`SessionStore.probe`) at most every ``session.probeIntervalSeconds``, one probe at a
  time; in between the last probe's outcome stands, unless a real request found the store
  failing since (``SessionStore.health``), which turns the check red at once until a read or
  write succeeds again.
- ``notDraining``: the gateway is not shutting down.
- ``cluster`` (PostgreSQL mode only): the instance's lease is renewed and its listener
  connected.

One :class:`_StoreReadiness` per served runtime, shared by both callers so a page that polls
``health`` and a load balancer that polls ``/readyz`` cause one probe per interval together.
"""

from __future__ import annotations

import logging
import math
from weakref import WeakKeyDictionary

import trio

from ..agent import AgentRuntime
from ..sessions import SessionStore

__all__ = ["READINESS_BOUND_SECONDS", "readiness_checks"]

logger = logging.getLogger(__name__)

#: How long the session store may take to answer a readiness probe.
READINESS_BOUND_SECONDS = 2.0


class _StoreReadiness:
    """The session store's part of readiness: a real probe, at most every interval."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self._runtime = runtime
        self._lock = trio.Lock()
        self._probed_at = -math.inf
        self._ok = False

    async def check(self) -> bool:
        store = self._runtime.sessions
        interval = self._runtime.config.session.probe_interval_seconds
        async with self._lock:  # one probe at a time; the others take its outcome
            if trio.current_time() - self._probed_at >= interval:
                self._ok = await _probe(store)
                self._probed_at = trio.current_time()
        failure = store.health()
        if failure is not None and self._ok:
            logger.warning("readiness.store_failing reason=%s", failure)
        return self._ok and failure is None


async def _probe(store: SessionStore) -> bool:
    with trio.move_on_after(READINESS_BOUND_SECONDS):
        try:
            await store.probe()
        except Exception as exc:
            logger.warning("readiness.store_failed error=%s", exc)
            return False
        return True
    logger.warning("readiness.store_failed reason=timeout")
    return False


_readiness: WeakKeyDictionary[AgentRuntime, _StoreReadiness] = WeakKeyDictionary()


async def readiness_checks(runtime: AgentRuntime) -> dict[str, bool]:
    """Each readiness check by name (camelCase, as reported); ready when all are true."""
    store = _readiness.setdefault(runtime, _StoreReadiness(runtime))
    checks = {"sessionStore": await store.check(), "notDraining": not runtime.draining}
    if runtime.cluster is not None:
        failure = runtime.cluster.health()
        if failure is not None:
            logger.warning("readiness.cluster_failing reason=%s", failure)
        checks["cluster"] = failure is None
    return checks
