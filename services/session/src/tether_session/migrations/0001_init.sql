-- Projects and the durable per-project event log.
CREATE TABLE projects (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id    uuid NOT NULL,
    slug        text NOT NULL,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_seq    bigint NOT NULL DEFAULT 0,
    UNIQUE (owner_id, slug)
);
CREATE INDEX projects_owner_created ON projects (owner_id, created_at DESC);

CREATE TABLE project_idempotency (
    owner_id    uuid NOT NULL,
    key         text NOT NULL,
    name        text NOT NULL,
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, key)
);

-- seq is assigned under the project row's lock in the same transaction that stores
-- the event: per project it runs 1, 2, 3, ... with no gap.
CREATE TABLE events (
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    event_id    text NOT NULL,
    kind        text NOT NULL,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, seq),
    UNIQUE (project_id, event_id)
);
