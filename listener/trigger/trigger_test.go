package trigger_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/listener/trigger"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/registry"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const schema = `
CREATE TABLE venue (id bigint PRIMARY KEY, name text, city text, seat_count bigint, materialized_at timestamptz);
CREATE TABLE event (id bigint PRIMARY KEY, venue_id bigint, seats int, note text);
INSERT INTO venue (id) SELECT generate_series(1, 5);
INSERT INTO event VALUES (1, 1, 10, 'a'), (2, 2, 20, 'b');
`

var defs = []registry.Enrichment{{
	Name: "venue_seats", Target: pgident.Table{Schema: "public", Name: "venue"}, Columns: []string{"seat_count"}, Self: new(true),
	SQL:       `SELECT v.id, sum(e.seats)::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id WHERE v.id = ANY($1) GROUP BY v.id`,
	DependsOn: []registry.Dependency{{Source: pgident.Table{Schema: "public", Name: "event"}, Columns: []string{"venue_id"}}},
}}

func apply(t testing.TB, conn *pgx.Conn, defs []registry.Enrichment) []trigger.Change {
	t.Helper()
	ctx := context.Background()
	var changes []trigger.Change
	require.NoError(t, pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := registry.Install(ctx, tx); err != nil {
			return err
		}
		p, err := plan.Build(ctx, tx, defs)
		if err != nil {
			return err
		}
		if _, err := registry.Sync(ctx, tx, p.Definitions()); err != nil {
			return err
		}
		loaded, err := registry.Load(ctx, tx)
		if err != nil {
			return err
		}
		if len(loaded) == 0 {
			changes, _, err = trigger.Sync(ctx, tx, nil)
			return err
		}
		p, err = plan.Build(ctx, tx, loaded)
		if err != nil {
			return err
		}
		changes, _, err = trigger.Sync(ctx, tx, p)
		return err
	}))
	return changes
}

func queued(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT coalesce(vals::text, 'ALL') FROM matcol.pending ORDER BY 1`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	pgtest.Exec(t, conn, `DELETE FROM matcol.pending`)
	return out
}

func setup(t *testing.T) *pgx.Conn {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, schema)
	apply(t, conn, defs)
	return conn
}

func TestSourceTriggers(t *testing.T) {
	conn := setup(t)
	pgtest.Exec(t, conn, `INSERT INTO event VALUES (3, 3, 5, 'c'), (4, 3, 5, 'd'), (5, NULL, 1, 'e')`)
	require.Equal(t, []string{"[3]"}, queued(t, conn), "one entry per distinct target key; NULL keys skipped")

	pgtest.Exec(t, conn, `UPDATE event SET venue_id = 4 WHERE id = 1`)
	require.Equal(t, []string{"[1]", "[4]"}, queued(t, conn), "a moved row invalidates its old and new target")

	pgtest.Exec(t, conn, `UPDATE event SET venue_id = venue_id, seats = seats`)
	require.Empty(t, queued(t, conn), "an UPDATE that changes nothing invalidates nothing")

	pgtest.Exec(t, conn, `UPDATE event SET note = 'changed' WHERE id = 2`)
	require.Empty(t, queued(t, conn), "the enrichment never reads note")

	pgtest.Exec(t, conn, `UPDATE event SET seats = 21 WHERE id = 2`)
	require.Equal(t, []string{"[2]"}, queued(t, conn), "the enrichment reads seats")

	pgtest.Exec(t, conn, `DELETE FROM event WHERE id = 2`)
	require.Equal(t, []string{"[2]"}, queued(t, conn))

	pgtest.Exec(t, conn, `TRUNCATE event`)
	require.Equal(t, []string{"ALL"}, queued(t, conn))
}

func TestSelfTrigger(t *testing.T) {
	conn := setup(t)
	ctx := context.Background()
	pgtest.Exec(t, conn, `UPDATE venue SET materialized_at = now(), seat_count = 1`)
	var stale int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM venue WHERE materialized_at IS NULL`).Scan(&stale))
	require.Zero(t, stale, "writing only matcol's columns keeps rows fresh")

	pgtest.Exec(t, conn, `UPDATE venue SET name = 'x' WHERE id = 2`)
	pgtest.Exec(t, conn, `UPDATE venue SET name = name WHERE id = 3`)
	pgtest.Exec(t, conn, `INSERT INTO venue (id, materialized_at) VALUES (9, now())`)
	rows, err := conn.Query(ctx, `SELECT id FROM venue WHERE materialized_at IS NULL ORDER BY id`)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Equal(t, []int64{2, 9}, ids, "a changed row and a new row are stale; a no-op update is not")
}

