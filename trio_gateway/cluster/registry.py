"""The run registry shared by every instance: who runs what, abort requests, kept results.

Owns the statements over ``epiloop_runs`` and ``epiloop_results`` other than admission
(:mod:`.lanes`): the live runs of every instance (``status``), abort requests (stored in the
run's row: the durable path; ``NOTIFY epiloop_abort``: the fast one), the batched progress
update and abort check that ride on the heartbeat, the sweep of what expired instances left
behind, the lookups of ``agent.wait`` and idempotent retries.

Plain functions of a connection. Imports psycopg only (never trio, the agent or the server).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import psycopg

__all__ = [
    "LiveRun",
    "abort_check",
    "find_idempotent",
    "leave",
    "live_runs",
    "request_abort",
    "request_session_abort",
    "result_of",
    "run_is_live",
    "sweep",
]

#: Channels: a lane was released or left (payload: the session key), a run slot was freed, an
#: abort was requested (payload: the run id), a run finished (payload: the run id).
LANE_CHANNEL = "epiloop_lane"
SLOT_CHANNEL = "epiloop_slot"
ABORT_CHANNEL = "epiloop_abort"
DONE_CHANNEL = "epiloop_done"
CHANNELS = (LANE_CHANNEL, SLOT_CHANNEL, ABORT_CHANNEL, DONE_CHANNEL)


@dataclass(frozen=True, slots=True)
class LiveRun:
    """A run of a live instance, as the registry has it (text as of its last heartbeat)."""

    run_id: str
    instance_id: str
    agent_id: str
    session_key: str
    source: str
    state: str
    started_at: float
    age_seconds: float
    text_chars: int


def live_runs(connection: psycopg.Connection) -> list[LiveRun]:
    """Every run (waiting and running) of every live instance, oldest first."""
    rows = connection.execute(
        """
        SELECT r.run_id, r.instance_id, r.agent_id, r.session_key, r.source, r.state,
               extract(epoch FROM r.started_at)::float8,
               extract(epoch FROM now() - r.started_at)::float8, r.text_chars
          FROM epiloop_runs r JOIN epiloop_instances i ON i.instance_id = r.instance_id
         WHERE i.expires_at > now()
         ORDER BY r.ticket
         LIMIT 10000
        """
    ).fetchall()
    return [
        LiveRun(
            str(run_id),
            str(instance),
            str(agent),
            str(session),
            str(source),
            str(state),
            float(started),
            float(age),
            int(chars),
        )
        for run_id, instance, agent, session, source, state, started, age, chars in rows
    ]


def request_abort(connection: psycopg.Connection, run_id: str, reason: str) -> list[str]:
    """Store an abort request in the run's row and notify its instance; the run ids asked."""
    rows = connection.execute(
        """
        WITH asked AS (
            UPDATE epiloop_runs SET abort_reason = %s WHERE run_id = %s RETURNING run_id)
        SELECT run_id, pg_notify('epiloop_abort', run_id) FROM asked
        """,
        (reason, run_id),
    ).fetchall()
    return [str(row[0]) for row in rows]


def request_session_abort(
    connection: psycopg.Connection, session_key: str, reason: str, *, except_instance: str
) -> list[str]:
    """The same for the running runs of a session on other instances than ``except_instance``
    (which aborts its own at once, without the database). The rows are locked in run id order,
    as by every statement that locks several (so two of them never deadlock)."""
    rows = connection.execute(
        """
        WITH locked AS MATERIALIZED (
            SELECT run_id FROM epiloop_runs
             WHERE session_key = %s AND state = 'running' AND instance_id <> %s
             ORDER BY run_id FOR UPDATE),
        asked AS (
            UPDATE epiloop_runs r SET abort_reason = %s
              FROM locked WHERE r.run_id = locked.run_id
            RETURNING r.run_id)
        SELECT run_id, pg_notify('epiloop_abort', run_id) FROM asked
        """,
        (session_key, except_instance, reason),
    ).fetchall()
    return [str(row[0]) for row in rows]


