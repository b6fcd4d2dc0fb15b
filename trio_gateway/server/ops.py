"""Operator endpoints: liveness, readiness and Prometheus metrics.

- ``GET /healthz``: the process serves requests. No auth; creates no session, runs no agent.
- ``GET /readyz``: ready for traffic (the checks of :mod:`trio_gateway.server.readiness`: the
  session store answers, the gateway is not draining, and in PostgreSQL mode the instance's
  lease is renewed and its listener connected); 503 with the failing checks otherwise.
  No auth. There is no config check: a gateway runs only with a valid config, and a reload that
  fails leaves the previous one in force (the failure goes to whoever asked for the reload).
- ``GET /metrics``: Prometheus text format (see :mod:`trio_gateway.metrics`); behind the
  gateway's bearer auth unless ``gateway.http.endpoints.metrics.requireAuth`` is false, and
  absent (404) when ``gateway.http.endpoints.metrics.enabled`` is false.
"""

from __future__ import annotations

import logging

import msgspec
from quart import Response
from quart_trio import QuartTrio

from .. import metrics
from ..agent import AgentRuntime
from ..errors import EndpointDisabledError
from .app_state import authorize
from .readiness import readiness_checks

__all__ = ["register_ops_routes"]

logger = logging.getLogger(__name__)


def _json(payload: object, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status=status, content_type="application/json")


def register_ops_routes(app: QuartTrio, runtime: AgentRuntime) -> None:
    @app.route("/healthz", methods=["GET"], provide_automatic_options=False)
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.route("/readyz", methods=["GET"], provide_automatic_options=False)
    async def readyz() -> Response:
        checks = await readiness_checks(runtime)
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
