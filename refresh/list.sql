-- Every scheduled view with its state. $1 is the advisory lock class (see pick.sql).
SELECT s.id, s.schema_name, s.view_name, s.source,
       extract(epoch FROM s.refresh_interval)::float8,
       coalesce(extract(epoch FROM s.maximum_execution_duration), 0)::float8,
       s.skip_if_unchanged, s.keep_executions, s.next_due_at, s.last_attempted_at,
       s.last_success_at, coalesce(s.last_error, ''), s.last_error_at, s.consecutive_failures,
       EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = s.schema_name AND c.relname = s.view_name AND c.relkind = 'm'),
       EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                 AND l.classid = $1::int4::oid AND l.objid = s.id::oid
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())),
       coalesce((SELECT e.mode FROM matcol.matview_execution e
                 WHERE e.schedule_id = s.id ORDER BY e.id DESC LIMIT 1), '')
FROM matcol.matview_schedule s
ORDER BY s.schema_name, s.view_name
