"""Operator endpoints: liveness, readiness and Prometheus metrics.

- ``GET /healthz``: the process serves requests. No auth; creates no session, runs no agent.
- ``GET /readyz``: ready for traffic: the session store answers a real read and write, the
  gateway is not draining for shutdown, and (PostgreSQL mode) the instance's lease is renewed
  and its listener connected (``cluster``). 503 with the failing checks otherwise. No auth. There is
  no config check: a gateway runs only with a valid config, and a reload that fails leaves the
  previous one in force (the failure goes to whoever asked for the reload). The store is probed
  (:meth:`SessionStore.probe`) at most every ``session.probeIntervalSeconds``, one probe at a
  time; in between the last probe's outcome stands, unless a real request found the store
  failing since (``SessionStore.health``), which turns readiness red at once until a read or
  write succeeds again.
- ``GET /metrics``: Prometheus text format (see :mod:`trio_gateway.metrics`); behind the
  gateway's bearer auth unless ``gateway.http.endpoints.metrics.requireAuth`` is false, and
  absent (404) when ``gateway.http.endpoints.metrics.enabled`` is false.
"""

from __future__ import annotations

import logging
import math

import msgspec
import trio
from quart import Response
from quart_trio import QuartTrio

from .. import metrics
from ..agent import AgentRuntime
from ..errors import EndpointDisabledError
from ..sessions import SessionStore
from .app_state import authorize

__all__ = ["READINESS_BOUND_SECONDS", "register_ops_routes"]

logger = logging.getLogger(__name__)

#: How long the session store may take to answer a readiness probe.
READINESS_BOUND_SECONDS = 2.0


def _json(payload: object, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status=status, content_type="application/json")


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


def register_ops_routes(app: QuartTrio, runtime: AgentRuntime) -> None:
    store_readiness = _StoreReadiness(runtime)

    @app.route("/healthz", methods=["GET"], provide_automatic_options=False)
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.route("/readyz", methods=["GET"], provide_automatic_options=False)
    async def readyz() -> Response:
        checks = {
            "sessionStore": await store_readiness.check(),
            "notDraining": not runtime.draining,
        }
        if runtime.cluster is not None:
            failure = runtime.cluster.health()
            if failure is not None:
                logger.warning("readiness.cluster_failing reason=%s", failure)
            checks["cluster"] = failure is None
        ready = all(checks.values())
        return _json(
            {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
        )

    @app.route("/metrics", methods=["GET"], provide_automatic_options=False)
    async def prometheus() -> Response:
        endpoint = runtime.config.gateway.http.endpoints.metrics
        if not endpoint.enabled:
            raise EndpointDisabledError(
                "The metrics endpoint is disabled (gateway.http.endpoints.metrics.enabled)."
            )
        if endpoint.require_auth:
            authorize(runtime)
        return Response(metrics.render(), status=200, content_type=metrics.CONTENT_TYPE)
