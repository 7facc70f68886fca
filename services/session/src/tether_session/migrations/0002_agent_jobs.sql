-- Agent work is durable: a job row is created with the prompt, advanced in the same
-- transaction as each chunk the agent publishes, and deleted with agent_done.  A job whose
-- heartbeat is stale (its replica died or drained) is claimed by another replica, which
-- continues from next_index; chunk event ids are deterministic, so nothing is doubled.
CREATE TABLE agent_jobs (
    project_id    uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    prompt_seq    bigint NOT NULL,
    text          text NOT NULL,
    next_index    integer NOT NULL DEFAULT 0,
    owner         text NOT NULL,
    attempts      integer NOT NULL DEFAULT 1,
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, prompt_seq)
);
CREATE INDEX agent_jobs_heartbeat ON agent_jobs (heartbeat_at);
