-- Whether a daemon sleeps, as a sequence's value (1 asleep, 0 awake) beside matcol.wake, which
-- the daemon keeps in step: a writer's trigger reads it with pg_sequence_last_value, a plain
-- function call (0.5 µs), where a SELECT from matcol.wake ran a plan (7 µs) in every write
-- statement. It is also never behind: setval is not transactional.
CREATE SEQUENCE matcol.wake_flag MINVALUE 0 MAXVALUE 1 NO CYCLE;
SELECT pg_catalog.setval('matcol.wake_flag', CASE WHEN coalesce((SELECT sleeping FROM matcol.wake), false) THEN 1 ELSE 0 END, true);

CREATE OR REPLACE FUNCTION matcol.enqueue(t int[], d int[], v jsonb[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO matcol.pending (target_id, dependency_id, vals)
    SELECT x.t, x.d, x.v FROM ROWS FROM (pg_catalog.unnest(t), pg_catalog.unnest(d), pg_catalog.unnest(v)) AS x(t, d, v)
    WHERE x.t IS NOT NULL AND x.v IS NOT NULL;
    IF pg_catalog.pg_sequence_last_value('matcol.wake_flag'::pg_catalog.regclass) OPERATOR(pg_catalog.=) 1 THEN
        PERFORM pg_catalog.pg_notify('matcol', 'q');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION matcol.enqueue_all(t int[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO matcol.pending (target_id, vals) SELECT DISTINCT x, NULL::pg_catalog.jsonb FROM pg_catalog.unnest(t) AS x;
    IF pg_catalog.pg_sequence_last_value('matcol.wake_flag'::pg_catalog.regclass) OPERATOR(pg_catalog.=) 1 THEN
        PERFORM pg_catalog.pg_notify('matcol', 'q');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION matcol.enqueue_stale(t int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO matcol.pending (target_id, vals) VALUES (t, '[]'::pg_catalog.jsonb);
    IF pg_catalog.pg_sequence_last_value('matcol.wake_flag'::pg_catalog.regclass) OPERATOR(pg_catalog.=) 1 THEN
        PERFORM pg_catalog.pg_notify('matcol', 'q');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION matcol.wake_daemon() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF pg_catalog.pg_sequence_last_value('matcol.wake_flag'::pg_catalog.regclass) OPERATOR(pg_catalog.=) 1 THEN
        PERFORM pg_catalog.pg_notify('matcol', 'q');
    END IF;
END
$$;
