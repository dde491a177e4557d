-- Materialized views that exist but are not scheduled, in one catalog query.
SELECT n.nspname, c.relname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'm'
  AND NOT EXISTS (SELECT 1 FROM matcol.matview_schedule s
                  WHERE s.schema_name = n.nspname AND s.view_name = c.relname)
ORDER BY 1, 2
