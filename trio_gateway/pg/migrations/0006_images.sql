-- Version 6: images, stored once by their SHA-256 outside the transcript rows.
--
-- A message references its images in epiloop_messages.images: JSON, always ASCII, the image
-- references in order ({"sha256", "type", "detail"} for stored bytes, {"url", "detail"} for a
-- remote image). epiloop_session_images says which stored images each session's transcript
-- holds; an image no session holds any more is removed by the transaction that let go of it
-- (a delete, a reset, a turn that truncated past it): epiloop_collect_images.
ALTER TABLE epiloop_messages ADD COLUMN images text;

CREATE TABLE epiloop_images (
    sha256 text PRIMARY KEY,
    media_type text NOT NULL,
    size integer NOT NULL CHECK (size >= 0),
    data bytea NOT NULL
);

CREATE TABLE epiloop_session_images (
    session_key text NOT NULL REFERENCES epiloop_sessions (key) ON DELETE CASCADE,
    sha256 text NOT NULL REFERENCES epiloop_images (sha256),
    PRIMARY KEY (session_key, sha256)
);
CREATE INDEX epiloop_session_images_image ON epiloop_session_images (sha256);

-- Remove those of p_hashes that no session holds. The rows are locked first (in hash order),
-- so a turn that is adding one of them (its INSERT ... DO UPDATE holds the row) commits first
-- and its reference is then seen.
CREATE FUNCTION epiloop_collect_images(p_hashes text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_hashes IS NULL OR cardinality(p_hashes) = 0 THEN
        RETURN;
    END IF;
    PERFORM 1 FROM epiloop_images i WHERE i.sha256 = ANY (p_hashes)
     ORDER BY i.sha256 FOR UPDATE;
    DELETE FROM epiloop_images i
     WHERE i.sha256 = ANY (p_hashes)
       AND NOT EXISTS (SELECT 1 FROM epiloop_session_images si WHERE si.sha256 = i.sha256);
END;
$$;

-- Make epiloop_session_images say what the session's transcript holds now; collect the images
-- it let go of.
CREATE FUNCTION epiloop_sync_session_images(p_key text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_gone text[];
BEGIN
    INSERT INTO epiloop_session_images (session_key, sha256)
    SELECT DISTINCT p_key, e.ref ->> 'sha256'
      FROM epiloop_messages m, jsonb_array_elements(m.images::jsonb) AS e(ref)
     WHERE m.session_key = p_key AND m.images IS NOT NULL AND e.ref ? 'sha256'
    ON CONFLICT DO NOTHING;
    WITH gone AS (
        DELETE FROM epiloop_session_images si
         WHERE si.session_key = p_key
           AND NOT EXISTS (
               SELECT 1 FROM epiloop_messages m, jsonb_array_elements(m.images::jsonb) AS e(ref)
                WHERE m.session_key = p_key AND m.images IS NOT NULL
                  AND e.ref ->> 'sha256' = si.sha256)
        RETURNING si.sha256
    )
    SELECT array_agg(g.sha256 ORDER BY g.sha256) INTO v_gone FROM gone g;
    PERFORM epiloop_collect_images(v_gone);
END;
$$;

-- Delete a session and collect the images only it held, in one transaction.
CREATE FUNCTION epiloop_delete_session(p_key text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_held text[];
    v_found boolean;
BEGIN
    SELECT array_agg(si.sha256 ORDER BY si.sha256) INTO v_held
      FROM epiloop_session_images si WHERE si.session_key = p_key;
    DELETE FROM epiloop_sessions s WHERE s.key = p_key;
    v_found := FOUND;
    PERFORM epiloop_collect_images(v_held);
    RETURN v_found;
END;
$$;

-- epiloop_record_turn as in version 4, plus each entry's image references (p_images) and the
-- turn's images (hash, type, bytes; each once).
DROP FUNCTION epiloop_record_turn(
    text, text, text, bytea, text, bytea, bigint, bigint, double precision, integer, text, bigint,
    text[], bytea[], text[], text[], bytea[], bytea[], boolean[]
);

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
    p_internal boolean[],
    p_images text[],
    p_image_hashes text[],
    p_image_types text[],
    p_image_data bytea[]
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
        (session_key, position, role, content, status, tool_calls, tool_call_id, name, internal,
         images)
    SELECT p_key, v_count + e.ord - 1, e.role, e.content, e.status, e.tool_calls,
           e.tool_call_id, e.name, e.internal, e.images
      FROM unnest(p_roles, p_contents, p_statuses, p_tool_calls, p_tool_call_ids, p_names,
                  p_internal, p_images)
           WITH ORDINALITY AS e(role, content, status, tool_calls, tool_call_id, name, internal,
                                images, ord);

    -- The turn's images, once each; DO UPDATE (not NOTHING) locks an existing row, so that a
    -- concurrent epiloop_collect_images cannot remove it before this transaction commits.
    INSERT INTO epiloop_images AS i (sha256, media_type, size, data)
    SELECT x.sha256, x.media_type, length(x.data), x.data
      FROM unnest(p_image_hashes, p_image_types, p_image_data) AS x(sha256, media_type, data)
    ON CONFLICT (sha256) DO UPDATE SET media_type = excluded.media_type;
    IF cardinality(p_image_hashes) > 0 OR p_keep IS NOT NULL THEN
        PERFORM epiloop_sync_session_images(p_key);
    END IF;

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
