"""Operator endpoints: liveness, readiness and Prometheus metrics.

- ``GET /healthz``: the process serves requests. No auth; creates no session, runs no agent.
- ``GET /readyz``: ready for traffic: the config is loaded, the session store answers, and the
  gateway is not draining for shutdown. 503 with the failing checks otherwise. No auth.
- ``GET /metrics``: Prometheus text format (see :mod:`trio_gateway.metrics`); behind the
  gateway's bearer auth unless ``gateway.http.endpoints.metrics.requireAuth`` is false, and
  absent (404) when ``gateway.http.endpoints.metrics.enabled`` is false.
"""

from __future__ import annotations

import logging

import msgspec
import trio
from quart import Response
from quart_trio import QuartTrio

from .. import metrics
from ..agent import AgentRuntime
from ..errors import EndpointDisabledError
from .app_state import authorize

__all__ = ["READINESS_BOUND_SECONDS", "register_ops_routes"]

logger = logging.getLogger(__name__)

#: How long the session store may take to answer a readiness probe.
READINESS_BOUND_SECONDS = 2.0


def _json(payload: object, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status=status, content_type="application/json")


async def _store_answers(runtime: AgentRuntime) -> bool:
    with trio.move_on_after(READINESS_BOUND_SECONDS):
        try:
            await runtime.sessions.list_sessions(limit=1)
        except Exception:
            logger.warning("readiness.store_failed", exc_info=True)
            return False
        return True
    return False


def register_ops_routes(app: QuartTrio, runtime: AgentRuntime) -> None:
    @app.route("/healthz", methods=["GET"], provide_automatic_options=False)
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.route("/readyz", methods=["GET"], provide_automatic_options=False)
    async def readyz() -> Response:
        checks = {
            "config": True,
            "sessionStore": await _store_answers(runtime),
            "notDraining": not runtime.draining,
        }
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
