-- Trigger functions run as the writer (SECURITY INVOKER): reading the application's rows may run
-- code the table's owner chose (a cast to json, a type's output function), which must not run
-- with matcol's rights. They hand what they read to these functions, which run as matcol, read
-- no application data, and only queue and wake.
--   enqueue: t, d and v in step: target id, dependency id (NULL: v holds target keys), values.
--   enqueue_all: every row of these targets (a source was truncated).
--   enqueue_stale: targets that have new stale rows (the '[]' marker).
CREATE FUNCTION matcol.enqueue(t int[], d int[], v jsonb[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO matcol.pending (target_id, dependency_id, vals)
    SELECT x.t, x.d, x.v FROM unnest(t, d, v) AS x(t, d, v) WHERE x.t IS NOT NULL AND x.v IS NOT NULL;
    PERFORM matcol.wake_daemon();
END
$$;

CREATE FUNCTION matcol.enqueue_all(t int[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO matcol.pending (target_id, vals) SELECT DISTINCT x, NULL::jsonb FROM unnest(t) AS x;
    PERFORM matcol.wake_daemon();
END
$$;

CREATE FUNCTION matcol.enqueue_stale(t int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO matcol.pending (target_id, vals) VALUES (t, '[]');
    PERFORM matcol.wake_daemon();
END
$$;

-- A daemon that sleeps waits for NOTIFY; a busy one polls the queue. NOTIFY takes a
-- database-wide lock at commit, so writers send it only while a daemon sleeps.
CREATE FUNCTION matcol.wake_daemon() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce((SELECT w.sleeping FROM matcol.wake w), false) THEN
        PERFORM pg_notify('matcol', 'q');
    END IF;
END
$$;

-- Application roles call the functions above from matcol's triggers. The registry's tables grant
-- them nothing, and registration stays revoked from PUBLIC.
GRANT USAGE ON SCHEMA matcol TO PUBLIC;
GRANT EXECUTE ON FUNCTION matcol.enqueue(int[], int[], jsonb[]), matcol.enqueue_all(int[]),
    matcol.enqueue_stale(int), matcol.wake_daemon() TO PUBLIC;
