-- Version 5: the cluster's coordination, as functions so that each step is one statement (one
-- round trip, atomic, and usable through a pooler in transaction mode).
--
-- Coordination rows (runs, lanes, results) are committed without waiting for the WAL flush
-- (synchronous_commit off, for these transactions only): admission is on every run's path to
-- its first token, and a flush costs 0.5-2 ms on an ordinary disk. It is safe: a server crash
-- can lose only the last few coordination commits, never a turn (turns commit synchronously,
-- and their flush carries every commit before them); a lost lane grant leaves its run holding
-- a fence that the lane no longer names, so its turn is refused, never written twice; and
-- instances re-register and their lanes expire as after any loss of the database.
--
-- A run that needs its session's lane (a stateful run) holds it from the moment lane_epoch is
-- set; a run with state 'running' holds a run slot too. Finished runs leave their result in
-- epiloop_results for a while (agent.wait and idempotent retries from any instance).
ALTER TABLE epiloop_runs
    ADD COLUMN needs_lane boolean NOT NULL DEFAULT true,
    ADD COLUMN lane_epoch bigint;

CREATE TABLE epiloop_results (
    run_id text PRIMARY KEY,
    instance_id text NOT NULL,
    idempotency_key text,
    finished_at timestamptz NOT NULL DEFAULT now(),
    result jsonb NOT NULL
);
CREATE INDEX epiloop_results_finished_at ON epiloop_results (finished_at);
CREATE INDEX epiloop_results_idempotency ON epiloop_results (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Whether an instance's lease is alive (its row has not expired by the database's clock).
CREATE FUNCTION epiloop_live(p_instance text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM epiloop_instances
                    WHERE instance_id = p_instance AND expires_at > now())
$$;

-- Move a waiting run on as far as it may go: its session's lane (FIFO by ticket among the
-- live waiters of the session, granted when the lane is free or its holder is gone), then a
-- run slot under the cluster cap p_cap (NULL: no cap; FIFO by ticket among the runs ready for
-- a slot). outcome: 'running' (admitted), 'lane' (waits for its lane), 'slot' (holds its lane,
-- waits for a slot), 'aborted' (someone aborted it while it waited), 'gone' (no such row).
CREATE FUNCTION epiloop_try_grant(p_run text, p_cap integer)
RETURNS TABLE (outcome text, epoch bigint)
LANGUAGE plpgsql AS $$
DECLARE
    r epiloop_runs%ROWTYPE;
    l epiloop_lanes%ROWTYPE;
    granted bigint;
    busy bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT * INTO r FROM epiloop_runs WHERE run_id = p_run;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'gone'::text, NULL::bigint;
        RETURN;
    END IF;
    IF r.state = 'running' THEN
        RETURN QUERY SELECT 'running'::text, r.lane_epoch;
        RETURN;
    END IF;
    IF r.abort_reason IS NOT NULL THEN
        RETURN QUERY SELECT 'aborted'::text, r.lane_epoch;
        RETURN;
    END IF;
    IF r.needs_lane AND r.lane_epoch IS NULL THEN
        INSERT INTO epiloop_lanes (session_key) VALUES (r.session_key) ON CONFLICT DO NOTHING;
        -- The lane's row lock serializes every grant of this session, whichever instance.
        SELECT * INTO l FROM epiloop_lanes WHERE session_key = r.session_key FOR UPDATE;
        IF l.holder IS NOT NULL AND epiloop_live(l.holder_instance)
           AND EXISTS (SELECT 1 FROM epiloop_runs h WHERE h.run_id = l.holder) THEN
            RETURN QUERY SELECT 'lane'::text, NULL::bigint;
            RETURN;
        END IF;
        IF EXISTS (SELECT 1 FROM epiloop_runs w
                     JOIN epiloop_instances i ON i.instance_id = w.instance_id
                    WHERE w.session_key = r.session_key AND w.needs_lane
                      AND w.state = 'waiting' AND w.lane_epoch IS NULL
                      AND w.ticket < r.ticket AND i.expires_at > now()) THEN
            RETURN QUERY SELECT 'lane'::text, NULL::bigint;
            RETURN;
        END IF;
        UPDATE epiloop_lanes
           SET holder = p_run, holder_instance = r.instance_id, epoch = epiloop_lanes.epoch + 1,
               acquired_at = now()
         WHERE session_key = r.session_key
        RETURNING epiloop_lanes.epoch INTO granted;
        UPDATE epiloop_runs SET lane_epoch = granted WHERE run_id = p_run;
        r.lane_epoch := granted;
    END IF;
    IF p_cap IS NOT NULL THEN
        -- One admission under the cap at a time, cluster-wide (a transaction-level lock: it
        -- works through a pooler in transaction mode). Taken after the lane's row lock, always
        -- in this order, so two grants never deadlock.
        PERFORM pg_advisory_xact_lock(7308895158390418544);
        SELECT count(*) INTO busy
          FROM epiloop_runs w JOIN epiloop_instances i ON i.instance_id = w.instance_id
         WHERE i.expires_at > now() AND w.run_id <> p_run
           AND (w.state = 'running'
                OR (w.ticket < r.ticket AND w.abort_reason IS NULL
                    AND (NOT w.needs_lane OR w.lane_epoch IS NOT NULL)));
        IF busy >= p_cap THEN
            RETURN QUERY SELECT 'slot'::text, r.lane_epoch;
            RETURN;
        END IF;
    END IF;
    UPDATE epiloop_runs SET state = 'running', admitted_at = now() WHERE run_id = p_run;
    RETURN QUERY SELECT 'running'::text, r.lane_epoch;
