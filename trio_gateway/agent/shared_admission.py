"""Admission in PostgreSQL mode: the session's lane (FIFO across every instance) and the cluster
cap are the cluster's (:mod:`trio_gateway.cluster`); the per-process run slot stays the
:class:`~trio_gateway.agent.admission.Admission`'s.

A stateful run reads its session once, under the lane (its agent checked before the first
byte), and writes its turn under the lane's fence. A stateless run needs no lane: when the
database is away it runs anyway, unregistered. Must not import the server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .._version import __version__
from ..cluster import ClusterNode, ClusterSettings, Entry, Finished
from ..config import Config
from ..errors import SessionStoreError
from ..sessions import SessionStore
from ..sessions.store import Fence
from .admission import Admission, Ticket
from .events import RunResult
from .kept import encode_result
from .loop import HeldLane
from .prepared import PreparedRun, session_mismatch

__all__ = ["SharedAdmission", "admit_shared", "cluster_settings"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class SharedAdmission:
    """What a run admitted through the cluster holds: its process slot (``ticket``, whose
    release also ends the run's registration), the session's lane with the session read under
    it (``lane``; ``None`` for a stateless run), and where its result goes (``finished``)."""

    ticket: Ticket
    lane: HeldLane | None
    registered: _SharedRun

    def finished(self, result: RunResult) -> None:
        self.registered.finished(result)


async def admit_shared(
    prepared: PreparedRun, cluster: ClusterNode, admission: Admission, sessions: SessionStore
) -> SharedAdmission:
    """Register the run with the cluster and wait for its lane and a cluster slot, then for a
    slot of this process; see the module docstring. Raises what the cluster and the admission
    raise (409, 429, 503 ``session_store_unavailable``) with nothing left held."""
    target = prepared.target
    stateful = not target.stateless
    entry = Entry(
        prepared.run_id,
        cluster.instance_id,
        target.agent.id,
        target.session_key,
        prepared.source,
        prepared.idempotency_key,
        needs_lane=stateful,
    )
    registered = _SharedRun(cluster, prepared)
    grant = None
    failing = None if stateful else cluster.health()
    if failing is not None:
        # The database is away: a stateless run does not wait for it to time out.
        logger.warning("cluster.unregistered run_id=%s reason=%s", prepared.run_id, failing)
        registered.done = True  # nothing to release
    else:
        try:
            grant = await cluster.acquire(entry)
        except SessionStoreError as exc:
            if stateful:
                raise
            logger.warning("cluster.unregistered run_id=%s reason=%s", prepared.run_id, exc)
            registered.done = True
    ticket = None
    try:
        ticket = await admission.admit(target.session_key, lane=False)
        lane = None
        if stateful:
            assert grant is not None
            assert grant.epoch is not None
            session = await sessions.get(target.session_key)
            if session is not None and session.agent_id.lower() != target.agent.id.lower():
                raise session_mismatch()
            lane = HeldLane(Fence(prepared.run_id, grant.epoch), session)
    except BaseException:
        if ticket is not None:
            ticket.release()
        registered.release()
        raise
    ticket.on_release = registered.release
    return SharedAdmission(ticket, lane, registered)


class _SharedRun:
    """A run registered with the cluster: ended once, with its result when it ran."""

    __slots__ = ("cluster", "done", "prepared")

    def __init__(self, cluster: ClusterNode, prepared: PreparedRun) -> None:
        self.cluster = cluster
        self.prepared = prepared
        self.done = False

    def finished(self, result: RunResult) -> None:
        if not self.done:
            self.done = True
            key = self.prepared.idempotency_key
            self.cluster.release(Finished(self.prepared.run_id, key, encode_result(result)))

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.cluster.release(Finished(self.prepared.run_id))


def cluster_settings(config: Config, instance_id: str) -> ClusterSettings:
    """The cluster's settings from ``config`` (at start, and again at each reload)."""
    defaults = config.agents.defaults
    kept = config.gateway.finished_runs
    return ClusterSettings(
        instance_id=instance_id,
        lease_seconds=config.session.postgres.lease_seconds,
        version=__version__,
        cap=defaults.cluster_max_concurrent,
        max_queued=defaults.max_queued,
        lane_wait_seconds=config.session.queue_timeout_seconds,
        keep_seconds=kept.keep_seconds,
        max_results=kept.max_count,
    )
