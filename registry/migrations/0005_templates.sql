-- Template enrichments: one enrichment for the table of one name in every schema matching a glob.
-- The template's own target row holds the pattern (schema_name 'tenant_*'); each matching table
-- gets a target row of its own when the daemon or apply finds it, so queue entries, failures and
-- stale_since stay per table.
ALTER TABLE matcol.enrichment ADD COLUMN template boolean NOT NULL DEFAULT false;

-- The LIKE pattern of a schema glob: '*' matches any run of characters, anything else itself.
CREATE FUNCTION matcol.glob_like(pattern text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT replace(replace(replace(replace(pattern, '\', '\\'), '%', '\%'), '_', '\_'), '*', '%')
$$;