END
$$;

-- Register a run (state 'waiting', the next ticket) and move it on at once: admission in one
-- round trip. outcome 'duplicate': its run id or idempotency key is taken.
CREATE FUNCTION epiloop_enter(
    p_run text, p_instance text, p_agent text, p_session text, p_source text,
    p_idempotency_key text, p_needs_lane boolean, p_cap integer)
RETURNS TABLE (outcome text, epoch bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO epiloop_runs (run_id, instance_id, agent_id, session_key, source, state,
                              idempotency_key, needs_lane)
    VALUES (p_run, p_instance, p_agent, p_session, p_source, 'waiting',
            p_idempotency_key, p_needs_lane)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'duplicate'::text, NULL::bigint;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM epiloop_try_grant(p_run, p_cap);
END
$$;

-- Runs that ended (or left their queue): their rows go, the lanes they still hold under the
-- epoch they were granted are released (a stale epoch releases nothing), their results (NULL:
-- none to keep) are kept for agent.wait, and waiters are woken.
CREATE FUNCTION epiloop_finish(
    p_instance text, p_runs text[], p_keys text[], p_results jsonb[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    gone record;
    freed boolean := false;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    FOR gone IN
        DELETE FROM epiloop_runs WHERE run_id = ANY (p_runs)
        RETURNING run_id, session_key, needs_lane, lane_epoch, state
    LOOP
        IF gone.lane_epoch IS NOT NULL THEN
            UPDATE epiloop_lanes SET holder = NULL, holder_instance = NULL
             WHERE session_key = gone.session_key AND holder = gone.run_id
               AND epoch = gone.lane_epoch;
        END IF;
        IF gone.needs_lane THEN
            PERFORM pg_notify('epiloop_lane', gone.session_key);
        END IF;
        freed := freed OR gone.state = 'running' OR gone.lane_epoch IS NOT NULL;
    END LOOP;
    INSERT INTO epiloop_results (run_id, instance_id, idempotency_key, result)
    SELECT f.run_id, p_instance, f.key, f.result
      FROM unnest(p_runs, p_keys, p_results) AS f(run_id, key, result)
     WHERE f.result IS NOT NULL
    ON CONFLICT (run_id) DO UPDATE SET result = excluded.result, finished_at = now();
    PERFORM pg_notify('epiloop_done', f.run_id)
       FROM unnest(p_runs, p_results) AS f(run_id, result) WHERE f.result IS NOT NULL;
    IF freed THEN
        PERFORM pg_notify('epiloop_slot', '');
    END IF;
END
$$;