func TestDroppedColumnNeverBreaksWriters(t *testing.T) {
	conn := setup(t)
	pgtest.Exec(t, conn, `ALTER TABLE event DROP COLUMN venue_id`)
	pgtest.Exec(t, conn, `INSERT INTO event (id, seats) VALUES (10, 1)`)
	pgtest.Exec(t, conn, `UPDATE event SET seats = 2 WHERE id = 10`)
	require.Empty(t, queued(t, conn))
}

// A column's type can change under the triggers, and they go on reading it.
func TestTypeChangeNeverBreaksWriters(t *testing.T) {
	conn := setup(t)
	pgtest.Exec(t, conn, `ALTER TABLE event ALTER COLUMN venue_id TYPE numeric, ALTER COLUMN seats TYPE bigint`)
	pgtest.Exec(t, conn, `UPDATE event SET seats = 3 WHERE id = 1`)
	require.Equal(t, []string{"[1]"}, queued(t, conn))
}

// Reading an application row can run code its table's owner chose, such as a cast to json of a
// type of theirs: it runs as the writer, never with matcol's rights.
func TestTriggersRunAsTheWriter(t *testing.T) {
	conn := setup(t)
	pgtest.Exec(t, conn, `
		CREATE TABLE seen (who text);
		CREATE TYPE mood AS ENUM ('ok', 'sad');
		CREATE FUNCTION mood_json(mood) RETURNS json LANGUAGE plpgsql AS
		  $$BEGIN INSERT INTO public.seen VALUES (current_user); RETURN to_json($1::text); END$$;
		CREATE CAST (mood AS json) WITH FUNCTION mood_json(mood);
		ALTER TABLE event ADD COLUMN mood mood;
		CREATE ROLE app_writer;
		GRANT INSERT, UPDATE, SELECT ON event TO app_writer;
		GRANT INSERT ON seen TO app_writer;
		GRANT USAGE ON TYPE mood TO app_writer;`)
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), `DROP OWNED BY app_writer; DROP ROLE app_writer`) })
	pgtest.Exec(t, conn, `SET ROLE app_writer; INSERT INTO event (id, venue_id, seats, mood) VALUES (20, 1, 1, 'sad'); RESET ROLE`)
	require.Equal(t, []string{"[1]"}, queued(t, conn), "the application role needs no grant to queue")
	rows, err := conn.Query(context.Background(), `SELECT DISTINCT who FROM seen`)
	require.NoError(t, err)
	who, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"app_writer"}, who)
}

