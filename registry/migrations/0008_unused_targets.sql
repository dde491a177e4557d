-- A template's instances have target rows of their own but no enrichment row: the template's
-- enrichment points at its pattern target. remove_unused_targets() deleted them, and their
-- queued invalidations, on every SQL registration. It now keeps them as registry.Sync does
-- (which calls it): while their table exists and a template still matches it. A target that
-- goes takes its queued invalidations with it; its failures and min_interval holds are left to
-- the daemon's sweep, since the callers' documented grants do not cover those tables.
CREATE OR REPLACE FUNCTION matcol.remove_unused_targets() RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH keep AS (
        SELECT t.id FROM matcol.target t
        JOIN pg_namespace n ON n.nspname = t.schema_name
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name
        JOIN (SELECT p.schema_name, p.table_name FROM matcol.enrichment e JOIN matcol.target p ON p.id = e.target_id
              WHERE e.template) tp ON tp.table_name = t.table_name AND t.schema_name LIKE matcol.glob_like(tp.schema_name)),
    gone AS (
        DELETE FROM matcol.target t
        WHERE NOT EXISTS (SELECT 1 FROM matcol.enrichment e WHERE e.target_id = t.id)
          AND t.id NOT IN (SELECT id FROM keep)
        RETURNING id)
    DELETE FROM matcol.pending p USING gone WHERE p.target_id = gone.id;
$$;
