-- A re-used event_id is either a retry (the same kind and data: a duplicate, answered with the
-- stored seq) or a client bug (another kind or data under the same id: a conflict, reported per
-- event and stored nothing).  The comparison is part of the lookup the duplicate already makes,
-- so telling them apart costs no round trip and nothing on the path of a new event.  data is kept
-- as the service wrote it (json text), so it is compared as jsonb: a retry whose keys come in
-- another order, or whose numbers are spelled differently (1 and 1.0), is still the same event.
-- conflicts[i] is true when event i's id is stored with another kind or data; its seqs[i] is the
-- stored event's seq.  The rest is as in 0003 (one statement: lock, idempotent insert, last_seq,
-- NOTIFY; the duplicate lookup is a one-shot EXECUTE planned with its values).
DROP FUNCTION append_events(uuid, text[], text[], text[]);

CREATE FUNCTION append_events(
    p_project uuid, p_ids text[], p_kinds text[], p_data text[],
    OUT seqs bigint[], OUT fresh boolean[], OUT conflicts boolean[], OUT ts timestamptz
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_last bigint;
    v_first bigint;
    v_known bigint;
    v_same boolean;
    v_count integer := coalesce(array_length(p_ids, 1), 0);
BEGIN
    SELECT p.last_seq INTO v_last FROM projects p WHERE p.id = p_project FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_first := v_last;
    seqs := array_fill(0::bigint, ARRAY[v_count]);
    fresh := array_fill(false, ARRAY[v_count]);
    conflicts := array_fill(false, ARRAY[v_count]);
    FOR i IN 1 .. v_count LOOP
        INSERT INTO events (project_id, seq, event_id, kind, data)
        VALUES (p_project, v_last + 1, p_ids[i], p_kinds[i], p_data[i]::json)
        ON CONFLICT (project_id, event_id) DO NOTHING;
        IF FOUND THEN
            v_last := v_last + 1;
            seqs[i] := v_last;
            fresh[i] := true;
        ELSE
            EXECUTE 'SELECT seq, kind = $3 AND data::jsonb = $4::jsonb FROM events
                     WHERE project_id = $1 AND event_id = $2'
                INTO v_known, v_same USING p_project, p_ids[i], p_kinds[i], p_data[i];
            seqs[i] := v_known;
            conflicts[i] := NOT v_same;
        END IF;
    END LOOP;
    IF v_last > v_first THEN
        UPDATE projects SET last_seq = v_last WHERE id = p_project;
        PERFORM pg_notify('tether_events', p_project::text || ':' || v_last);
    END IF;
    ts := now();
END
$$;
