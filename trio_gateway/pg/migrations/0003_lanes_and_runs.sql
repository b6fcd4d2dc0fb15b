-- Version 3: session lanes (one run of a session at a time, across instances) and the run
-- registry (every live or waiting run of every instance).
--
-- A lane is held by one run (holder) of one instance (holder_instance); the lease is alive
-- while that instance's row in epiloop_instances has not expired. epoch grows by one each
-- time the lane changes hands: a turn is written only under the lane's current holder and
-- epoch (fencing), so a run that lost its lease can never write.
CREATE TABLE epiloop_lanes (
    session_key text PRIMARY KEY,
    holder text,
    holder_instance text,
    epoch bigint NOT NULL DEFAULT 0,
    acquired_at timestamptz
);

-- One row per run from admission to its end. state 'waiting': queued for its session's lane
-- or a cluster run slot, in order of ticket (FIFO across instances); 'running': admitted.
-- abort_reason set: someone asked, from any instance, that the run be aborted (the durable
-- path; NOTIFY is the fast one).
CREATE TABLE epiloop_runs (
    run_id text PRIMARY KEY,
    instance_id text NOT NULL,
    agent_id text NOT NULL,
    session_key text NOT NULL,
    source text NOT NULL,
    state text NOT NULL CHECK (state IN ('waiting', 'running')),
    ticket bigserial NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    admitted_at timestamptz,
    text_chars bigint NOT NULL DEFAULT 0,
    idempotency_key text,
    abort_reason text
);
CREATE INDEX epiloop_runs_session ON epiloop_runs (session_key, ticket);
CREATE INDEX epiloop_runs_instance ON epiloop_runs (instance_id);
CREATE INDEX epiloop_runs_waiting ON epiloop_runs (ticket) WHERE state = 'waiting';
CREATE UNIQUE INDEX epiloop_runs_idempotency ON epiloop_runs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
