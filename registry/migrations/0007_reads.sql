-- Tri-state self and static dependencies.
--
-- self NULL (the new default) means: a change to a target column that the enrichment reads makes
-- the row stale. true keeps the old behaviour (any column but matcol's own), false means only
-- inserts. Rows registered before keep the value they had.
ALTER TABLE matcol.enrichment ALTER COLUMN self DROP NOT NULL, ALTER COLUMN self DROP DEFAULT;

-- A static dependency names a table that never changes (or whose changes matcol must ignore): it
-- satisfies apply's check that every table an enrichment reads is covered, and gets no trigger
-- and no publication entry. It lists no columns.
ALTER TABLE matcol.dependency ADD COLUMN static boolean NOT NULL DEFAULT false;

-- resolve_table for a depends_on entry: a static one may also name a materialized view or a
-- foreign table, which never fire triggers.
CREATE FUNCTION matcol.resolve_source(rel regclass, static boolean, OUT schema_name text, OUT table_name text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    SELECT n.nspname, c.relname INTO schema_name, table_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = rel AND (c.relkind IN ('r', 'p') OR (static AND c.relkind IN ('m', 'f')));
    IF NOT FOUND THEN
        RAISE EXCEPTION 'matcol: depends_on table % is not a table', rel USING ERRCODE = 'wrong_object_type',
            HINT = CASE WHEN NOT static THEN 'a materialized view or foreign table never fires triggers: say "static": true' END;
    END IF;
END
$$;

-- register_enrichment adds or updates one enrichment, as one entry of `enrichments:` in the YAML:
--   name, table => target, columns, sql, depends_on (a JSON array of {"table", "columns", "sql"},
--   or {"table", "static": true} for a table that never changes), expires_after, self (NULL, the
--   default, for "a change to a column the enrichment reads"), and settings ({"batch_size",
--   "statement_timeout", "lock_timeout", "work_mem"}). It returns 'added', 'updated' or
--   'unchanged'.
CREATE OR REPLACE FUNCTION matcol.register_enrichment(
    name          text,
    target        regclass,
    columns       text[],
    sql           text,
    depends_on    jsonb    DEFAULT '[]',
    expires_after interval DEFAULT NULL,
    self          boolean  DEFAULT NULL,
    settings      jsonb    DEFAULT '{}'
) RETURNS text
-- No SET search_path: depends_on names resolve in the caller's search_path, as target does.
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    -- Parameters are always referred to as register_enrichment.x: they share names with columns.
    tgt        record;
    tid        int;
    n          bigint;
    old_deps   jsonb;
    new_deps   jsonb;
    changed    boolean;
    existed    boolean;
    keep_ids   int[] := '{}';
    dep        jsonb;
    src        record;
    dep_cols   text[];
    dep_id     int;
    dep_static boolean;
    norm       jsonb := '{}';
    k          text;
    v          jsonb;
    expires    interval;
BEGIN
    PERFORM pg_advisory_xact_lock(7881708793295011841); -- the lock of install and apply

    IF coalesce(register_enrichment.name, '') = '' THEN
        RAISE EXCEPTION 'matcol: name is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF octet_length(register_enrichment.name) > 63 THEN
        RAISE EXCEPTION 'matcol: enrichment %: name is longer than 63 bytes', register_enrichment.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF register_enrichment.target IS NULL THEN
        RAISE EXCEPTION 'matcol: enrichment %: target is required', register_enrichment.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(cardinality(register_enrichment.columns), 0) = 0 THEN
        RAISE EXCEPTION 'matcol: enrichment %: columns lists no column', register_enrichment.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(register_enrichment.columns) c WHERE coalesce(c, '') = '') THEN
        RAISE EXCEPTION 'matcol: enrichment %: columns has an empty name', register_enrichment.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF 'materialized_at' = ANY (register_enrichment.columns) THEN
        RAISE EXCEPTION 'matcol: enrichment %: materialized_at is matcol''s own stamp, not an enrichment column',
            register_enrichment.name USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT count(DISTINCT c) FROM unnest(register_enrichment.columns) c) <> cardinality(register_enrichment.columns) THEN
        RAISE EXCEPTION 'matcol: enrichment %: columns lists a column twice', register_enrichment.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF btrim(coalesce(register_enrichment.sql, '')) = '' THEN
        RAISE EXCEPTION 'matcol: enrichment %: sql is required', register_enrichment.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(coalesce(register_enrichment.depends_on, '[]')) <> 'array' THEN
        RAISE EXCEPTION 'matcol: enrichment %: depends_on must be a JSON array', register_enrichment.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- As apply stores it: a pure time span, and NULL for never.
    IF register_enrichment.expires_after < interval '0' THEN
        RAISE EXCEPTION 'matcol: enrichment %: expires_after must not be negative', register_enrichment.name
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF register_enrichment.expires_after > interval '0' THEN
        expires := make_interval(secs => extract(epoch FROM register_enrichment.expires_after));
    END IF;

    -- As Go marshals registry.Settings: zero values omitted, durations in nanoseconds.
    IF jsonb_typeof(coalesce(register_enrichment.settings, '{}')) <> 'object' THEN
        RAISE EXCEPTION 'matcol: enrichment %: settings must be a JSON object', register_enrichment.name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR k, v IN SELECT * FROM jsonb_each(coalesce(register_enrichment.settings, '{}')) LOOP
        CASE k
        WHEN 'batch_size' THEN
            IF jsonb_typeof(v) <> 'number' OR v::text::numeric < 0 THEN
                RAISE EXCEPTION 'matcol: enrichment %: settings.batch_size must be a non-negative number',
                    register_enrichment.name USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF v::text::numeric > 0 THEN
                norm := norm || jsonb_build_object(k, v::text::int);
            END IF;
        WHEN 'statement_timeout', 'lock_timeout' THEN
            IF matcol.duration_ns(v, k) > 0 THEN
                norm := norm || jsonb_build_object(k, matcol.duration_ns(v, k));
            END IF;
        WHEN 'work_mem' THEN
            IF coalesce(v #>> '{}', '') <> '' THEN
                norm := norm || jsonb_build_object(k, v #>> '{}');
            END IF;
        ELSE
            RAISE EXCEPTION 'matcol: enrichment %: unknown setting %', register_enrichment.name, k
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'settings are batch_size, statement_timeout, lock_timeout and work_mem';
        END CASE;
    END LOOP;

    SELECT * INTO tgt FROM matcol.resolve_table(register_enrichment.target, 'target');
    WITH ins AS (
        INSERT INTO matcol.target (schema_name, table_name) VALUES (tgt.schema_name, tgt.table_name)
        ON CONFLICT (schema_name, table_name) DO NOTHING RETURNING id)
    SELECT x.id INTO tid FROM (
        SELECT ins.id FROM ins UNION ALL
        SELECT m.id FROM matcol.target m WHERE m.schema_name = tgt.schema_name AND m.table_name = tgt.table_name) x;

    SELECT coalesce(jsonb_agg(jsonb_build_array(d.source_schema, d.source_table, d.columns, d.sql, d.static) ORDER BY d.id), '[]')
    INTO old_deps FROM matcol.dependency d WHERE d.enrichment = register_enrichment.name;
    existed := EXISTS (SELECT 1 FROM matcol.enrichment e WHERE e.name = register_enrichment.name);

    INSERT INTO matcol.enrichment AS e (name, target_id, columns, sql, expires_after, self, settings)
    VALUES (register_enrichment.name, tid, register_enrichment.columns, register_enrichment.sql,
            expires, register_enrichment.self, norm)
    ON CONFLICT ON CONSTRAINT enrichment_pkey DO UPDATE SET target_id = excluded.target_id,
        columns = excluded.columns, sql = excluded.sql, expires_after = excluded.expires_after,
        self = excluded.self, settings = excluded.settings, updated_at = now()
    WHERE (e.target_id, e.columns, e.sql, e.expires_after, e.self, e.settings)
          IS DISTINCT FROM (excluded.target_id, excluded.columns, excluded.sql,
                            excluded.expires_after, excluded.self, excluded.settings);
    GET DIAGNOSTICS n = ROW_COUNT;
    changed := n > 0;

    FOR dep IN SELECT x FROM jsonb_array_elements(coalesce(register_enrichment.depends_on, '[]')) x LOOP
        IF jsonb_typeof(dep) <> 'object' OR coalesce(dep->>'table', '') = '' THEN
            RAISE EXCEPTION 'matcol: enrichment %: each depends_on entry needs a table', register_enrichment.name
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(dep->'static') NOT IN ('boolean', 'null') THEN
            RAISE EXCEPTION 'matcol: enrichment %: depends_on %: static must be true or false',
                register_enrichment.name, dep->>'table' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        dep_static := coalesce((dep->>'static')::boolean, false);
        IF dep_static THEN
            IF coalesce(jsonb_array_length(CASE jsonb_typeof(dep->'columns') WHEN 'array' THEN dep->'columns' END), 0) > 0
               OR coalesce(dep->>'sql', '') <> '' THEN
                RAISE EXCEPTION 'matcol: enrichment %: depends_on %: a static table takes no columns and no sql',
                    register_enrichment.name, dep->>'table' USING ERRCODE = 'invalid_parameter_value';
            END IF;
        ELSIF jsonb_typeof(dep->'columns') IS DISTINCT FROM 'array' OR jsonb_array_length(dep->'columns') = 0 THEN
            RAISE EXCEPTION 'matcol: enrichment %: depends_on %: columns lists no column',
                register_enrichment.name, dep->>'table' USING ERRCODE = 'invalid_parameter_value',
                HINT = 'list the columns whose values carry target keys, or say "static": true for a table that never changes';
        END IF;
        dep_cols := ARRAY(SELECT jsonb_array_elements_text(coalesce(dep->'columns', '[]')));
        IF '' = ANY (dep_cols) THEN
            RAISE EXCEPTION 'matcol: enrichment %: depends_on %: columns has an empty name',
                register_enrichment.name, dep->>'table' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF to_regclass(dep->>'table') IS NULL THEN
            RAISE EXCEPTION 'matcol: enrichment %: depends_on table % does not exist',
                register_enrichment.name, dep->>'table' USING ERRCODE = 'undefined_table';
        END IF;
        SELECT * INTO src FROM matcol.resolve_source(to_regclass(dep->>'table'), dep_static);
        INSERT INTO matcol.dependency AS d (enrichment, source_schema, source_table, columns, sql, static)
        VALUES (register_enrichment.name, src.schema_name, src.table_name, dep_cols, nullif(dep->>'sql', ''), dep_static)
        ON CONFLICT (enrichment, source_schema, source_table, columns) DO UPDATE SET sql = excluded.sql, static = excluded.static
        RETURNING d.id INTO dep_id;
        keep_ids := keep_ids || dep_id;
    END LOOP;

    -- Queued invalidations of a removed dependency become whole-target invalidations, as in Sync.
    WITH gone AS (
        DELETE FROM matcol.dependency d
        WHERE d.enrichment = register_enrichment.name AND NOT (d.id = ANY (keep_ids)) RETURNING d.id)
    UPDATE matcol.pending p SET dependency_id = NULL, vals = NULL FROM gone WHERE p.dependency_id = gone.id;

    SELECT coalesce(jsonb_agg(jsonb_build_array(d.source_schema, d.source_table, d.columns, d.sql, d.static) ORDER BY d.id), '[]')
    INTO new_deps FROM matcol.dependency d WHERE d.enrichment = register_enrichment.name;

    PERFORM matcol.remove_unused_targets();
    IF NOT existed THEN
        RETURN 'added';
    ELSIF changed OR old_deps IS DISTINCT FROM new_deps THEN
        RETURN 'updated';
    END IF;
    RETURN 'unchanged';
END
$$;

