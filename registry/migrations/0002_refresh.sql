-- The materialized-view refresh schedule and its bounded execution history.

-- One row per scheduled materialized view. A refresh is claimed in a short transaction (this row
-- FOR UPDATE SKIP LOCKED, then a session advisory lock on its id held for the whole refresh), so
-- the row lock lasts milliseconds while the advisory lock keeps refreshes of one view from
-- overlapping across instances, and dies with the session if matcol does.
CREATE TABLE matcol.matview_schedule (
    id                         int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schema_name                text NOT NULL,
    view_name                  text NOT NULL,
    -- config: declared under matviews: and synced by apply; cli: added with `matcol schedule add`
    -- and left alone by apply.
    source                     text NOT NULL DEFAULT 'cli' CHECK (source IN ('config', 'cli')),
    refresh_interval           interval NOT NULL CHECK (refresh_interval > interval '0'),
    -- The refresh's statement_timeout; NULL for none.
    maximum_execution_duration interval CHECK (maximum_execution_duration > interval '0'),
    -- Skip a refresh when the source tables' modification counters have not moved.
    skip_if_unchanged          boolean NOT NULL DEFAULT false,
    -- How many executions of this view the history keeps.
    keep_executions            int NOT NULL DEFAULT 100 CHECK (keep_executions > 0),
    next_due_at                timestamptz NOT NULL DEFAULT now(),
    last_attempted_at          timestamptz,
    last_success_at            timestamptz,
    last_error                 text,
    last_error_at              timestamptz,
    -- Drives the retry backoff; 0 after a success.
    consecutive_failures       int NOT NULL DEFAULT 0,
    -- The source counters seen at the start of the last successful refresh (skip_if_unchanged).
    source_counters            jsonb,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    UNIQUE (schema_name, view_name)
);

CREATE INDEX matview_schedule_due ON matcol.matview_schedule (next_due_at);

-- One row per refresh attempt. ended_at NULL means running, or abandoned by a matcol that died:
-- the next attempt on the view marks those terminated.
CREATE TABLE matcol.matview_execution (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schedule_id             int NOT NULL REFERENCES matcol.matview_schedule ON DELETE CASCADE,
    started_at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at                timestamptz,
    execution_is_successful boolean,
    -- concurrently, plain, or skipped (skip_if_unchanged found nothing to do).
    mode                    text,
    error_name              text,
    error_message           text,
    -- Set when the refresh was cut short: statement timeout, matcol stopping, or abandoned.
    terminated_at           timestamptz,
    -- The backend that ran the refresh, for pg_cancel_backend.
    pid                     int
);

CREATE INDEX matview_execution_schedule ON matcol.matview_execution (schedule_id, id);
