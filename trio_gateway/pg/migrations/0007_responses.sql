-- Stored responses (the Responses API, resumable chat completion streams) and their event
-- logs, shared by every instance so that a client can poll a response or resume its stream on
-- any of them. A response is kept until expires_at (set when its run ends: the end plus the
-- retention), then swept. Ids, keys and statuses are gateway-made ASCII; body (the response
-- object), input (the input items) and the events are the bytes sent on the wire.
CREATE TABLE epiloop_responses (
    id text PRIMARY KEY,
    kind text NOT NULL,
    agent_id text NOT NULL,
    run_id text NOT NULL,
    status text NOT NULL CHECK (status IN
        ('queued', 'in_progress', 'completed', 'incomplete', 'failed', 'cancelled')),
    instance_id text NOT NULL,
    created_at double precision NOT NULL,
    body bytea NOT NULL,
    input bytea NOT NULL,
    session_key text,
    session_position integer,
    ended_at double precision,
    expires_at double precision,
    event_count integer NOT NULL DEFAULT 0,
    events_truncated boolean NOT NULL DEFAULT false
);
CREATE INDEX epiloop_responses_expiry ON epiloop_responses (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE INDEX epiloop_responses_unfinished ON epiloop_responses (instance_id)
    WHERE status IN ('queued', 'in_progress');

CREATE TABLE epiloop_response_events (
    response_id text NOT NULL REFERENCES epiloop_responses (id) ON DELETE CASCADE,
    sequence integer NOT NULL CHECK (sequence >= 0),
    data bytea NOT NULL,
    PRIMARY KEY (response_id, sequence)
);
