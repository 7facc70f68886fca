-- Event data is kept as the exact JSON text the service wrote (json, not jsonb).  A replica
-- pushes the events it has just committed to its own subscribers without reading them back
-- (fanout.Hub.appended); another replica reads them from the log as data::text, and both must
-- send the same bytes.  jsonb re-serialises (key order, spacing, escapes); json returns the
-- stored text as is, and costs less to write (no parse tree) and to read (no re-serialising).
-- Nothing queries inside data on a hot path (->> works on json too).
ALTER TABLE events ALTER COLUMN data TYPE json USING data::json;

-- One append in one statement, so one round trip (store.append_events): lock the project row,
-- store each event not stored yet (idempotent by event_id, also within the batch: the first copy
-- wins) with the next seq, advance last_seq and NOTIFY.  seqs[i] is event i's seq (stored now or
-- before), fresh[i] whether this call stored it, ts the created_at of the rows stored now.  No
-- such project: seqs IS NULL.  Each statement runs with a fresh snapshot (READ COMMITTED), so
-- once the row lock is held every committed append of the project is visible.
-- Plans: the statements here are planned once per connection and cached (generic plans): the
-- insert has no plan to choose (its conflict check is the unique index), the project row is
-- found by its key.  Custom plans for everything (plan_cache_mode = force_custom_plan, as the
-- append used before) doubled Postgres' CPU per append.  The one lookup whose plan could go
-- stale (a generic plan cached while the log was small seq-scans it: found by the 100k catch-up
-- test) runs only for a duplicate, as a one-shot EXECUTE planned with its values.
CREATE FUNCTION append_events(
    p_project uuid, p_ids text[], p_kinds text[], p_data text[],
    OUT seqs bigint[], OUT fresh boolean[], OUT ts timestamptz
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_last bigint;
    v_first bigint;
    v_known bigint;
    v_count integer := coalesce(array_length(p_ids, 1), 0);
BEGIN
    SELECT p.last_seq INTO v_last FROM projects p WHERE p.id = p_project FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_first := v_last;
    seqs := array_fill(0::bigint, ARRAY[v_count]);
    fresh := array_fill(false, ARRAY[v_count]);
    FOR i IN 1 .. v_count LOOP
        INSERT INTO events (project_id, seq, event_id, kind, data)
        VALUES (p_project, v_last + 1, p_ids[i], p_kinds[i], p_data[i]::json)
        ON CONFLICT (project_id, event_id) DO NOTHING;
        IF FOUND THEN
            v_last := v_last + 1;
            seqs[i] := v_last;
            fresh[i] := true;
        ELSE
            EXECUTE 'SELECT seq FROM events WHERE project_id = $1 AND event_id = $2'
                INTO v_known USING p_project, p_ids[i];
            seqs[i] := v_known;
        END IF;
    END LOOP;
    IF v_last > v_first THEN
        UPDATE projects SET last_seq = v_last WHERE id = p_project;
        PERFORM pg_notify('tether_events', p_project::text || ':' || v_last);
    END IF;
    ts := now();
END
$$;