// A source trigger inserts its entries itself, as the writer, in one statement: it needs no
// SECURITY DEFINER call, and what PUBLIC may do to the queue stops at inserting those columns.
func TestSourceTriggersInsertAsTheWriter(t *testing.T) {
	conn := setup(t)
	pgtest.Exec(t, conn, `
		CREATE ROLE app_writer;
		GRANT INSERT, UPDATE, SELECT ON event TO app_writer;
		REVOKE EXECUTE ON FUNCTION matcol.enqueue(int[], int[], jsonb[]) FROM PUBLIC`)
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), `DROP OWNED BY app_writer; DROP ROLE app_writer`) })
	pgtest.Exec(t, conn, `SET ROLE app_writer; UPDATE event SET venue_id = 3 WHERE id = 1; RESET ROLE`)
	require.Equal(t, []string{"[1]", "[3]"}, queued(t, conn))
	ctx := context.Background()
	for _, sql := range []string{
		`SELECT count(*) FROM matcol.pending`,
		`DELETE FROM matcol.pending`,
		`UPDATE matcol.pending SET vals = '[2]'`,
		`INSERT INTO matcol.pending (target_id, vals, enqueued_at) VALUES (1, '[2]', now() - interval '1 day')`,
		`INSERT INTO matcol.pending (id, target_id, vals) OVERRIDING SYSTEM VALUE VALUES (1, 1, '[2]')`,
	} {
		_, err := conn.Exec(ctx, `SET ROLE app_writer; `+sql)
		require.ErrorContains(t, err, "permission denied", sql)
		pgtest.Exec(t, conn, `RESET ROLE`)
	}
	require.Empty(t, queued(t, conn), "nothing the application role tried reached the queue")
}

func TestSyncIsIdempotentAndRemoves(t *testing.T) {
	conn := setup(t)
	require.Empty(t, apply(t, conn, defs), "a second apply changes no trigger")
	changes := apply(t, conn, nil)
	require.Len(t, changes, 8, "4 source triggers, the 2 self triggers and 2 stale-marker triggers are dropped")
	var n int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'matcol%'`).Scan(&n))
	require.Zero(t, n)
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = 'matcol' AND (proname LIKE 'inv%' OR proname LIKE 'self%')`).Scan(&n))
	require.Zero(t, n, "trigger functions go with their triggers")
}

// When what an enrichment reads of its target changes, the triggers stay and only matcol's own
// functions are replaced: a role that may create triggers but not drop them (no ownership) can
// apply it.
func TestWatchedColumnsChangeKeepsTriggers(t *testing.T) {
	conn := setup(t)
	reads := []registry.Enrichment{defs[0]}
	reads[0].Self = nil // watch what the enrichment reads
	reads[0].SQL = `SELECT v.id, (sum(e.seats) + length(max(v.city)))::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id WHERE v.id = ANY($1) GROUP BY v.id`
	apply(t, conn, reads)
	pgtest.Exec(t, conn, `UPDATE venue SET materialized_at = now()`)
	pgtest.Exec(t, conn, `UPDATE venue SET name = 'x' WHERE id = 1`)
	var stale int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM venue WHERE materialized_at IS NULL`).Scan(&stale))
	require.Zero(t, stale, "the enrichment does not read venue.name")

	reads[0].SQL = `SELECT v.id, (sum(e.seats) + length(max(v.name)) + length(max(v.city)))::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id WHERE v.id = ANY($1) GROUP BY v.id`
	require.Empty(t, apply(t, conn, reads), "no trigger is created or dropped")
	pgtest.Exec(t, conn, `UPDATE venue SET name = 'y' WHERE id = 1`)
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM venue WHERE materialized_at IS NULL`).Scan(&stale))
	require.Equal(t, 1, stale, "now it does")
}

