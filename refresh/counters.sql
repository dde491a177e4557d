-- The modification counters of the relations a matview reads, through views and partitions, for
-- skip_if_unchanged. n_live_tup catches TRUNCATE, which the tuple counters do not; a scheduled
-- matview source contributes its last success, since a plain refresh moves no counter; a foreign
-- table has no counters, so it always reads as changed. $1 is the matview's oid.
WITH RECURSIVE src (relid) AS (
    SELECT d.refobjid
    FROM pg_rewrite r
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                    AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class
    WHERE r.ev_class = $1::oid
    UNION
    SELECT x.relid
    FROM src
    JOIN pg_class c ON c.oid = src.relid
    CROSS JOIN LATERAL (
        SELECT d.refobjid AS relid
        FROM pg_rewrite r
        JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                        AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class
        WHERE c.relkind = 'v' AND r.ev_class = c.oid
        UNION ALL
        SELECT i.inhrelid FROM pg_inherits i WHERE c.relkind = 'p' AND i.inhparent = c.oid
    ) x
)
SELECT coalesce(jsonb_object_agg(c.oid::text, jsonb_build_array(
           st.n_tup_ins, st.n_tup_upd, st.n_tup_del, st.n_live_tup, sc.last_success_at,
           CASE WHEN c.relkind = 'f' THEN clock_timestamp() END)), '{}')
FROM src
JOIN pg_class c ON c.oid = src.relid AND c.relkind IN ('r', 'm', 'p', 'f')
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_all_tables st ON st.relid = c.oid
LEFT JOIN matcol.matview_schedule sc ON sc.schema_name = n.nspname AND sc.view_name = c.relname