def abort_check(
    connection: psycopg.Connection, instance_id: str, progress: Mapping[str, int]
) -> dict[str, str]:
    """At each heartbeat, in one statement: store the text produced so far by this instance's
    runs (``progress``: run id → characters) and read the abort requests stored for them (run
    id → reason): the durable path of an abort whose notification was lost. The rows updated
    are locked in run id order (see :func:`request_session_abort`)."""
    rows = connection.execute(
        """
        WITH changed AS MATERIALIZED (
            SELECT r.run_id, p.chars
              FROM epiloop_runs r
              JOIN unnest(%s::text[], %s::bigint[]) AS p(run_id, chars) ON p.run_id = r.run_id
             WHERE r.text_chars <> p.chars
             ORDER BY r.run_id FOR UPDATE OF r),
        progress AS (
            UPDATE epiloop_runs r SET text_chars = changed.chars
              FROM changed WHERE r.run_id = changed.run_id)
        SELECT run_id, abort_reason FROM epiloop_runs
         WHERE instance_id = %s AND abort_reason IS NOT NULL
        """,
        (list(progress), list(progress.values()), instance_id),
    ).fetchall()
    return {str(run_id): str(reason) for run_id, reason in rows}


def sweep(
    connection: psycopg.Connection,
    keep_seconds: float,
    max_results: int,
    grace_seconds: float | None = None,
) -> None:
    """Forget, in one statement (``epiloop_sweep``), what expired instances left (their runs'
    rows; their lanes are free already, as their holders are not live) and the kept results
    past their age or count. With ``grace_seconds`` (a deeper sweep, now and then), also the
    rows of instances expired for longer than that and the free lanes of sessions that do not
    exist."""
    connection.execute(
        "SELECT epiloop_sweep(%s, %s, %s)", (keep_seconds, max_results, grace_seconds)
    )


def leave(connection: psycopg.Connection, instance_id: str) -> None:
    """A clean exit: this instance's rows go, its lanes are released, waiters are woken."""
    with connection.transaction():
        rows = connection.execute(
            """
            DELETE FROM epiloop_runs WHERE run_id IN (
                SELECT run_id FROM epiloop_runs WHERE instance_id = %s
                 ORDER BY run_id FOR UPDATE)
            RETURNING session_key, needs_lane
            """,
            (instance_id,),
        ).fetchall()
        connection.execute(
            """
            UPDATE epiloop_lanes SET holder = NULL, holder_instance = NULL
             WHERE holder_instance = %s
            """,
            (instance_id,),
        )
        for session_key in sorted({str(key) for key, needs_lane in rows if needs_lane}):
            connection.execute("SELECT pg_notify('epiloop_lane', %s)", (session_key,))
        connection.execute("SELECT pg_notify('epiloop_slot', '')")
        connection.execute("DELETE FROM epiloop_instances WHERE instance_id = %s", (instance_id,))


def result_of(connection: psycopg.Connection, run_id: str) -> dict[str, object] | None:
    """A finished run's kept result (JSON), or ``None``."""
    row = connection.execute(
        "SELECT result FROM epiloop_results WHERE run_id = %s", (run_id,)
    ).fetchone()
    return None if row is None else _object(row[0])


def run_is_live(connection: psycopg.Connection, run_id: str) -> bool:
    """Whether ``run_id`` is registered by a live instance (waiting or running)."""
    row = connection.execute(
        """
        SELECT EXISTS (SELECT 1 FROM epiloop_runs r
                         JOIN epiloop_instances i ON i.instance_id = r.instance_id
                        WHERE r.run_id = %s AND i.expires_at > now())
        """,
        (run_id,),
    ).fetchone()
    return bool(row and row[0])


def find_idempotent(connection: psycopg.Connection, key: str) -> str | None:
    """The run started with idempotency key ``key`` (live, or finished and kept), or ``None``."""
    row = connection.execute(
        """
        SELECT run_id FROM epiloop_runs r
          JOIN epiloop_instances i ON i.instance_id = r.instance_id
         WHERE r.idempotency_key = %s AND i.expires_at > now()
        UNION ALL
        (SELECT run_id FROM epiloop_results WHERE idempotency_key = %s
          ORDER BY finished_at DESC LIMIT 1)
        LIMIT 1
        """,
        (key, key),
    ).fetchone()
    return None if row is None else str(row[0])


def _object(value: object) -> dict[str, object] | None:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else None
