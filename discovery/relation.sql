-- The columns of one table (or materialized view, or foreign table), with each column's position
-- in the primary key and in the replica identity (0 when not part of it).
SELECT n.nspname, c.relname, c.relkind::text, c.relreplident::text, a.attname, format_type(a.atttypid, a.atttypmod),
       a.atttypid, a.attnotnull,
       coalesce((SELECT k.ord FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                 WHERE i.indrelid = c.oid AND i.indisprimary AND k.attnum = a.attnum), 0)::int,
       CASE c.relreplident
         WHEN 'f' THEN a.attnum
         WHEN 'n' THEN 0
         WHEN 'd' THEN coalesce((SELECT k.ord FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                 WHERE i.indrelid = c.oid AND i.indisprimary AND k.attnum = a.attnum), 0)
         ELSE coalesce((SELECT k.ord FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                 WHERE i.indrelid = c.oid AND i.indisreplident AND k.attnum = a.attnum), 0)
       END::int
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.oid = $1
ORDER BY a.attnum
