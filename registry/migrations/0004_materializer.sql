-- Failure quarantine, backfill checkpoints, and what status needs to survive a restart.

-- A row whose enrichment fails: it stays stale, and is retried with backoff.
CREATE TABLE matcol.failure (
    target_id       int NOT NULL,
    key             text[] NOT NULL,   -- key values in their text form, in key order
    enrichment      text,
    error           text NOT NULL,
    attempts        int NOT NULL DEFAULT 1,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL,
    PRIMARY KEY (target_id, key)
);

-- One row per backfill; the cursor is committed with each batch, so a killed backfill resumes.
CREATE TABLE matcol.backfill (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_id    int NOT NULL,
    enrichments  text[] NOT NULL,
    where_sql    text NOT NULL DEFAULT '',
    batch_size   int NOT NULL DEFAULT 0,
    rate         int NOT NULL DEFAULT 0,
    cursor       text[],
    rows_done    bigint NOT NULL DEFAULT 0,
    rows_total   bigint,
    status       text NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    error        text,
    owner        text,
    lease_until  timestamptz,
    requested_at timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE UNIQUE INDEX backfill_active ON matcol.backfill (target_id, enrichments) WHERE status IN ('queued', 'running');

-- stale_since: the oldest invalidation applied to the target that no batch has caught up with yet.
-- drain_seq lets a worker clear it only if no drain committed since it last looked.
ALTER TABLE matcol.target
    ADD COLUMN stale_since timestamptz,
    ADD COLUMN drain_seq bigint NOT NULL DEFAULT 0;
