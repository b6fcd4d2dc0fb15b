-- Version 2: the gateway instances sharing this database. An instance renews its row at every
-- heartbeat; whatever it holds (session lanes, live runs) is alive while expires_at is ahead.
CREATE TABLE epiloop_instances (
    instance_id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX epiloop_instances_expires_at ON epiloop_instances (expires_at);
