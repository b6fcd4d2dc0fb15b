-- Version 4: the sessions (transcripts and their totals), shared by every instance.
--
-- Strings that a client, a model or a tool produced (a model name, a run id, message content,
-- names, tool call ids) are bytea: the UTF-8 bytes of the string, with lone surrogates kept
-- (Python's surrogatepass), because PostgreSQL's text holds neither NUL nor a lone surrogate
-- and a transcript must come back exactly as it was stored. Read them with
-- convert_from(content, 'UTF8'). Session keys and agent ids are text (the gateway makes them
-- printable ASCII); agent_id_lower is Python's str.lower() of agent_id, for the list filter.
CREATE TABLE epiloop_sessions (
    key text PRIMARY KEY,
    agent_id text NOT NULL,
    agent_id_lower text NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    model bytea NOT NULL,
    last_status text NOT NULL CHECK (last_status IN ('completed', 'failed', 'aborted')),
    last_run_id bytea NOT NULL,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    message_count integer NOT NULL DEFAULT 0,
    -- Creation order: sessions updated at the same time list in the order they were created.
    created_seq bigserial NOT NULL
);
CREATE INDEX epiloop_sessions_recent ON epiloop_sessions (updated_at DESC, created_seq);
CREATE INDEX epiloop_sessions_agent ON epiloop_sessions (agent_id_lower, updated_at DESC, created_seq);

CREATE TABLE epiloop_messages (
    session_key text NOT NULL REFERENCES epiloop_sessions (key) ON DELETE CASCADE,
    position integer NOT NULL CHECK (position >= 0),
    role text NOT NULL CHECK (role IN ('system', 'developer', 'user', 'assistant', 'tool')),
    content bytea NOT NULL,
    status text NOT NULL CHECK (status IN ('completed', 'failed', 'aborted')),
    -- JSON, always ASCII (non-ASCII escaped), so text holds it.
    tool_calls text,
    tool_call_id bytea,
    name bytea,
    internal boolean NOT NULL DEFAULT false,
    PRIMARY KEY (session_key, position)
);

-- The runs whose turns a session holds: a turn is stored once, however often it is recorded
-- (a write retried after its connection broke, when the first try had committed).
CREATE TABLE epiloop_session_turns (
    session_key text NOT NULL REFERENCES epiloop_sessions (key) ON DELETE CASCADE,
    run_id bytea NOT NULL,
    PRIMARY KEY (session_key, run_id)
);

-- One turn, in the one transaction of the statement that calls it (one round trip).
--
-- Fencing: with p_fence_holder set, the session's lane row is locked (FOR UPDATE) and the turn
-- is refused with SQLSTATE EPL01 (nothing written) unless the lane's holder and epoch are the
-- fence's; on success the lane is released in the same transaction (holder and
-- holder_instance NULL) and NOTIFY epiloop_lane '<key>' tells the instances waiting for it.
-- A run already stored (its run id in epiloop_session_turns) is not stored again, and its
-- fence is not checked (the first try released the lane): the session comes back as it is.
CREATE FUNCTION epiloop_record_turn(
    p_key text,
    p_agent_id text,
    p_agent_id_lower text,
    p_model bytea,
    p_status text,
    p_run_id bytea,
    p_prompt_tokens bigint,
    p_completion_tokens bigint,
    p_at double precision,
    p_keep integer,
    p_fence_holder text,
    p_fence_epoch bigint,
    p_roles text[],
    p_contents bytea[],
    p_statuses text[],
    p_tool_calls text[],
    p_tool_call_ids bytea[],
    p_names bytea[],
    p_internal boolean[]
) RETURNS SETOF epiloop_sessions
LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
    v_holder text;
    v_epoch bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM epiloop_session_turns t
               WHERE t.session_key = p_key AND t.run_id = p_run_id) THEN
        RETURN QUERY SELECT * FROM epiloop_sessions s WHERE s.key = p_key;
        RETURN;
    END IF;
    IF p_fence_holder IS NOT NULL THEN
        SELECT l.holder, l.epoch INTO v_holder, v_epoch
          FROM epiloop_lanes l WHERE l.session_key = p_key FOR UPDATE;
        IF NOT FOUND OR v_holder IS DISTINCT FROM p_fence_holder
           OR v_epoch IS DISTINCT FROM p_fence_epoch THEN
            RAISE EXCEPTION USING
                ERRCODE = 'EPL01',
                MESSAGE = format(
                    'lease lost: the lane of %s is held by %s at epoch %s, not by %s at epoch %s',
                    p_key, coalesce(v_holder, 'nobody'), coalesce(v_epoch::text, '-'),
                    p_fence_holder, p_fence_epoch);
        END IF;
    END IF;

    INSERT INTO epiloop_sessions AS s
        (key, agent_id, agent_id_lower, created_at, updated_at, model, last_status, last_run_id,
         prompt_tokens, completion_tokens)
    VALUES (p_key, p_agent_id, p_agent_id_lower, p_at, p_at, p_model, p_status, p_run_id,
            p_prompt_tokens, p_completion_tokens)
    ON CONFLICT (key) DO UPDATE SET
        updated_at = excluded.updated_at,
        model = excluded.model,
        last_status = excluded.last_status,
        last_run_id = excluded.last_run_id,
        prompt_tokens = s.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = s.completion_tokens + excluded.completion_tokens
    RETURNING s.message_count INTO v_count;

    INSERT INTO epiloop_session_turns (session_key, run_id) VALUES (p_key, p_run_id);

    IF p_keep IS NOT NULL THEN
        -- The bounds of Python's del transcript[keep:]: past the end keeps all, a negative
        -- keep counts from the end.
        v_count := CASE WHEN p_keep >= 0 THEN least(p_keep, v_count)
                        ELSE greatest(v_count + p_keep, 0) END;
        DELETE FROM epiloop_messages m WHERE m.session_key = p_key AND m.position >= v_count;
    END IF;

    INSERT INTO epiloop_messages
        (session_key, position, role, content, status, tool_calls, tool_call_id, name, internal)
    SELECT p_key, v_count + e.ord - 1, e.role, e.content, e.status, e.tool_calls,
           e.tool_call_id, e.name, e.internal
      FROM unnest(p_roles, p_contents, p_statuses, p_tool_calls, p_tool_call_ids, p_names,
                  p_internal)
           WITH ORDINALITY AS e(role, content, status, tool_calls, tool_call_id, name, internal,
                                ord);

    IF p_fence_holder IS NOT NULL THEN
        UPDATE epiloop_lanes l SET holder = NULL, holder_instance = NULL
         WHERE l.session_key = p_key;
        PERFORM pg_notify('epiloop_lane', p_key);
    END IF;

    UPDATE epiloop_sessions s SET message_count = v_count + cardinality(p_roles)
     WHERE s.key = p_key;
    RETURN QUERY SELECT * FROM epiloop_sessions s WHERE s.key = p_key;
END;
$$;
