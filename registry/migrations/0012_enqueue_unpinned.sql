-- The same functions without SET search_path, which costs about 10 µs a call (a GUC save and
-- restore, and a new search path), on every application write. They stay safe as SECURITY
-- DEFINER because every name in them is qualified: relations by schema, functions in
-- pg_catalog, and no operator. enqueue and enqueue_stale check matcol.wake themselves rather
-- than call wake_daemon, one call less.
CREATE OR REPLACE FUNCTION matcol.enqueue(t int[], d int[], v jsonb[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO matcol.pending (target_id, dependency_id, vals)
    SELECT x.t, x.d, x.v FROM ROWS FROM (pg_catalog.unnest(t), pg_catalog.unnest(d), pg_catalog.unnest(v)) AS x(t, d, v)
    WHERE x.t IS NOT NULL AND x.v IS NOT NULL;
    IF (SELECT w.sleeping FROM matcol.wake w) THEN
        PERFORM pg_catalog.pg_notify('matcol', 'q');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION matcol.enqueue_all(t int[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO matcol.pending (target_id, vals) SELECT DISTINCT x, NULL::pg_catalog.jsonb FROM pg_catalog.unnest(t) AS x;
    IF (SELECT w.sleeping FROM matcol.wake w) THEN
        PERFORM pg_catalog.pg_notify('matcol', 'q');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION matcol.enqueue_stale(t int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO matcol.pending (target_id, vals) VALUES (t, '[]'::pg_catalog.jsonb);
    IF (SELECT w.sleeping FROM matcol.wake w) THEN
        PERFORM pg_catalog.pg_notify('matcol', 'q');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION matcol.wake_daemon() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF (SELECT w.sleeping FROM matcol.wake w) THEN
        PERFORM pg_catalog.pg_notify('matcol', 'q');
    END IF;
END
$$;