// A target read only through its key has an AFTER UPDATE trigger that queues a changed key, and
// no BEFORE UPDATE trigger, which would lock every updated row; when the enrichment comes to read
// another column, the owner's apply swaps them.
func TestKeyOnlyTargetSwapsSelfTriggers(t *testing.T) {
	conn := setup(t)
	ctx := context.Background()
	reads := []registry.Enrichment{defs[0]}
	reads[0].Self = nil
	apply(t, conn, reads)
	kinds := func() (before, after int) {
		require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE tgtype & 2 <> 0), count(*) FILTER (WHERE tgtype & 2 = 0)
			FROM pg_trigger WHERE tgrelid = 'venue'::regclass AND NOT tgisinternal AND tgtype & 16 <> 0 AND tgtype & 1 <> 0`).Scan(&before, &after))
		return before, after
	}
	before, after := kinds()
	require.Equal(t, [2]int{0, 1}, [2]int{before, after})
	pgtest.Exec(t, conn, `UPDATE venue SET materialized_at = now(); DELETE FROM matcol.pending`)
	pgtest.Exec(t, conn, `UPDATE venue SET name = 'x' WHERE id = 1; UPDATE venue SET id = 10 WHERE id = 2`)
	require.Equal(t, []string{"[10]"}, queued(t, conn), "the new key of the moved row, nothing for the other UPDATE")
	var stale int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM venue WHERE materialized_at IS NULL`).Scan(&stale))
	require.Zero(t, stale)
	// The key retyped, or dropped, in the writer's transaction never fails the writer: no trigger
	// depends on the column, and the function's failing comparison counts as a change.
	pgtest.Exec(t, conn, `BEGIN; ALTER TABLE venue ALTER id TYPE text; UPDATE venue SET id = 'a' || id WHERE id = '1'; ROLLBACK`)
	pgtest.Exec(t, conn, `BEGIN; ALTER TABLE venue DROP COLUMN id CASCADE; UPDATE venue SET name = 'z'; ROLLBACK`)

	reads[0].SQL = `SELECT v.id, (sum(e.seats) + length(max(v.name)))::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id WHERE v.id = ANY($1) GROUP BY v.id`
	require.NotEmpty(t, apply(t, conn, reads))
	before, after = kinds()
	require.Equal(t, [2]int{1, 0}, [2]int{before, after})
	pgtest.Exec(t, conn, `UPDATE venue SET name = 'y' WHERE id = 1`)
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM venue WHERE materialized_at IS NULL`).Scan(&stale))
	require.Equal(t, 1, stale)
}

// The self trigger function reads the watched columns by name: a column dropped, renamed or
// retyped in the writer's own transaction never fails the writer, and counts as a change; one
// dropped and added again is read anew. Columns compare by what the value is, not by the type's
// equality.
func TestSelfWatchSurvivesDDLInTheWritersTransaction(t *testing.T) {
	conn := setup(t)
	reads := []registry.Enrichment{defs[0]}
	reads[0].Self = nil
	reads[0].SQL = `SELECT v.id, (sum(e.seats) + length(max(v.name)))::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id WHERE v.id = ANY($1) GROUP BY v.id`
	apply(t, conn, reads)
	ctx := context.Background()
	stale := func(id int) bool {
		var s bool
		require.NoError(t, conn.QueryRow(ctx, `SELECT materialized_at IS NULL FROM venue WHERE id = $1`, id).Scan(&s))
		return s
	}
	pgtest.Exec(t, conn, `UPDATE venue SET name = 'a'`)
	pgtest.Exec(t, conn, `UPDATE venue SET materialized_at = now()`)
	pgtest.Exec(t, conn, `UPDATE venue SET seat_count = 7 WHERE id = 1`)
	require.False(t, stale(1), "seat_count is matcol's own")
	for _, ddl := range []string{
		`ALTER TABLE venue DROP COLUMN name`,
		`ALTER TABLE venue RENAME COLUMN name TO title`,
		`ALTER TABLE venue ALTER COLUMN name TYPE varchar(20)`,
	} {
		pgtest.Exec(t, conn, `UPDATE venue SET materialized_at = now()`)
		tx, err := conn.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, ddl)
		require.NoError(t, err, "no matcol trigger depends on a column: %s", ddl)
		var isNull bool
		require.NoError(t, tx.QueryRow(ctx, `UPDATE venue SET seat_count = 8 WHERE id = 2 RETURNING materialized_at IS NULL`).Scan(&isNull),
			"the writer's UPDATE after %s", ddl)
		require.NoError(t, tx.Rollback(ctx))
		if ddl != `ALTER TABLE venue ALTER COLUMN name TYPE varchar(20)` {
			require.True(t, isNull, "after %s the watch cannot read the column: it counts as a change", ddl)
		}
	}

	// Another session drops the column and adds it again: this session's trigger reads the new one.
	pgtest.Exec(t, conn, `UPDATE venue SET materialized_at = now()`)
	other, err := pgx.ConnectConfig(ctx, conn.Config().Copy())
	require.NoError(t, err)
	pgtest.Exec(t, other, `ALTER TABLE venue DROP COLUMN name; ALTER TABLE venue ADD COLUMN name text`)
	require.NoError(t, other.Close(ctx))
	pgtest.Exec(t, conn, `UPDATE venue SET name = 'new' WHERE id = 4`)
	require.True(t, stale(4), "the column added again is the one compared")

	pgtest.Exec(t, conn, `ALTER TABLE venue ADD COLUMN price numeric`)
	reads[0].SQL = `SELECT v.id, length(max(v.price)::text)::bigint AS seat_count FROM venue v WHERE v.id = ANY($1) GROUP BY v.id`
	reads[0].DependsOn = nil
	apply(t, conn, reads)
	pgtest.Exec(t, conn, `UPDATE venue SET price = 1.0`)
	pgtest.Exec(t, conn, `UPDATE venue SET materialized_at = now()`)
	pgtest.Exec(t, conn, `UPDATE venue SET price = 1.0 WHERE id = 3`)
	require.False(t, stale(3), "the same value")
	pgtest.Exec(t, conn, `UPDATE venue SET price = 1.00 WHERE id = 3`)
	require.True(t, stale(3), "1.00 = 1.0 as numerics, but the enrichment prints them apart")
}

// The trigger functions pin no search_path (that costs every write about 10 µs): every name in
// them is qualified, so a writer's search_path that shadows pg_catalog's functions and
// operators changes nothing, and never runs the writer's code as matcol.
func TestTriggersIgnoreTheWritersSearchPath(t *testing.T) {
	conn := setup(t)
	pgtest.Exec(t, conn, `
		CREATE SCHEMA evil;
		CREATE TABLE evil.calls (fn text, who text);
		CREATE FUNCTION evil.to_jsonb(anyelement) RETURNS jsonb LANGUAGE sql AS
		  $$INSERT INTO evil.calls VALUES ('to_jsonb', current_user) RETURNING '{"venue_id": 5}'::jsonb$$;
		CREATE FUNCTION evil.unnest(anyarray) RETURNS SETOF anyelement LANGUAGE sql AS
		  $$INSERT INTO evil.calls VALUES ('unnest', current_user); SELECT x FROM pg_catalog.unnest($1) x$$;
		CREATE FUNCTION evil.jsonb_build_array(jsonb) RETURNS jsonb LANGUAGE sql AS
		  $$INSERT INTO evil.calls VALUES ('jsonb_build_array', current_user) RETURNING '[5]'::jsonb$$;
		CREATE FUNCTION evil.set_config(text, text, boolean) RETURNS text LANGUAGE sql AS
		  $$INSERT INTO evil.calls VALUES ('set_config', current_user) RETURNING ''$$;`)
	pgtest.Exec(t, conn, `SET search_path = evil, public, pg_catalog`)
	pgtest.Exec(t, conn, `INSERT INTO event VALUES (30, 2, 1, 'x')`)
	pgtest.Exec(t, conn, `UPDATE event SET venue_id = 3 WHERE id = 30`)
	pgtest.Exec(t, conn, `UPDATE venue SET name = 'z' WHERE id = 4`)
	pgtest.Exec(t, conn, `RESET search_path`)
	require.Equal(t, []string{"[2]", "[2]", "[3]", "[]"}, queued(t, conn))
	var calls int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM evil.calls`).Scan(&calls))
	require.Zero(t, calls, "no function of the writer's search_path ran")
}

