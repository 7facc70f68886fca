-- Token issue in one statement for a batch of concurrent requests (store.issue_tokens).
--
-- Position i of the arrays is one request: its credential's hash (an API key, or a browser
-- session when p_via_session[i]), the new token's hash and its project (or NULL).  The
-- function authenticates every credential, locks the users found (in id order, so two
-- batches sharing users wait for each other instead of deadlocking), then counts each
-- user's tokens of the last 60 s and inserts the requests that fit under p_per_minute, in
-- position order.  Each statement of a plpgsql function takes a fresh snapshot (READ
-- COMMITTED), so once the user rows are locked the count sees every token a concurrent
-- batch (on any replica) committed for them: the cap is exact.
--
-- One row per position, in order: o_user NULL = unauthenticated; o_issued false with a
-- user = over the cap; o_issued true = stored, expiring at o_expires.
--
-- NO KEY UPDATE, not UPDATE: the foreign-key checks of other inserts (log-ins, API keys)
-- take KEY SHARE on the user row and must not wait for an issue.  The count stops at
-- p_per_minute rows, so its cost per user is bounded by the cap, not by the traffic.
CREATE FUNCTION issue_tokens(
    p_credentials bytea[], p_via_session boolean[], p_tokens bytea[], p_projects uuid[],
    p_ttl_s integer, p_per_minute integer
)
RETURNS TABLE (o_pos integer, o_user uuid, o_name text, o_issued boolean, o_expires timestamptz)
LANGUAGE plpgsql
AS $$
DECLARE
    v_users uuid[];
BEGIN
    SELECT array_agg(coalesce(k.user_id, s.user_id) ORDER BY r.pos) INTO v_users
    FROM unnest(p_credentials, p_via_session) WITH ORDINALITY AS r(hash, via_session, pos)
    LEFT JOIN api_keys k ON NOT r.via_session AND k.key_hash = r.hash AND k.revoked_at IS NULL
    LEFT JOIN web_sessions s ON r.via_session AND s.session_hash = r.hash AND s.expires_at > now();

    PERFORM 1 FROM users u WHERE u.id = ANY (v_users) ORDER BY u.id FOR NO KEY UPDATE;

    RETURN QUERY
    WITH input AS (
        SELECT r.uid, r.token, r.project, r.pos::integer AS pos
        FROM unnest(v_users, p_tokens, p_projects) WITH ORDINALITY AS r(uid, token, project, pos)
    ), known AS (
        SELECT input.uid, input.token, input.project, input.pos, u.name,
               row_number() OVER (PARTITION BY input.uid ORDER BY input.pos) AS nth
        FROM input JOIN users u ON u.id = input.uid
    ), recent AS (
        SELECT d.uid,
               (SELECT count(*) FROM (
                    SELECT 1 FROM connection_tokens c
                    WHERE c.user_id = d.uid AND c.issued_at > now() - interval '60 seconds'
                    LIMIT p_per_minute) AS capped) AS n
        FROM (SELECT DISTINCT known.uid FROM known) AS d
    ), allowed AS (
        SELECT known.uid, known.token, known.project
        FROM known JOIN recent ON recent.uid = known.uid
        WHERE recent.n + known.nth <= p_per_minute
    ), inserted AS (
        INSERT INTO connection_tokens (token_hash, user_id, project_id, expires_at)
        SELECT allowed.token, allowed.uid, allowed.project, now() + make_interval(secs => p_ttl_s)
        FROM allowed
        RETURNING connection_tokens.token_hash, connection_tokens.expires_at
    )
    SELECT input.pos, known.uid, known.name, inserted.token_hash IS NOT NULL, inserted.expires_at
    FROM input
    LEFT JOIN known ON known.pos = input.pos
    LEFT JOIN inserted ON inserted.token_hash = input.token
    ORDER BY input.pos;
END
$$;
