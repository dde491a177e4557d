-- Every table with a materialized_at column, with its primary key, in one pass over the catalog.
SELECT c.oid, n.nspname, c.relname, c.relkind::text,
       format_type(ma.atttypid, ma.atttypmod),
       ma.atttypid = 'timestamptz'::regtype AND NOT ma.attnotnull,
       coalesce(pk.names, '{}'), coalesce(pk.types, '{}'), coalesce(pk.oids, '{}'),
       EXISTS (SELECT 1 FROM pg_index pi
               WHERE pi.indrelid = c.oid AND pi.indpred IS NOT NULL
                 AND pg_get_expr(pi.indpred, pi.indrelid) ~* '^\(?materialized_at IS NULL\)?$'),
       c.relreplident::text
FROM pg_attribute ma
JOIN pg_class c ON c.oid = ma.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
    SELECT array_agg(a.attname::text ORDER BY k.ord) AS names,
           array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord) AS types,
           array_agg(a.atttypid ORDER BY k.ord) AS oids
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = c.oid AND i.indisprimary
) pk ON true
WHERE ma.attname = 'materialized_at' AND ma.attnum > 0 AND NOT ma.attisdropped
  AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'matcol')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
ORDER BY n.nspname, c.relname