// Writers send NOTIFY only while a daemon says it sleeps (matcol.wake_flag): NOTIFY takes a
// database-wide lock at commit.
func TestWritersNotifyOnlyASleepingDaemon(t *testing.T) {
	conn := setup(t)
	ctx := context.Background()
	l, err := pgx.ConnectConfig(ctx, conn.Config().Copy())
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	pgtest.Exec(t, l, `LISTEN matcol`)
	notified := func() bool {
		wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		_, err := l.WaitForNotification(wctx)
		return err == nil
	}
	pgtest.Exec(t, conn, `SELECT setval('matcol.wake_flag', 0, true)`)
	pgtest.Exec(t, conn, `INSERT INTO event VALUES (40, 1, 1, 'x')`)
	require.False(t, notified(), "an awake daemon polls: no NOTIFY")
	pgtest.Exec(t, conn, `SELECT setval('matcol.wake_flag', 1, true)`)
	pgtest.Exec(t, conn, `INSERT INTO event VALUES (41, 1, 1, 'x')`)
	require.True(t, notified(), "a sleeping daemon is woken")
	require.Equal(t, []string{"[1]", "[1]"}, queued(t, conn))
}

// Apply beside a DETACH PARTITION of a source that queued behind another transaction: the
// triggers go on the partitioned table before its partitions, in the order DETACH locks them,
// and neither statement dies in a deadlock, whatever the tables' names.
func TestSyncBesideADetach(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, `
		CREATE TABLE venue (id bigint PRIMARY KEY, seat_count bigint, materialized_at timestamptz);
		CREATE TABLE z_event (id bigint, venue_id bigint, seats int, PRIMARY KEY (id)) PARTITION BY RANGE (id);
		CREATE TABLE a_event PARTITION OF z_event FOR VALUES FROM (0) TO (100);
		CREATE TABLE b_event PARTITION OF z_event FOR VALUES FROM (100) TO (200)`)
	holder := pgtest.Connect(t, dsn)
	pgtest.Exec(t, holder, `BEGIN; LOCK TABLE ONLY z_event IN ACCESS SHARE MODE`)
	ddl := pgtest.Connect(t, dsn)
	pgtest.Exec(t, ddl, `SET deadlock_timeout = '50ms'`)
	pgtest.Exec(t, conn, `SET deadlock_timeout = '50ms'`)
	waiting := func(pid uint32) func() bool {
		return func() bool {
			var n int
			require.NoError(t, holder.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted`, pid).Scan(&n))
			return n > 0
		}
	}
	detached := make(chan error, 1)
	go func() { _, err := ddl.Exec(ctx, `ALTER TABLE z_event DETACH PARTITION a_event`); detached <- err }()
	require.Eventually(t, waiting(ddl.PgConn().PID()), 10*time.Second, 5*time.Millisecond)

	applied := make(chan error, 1)
	go func() {
		applied <- pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := registry.Install(ctx, tx); err != nil {
				return err
			}
			p, err := plan.Build(ctx, tx, []registry.Enrichment{{
				Name: "venue_seats", Target: pgident.Table{Schema: "public", Name: "venue"}, Columns: []string{"seat_count"},
				SQL:       `SELECT v.id, sum(e.seats)::bigint AS seat_count FROM venue v LEFT JOIN z_event e ON e.venue_id = v.id WHERE v.id = ANY($1) GROUP BY v.id`,
				DependsOn: []registry.Dependency{{Source: pgident.Table{Schema: "public", Name: "z_event"}, Columns: []string{"venue_id"}}},
			}})
			if err != nil {
				return err
			}
			_, _, err = trigger.Sync(ctx, tx, p)
			return err
		})
	}()
	require.Eventually(t, waiting(conn.PgConn().PID()), 10*time.Second, 5*time.Millisecond)
	pgtest.Exec(t, holder, `COMMIT`)
	require.NoError(t, <-detached)
	require.NoError(t, <-applied)
}
