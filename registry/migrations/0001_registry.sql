-- The registry: targets, enrichments, their dependencies, and the invalidation queue.

CREATE TABLE matcol.target (
    id          int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    UNIQUE (schema_name, table_name)
);

CREATE TABLE matcol.enrichment (
    name          text PRIMARY KEY,
    target_id     int NOT NULL REFERENCES matcol.target,
    columns       text[] NOT NULL,
    sql           text NOT NULL,
    expires_after interval,
    self          boolean NOT NULL DEFAULT true,
    settings      jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE matcol.dependency (
    id            int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    enrichment    text NOT NULL REFERENCES matcol.enrichment ON DELETE CASCADE ON UPDATE CASCADE,
    source_schema text NOT NULL,
    source_table  text NOT NULL,
    columns       text[] NOT NULL,
    sql           text,
    UNIQUE (enrichment, source_schema, source_table, columns)
);

-- Invalidations waiting to be applied to their target. Writers only ever INSERT here, so they
-- never contend with each other or with matcol on the target rows.
--   dependency_id NULL: vals are target key values; otherwise vals feed that dependency's sql.
--   vals NULL: every row of the target (after a TRUNCATE of a source).
-- No foreign keys: their checks would run inside every application transaction.
CREATE TABLE matcol.pending (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_id     int NOT NULL,
    dependency_id int,
    vals          jsonb,
    enqueued_at   timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000);

-- Whole-target invalidations are rare and found by this index, not by a scan of the queue.
CREATE INDEX pending_all_rows ON matcol.pending (target_id) WHERE vals IS NULL;

-- Whether a daemon is idle and waiting for NOTIFY. Triggers only notify while it is: NOTIFY takes a
-- database-wide lock at commit that would serialize every writer's commit. With no daemon running
-- nobody listens, so the flag is false. Unlogged: a server crash empties it, which reads as false
-- until a daemon writes it again.
CREATE UNLOGGED TABLE matcol.wake (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    sleeping boolean NOT NULL
);
INSERT INTO matcol.wake (sleeping) VALUES (false);

-- Daemon-wide switches such as pause.
CREATE TABLE matcol.setting (
    name       text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Raises from inside a statement, for checks such as duplicate keys in an enrichment's output.
CREATE FUNCTION matcol.raise(msg text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = msg, ERRCODE = 'data_exception';
END
$$;
