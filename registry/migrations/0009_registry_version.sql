-- The registry's version. Every change to an enrichment or a dependency bumps it in the changing
-- transaction, which also takes the plan lock exclusively and wakes the daemons. Every batch,
-- drain and backfill step takes the plan lock shared, without waiting, and compares the version
-- with its plan's: once a registry change commits, no instance stamps a row, or drops a queued
-- invalidation, with an older plan (DESIGN invariant 8).
CREATE TABLE matcol.registry_version (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint NOT NULL
);
INSERT INTO matcol.registry_version (version) VALUES (1);

-- SECURITY DEFINER so that SQL-first registration needs no grant on this table; it runs no code
-- but its own.
CREATE FUNCTION matcol.bump_registry_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7881708793295011842); -- the plan lock (materializer.lockPlan)
    UPDATE matcol.registry_version SET version = version + 1;
    PERFORM pg_notify('matcol', 'plan');
    RETURN NULL;
END
$$;

CREATE TRIGGER bump_version AFTER INSERT OR DELETE ON matcol.enrichment
    FOR EACH ROW EXECUTE FUNCTION matcol.bump_registry_version();
CREATE TRIGGER bump_version_upd AFTER UPDATE ON matcol.enrichment
    FOR EACH ROW WHEN (OLD IS DISTINCT FROM NEW) EXECUTE FUNCTION matcol.bump_registry_version();
CREATE TRIGGER bump_version AFTER INSERT OR DELETE ON matcol.dependency
    FOR EACH ROW EXECUTE FUNCTION matcol.bump_registry_version();
CREATE TRIGGER bump_version_upd AFTER UPDATE ON matcol.dependency
    FOR EACH ROW WHEN (OLD IS DISTINCT FROM NEW) EXECUTE FUNCTION matcol.bump_registry_version();
