-- Claims the next due view whose scheduled ancestors (the matviews it reads, through views and
-- other matviews, from pg_depend) are neither due nor being refreshed, so a view built on another
-- refreshes after it. With $2 set, claims that view whatever its due time (run-now).
-- $1 is the advisory lock class: a view is being refreshed while its (class, id) lock is held.
WITH RECURSIVE sched AS (
    SELECT s.id, c.oid AS relid, c.relispopulated, s.next_due_at
    FROM matcol.matview_schedule s
    JOIN pg_namespace n ON n.nspname = s.schema_name
    JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.view_name AND c.relkind = 'm'
),
running AS (
    SELECT l.objid::int AS id
    FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = $1::int4::oid
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
),
up (root, relid) AS (
    SELECT relid, relid FROM sched
    UNION
    SELECT up.root, d.refobjid
    FROM up
    JOIN pg_rewrite r ON r.ev_class = up.relid
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                    AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> up.relid
    JOIN pg_class p ON p.oid = d.refobjid AND p.relkind IN ('v', 'm')
)
SELECT s.id, s.schema_name, s.view_name, sched.relid, sched.relispopulated,
       EXISTS (SELECT 1 FROM pg_index i
               WHERE i.indrelid = sched.relid AND i.indisunique AND i.indimmediate AND i.indisvalid
                 AND i.indpred IS NULL AND i.indexprs IS NULL) AS has_unique,
       extract(epoch FROM s.refresh_interval)::float8,
       coalesce(extract(epoch FROM s.maximum_execution_duration), 0)::float8,
       s.skip_if_unchanged, s.keep_executions, s.consecutive_failures,
       (s.source_counters IS NOT NULL AND s.consecutive_failures = 0) AS has_counters
FROM matcol.matview_schedule s
JOIN sched ON sched.id = s.id
WHERE CASE WHEN $2::int IS NOT NULL THEN s.id = $2::int
      ELSE s.next_due_at <= now()
           AND s.id NOT IN (SELECT id FROM running)
           AND NOT EXISTS (
               SELECT 1 FROM up JOIN sched a ON a.relid = up.relid
               WHERE up.root = sched.relid AND up.relid <> sched.relid
                 AND (a.next_due_at <= now() OR a.id IN (SELECT id FROM running)))
      END
ORDER BY s.next_due_at, s.id
LIMIT 1
FOR UPDATE OF s SKIP LOCKED
