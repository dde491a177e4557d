package materializer_test

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/registry"
)

// pausable sets up venue/event with an enrichment that sleeps 3 s per batch while table slow has
// a row, and returns a materializer for it.
func pausable(t *testing.T) (*pgx.Conn, *materializer.Materializer, string) {
	t.Helper()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, `
		CREATE TABLE venue (id bigint PRIMARY KEY, seat_count bigint, materialized_at timestamptz);
		CREATE TABLE event (id bigint PRIMARY KEY, venue_id bigint NOT NULL, seats int NOT NULL);
		INSERT INTO venue (id) SELECT generate_series(1, 100);
		INSERT INTO event SELECT g, g, 10 FROM generate_series(1, 100) g;
		CREATE TABLE slow (on_ boolean);
		CREATE FUNCTION test_pause() RETURNS boolean LANGUAGE plpgsql AS $$
		BEGIN IF EXISTS (SELECT FROM slow) THEN PERFORM pg_sleep(3); END IF; RETURN true; END $$;`)
	_, err := registry.Install(ctx, conn)
	require.NoError(t, err)
	applyDefs(t, conn, []registry.Enrichment{{Name: "venue_seats", Target: tableName("public", "venue"),
		Columns: []string{"seat_count"}, Self: new(true),
		SQL: `SELECT v.id, (SELECT sum(seats) FROM event e WHERE e.venue_id = v.id)::bigint AS seat_count
			FROM venue v WHERE v.id = ANY($1) AND test_pause()`,
		DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}}})
	pool, err := dial.Pool(ctx, dsn, "test", dial.PoolOptions{MaxConns: 4})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	p, _, err := daemon.LoadPlan(ctx, pool)
	require.NoError(t, err)
	m := materializer.New(pool, p, materializer.Config{Workers: 1}, hclog.NewNullLogger())
	_, err = m.MaterializeAll(ctx)
	require.NoError(t, err)
	return conn, m, dsn
}

// A whole-table invalidation (a logical-mode resync after lost changes) must not pass over a row
// a batch is computing with a snapshot older than the lost change: that row is queued again, and
// ends exact once the batch has committed.
func TestWholeTablePassRequeuesRowsInFlight(t *testing.T) {
	ctx := context.Background()
	conn, m, dsn := pausable(t)
	pgtest.Exec(t, conn, `UPDATE venue SET materialized_at = NULL WHERE id = 1`)
	pgtest.Exec(t, conn, `INSERT INTO slow VALUES (true)`)
	slow := make(chan error, 1)
	go func() { _, err := m.MaterializeAll(ctx); slow <- err }()
	require.Eventually(t, func() bool {
		var n int
		_ = conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'`).Scan(&n)
		return n > 0
	}, 10*time.Second, 10*time.Millisecond, "the batch never started computing")
	pgtest.Exec(t, conn, `DELETE FROM slow`)

	// A change the queue never hears of, after the batch's snapshot: what a resync is for.
	lost := pgtest.Connect(t, dsn)
	pgtest.Exec(t, lost, `SET session_replication_role = replica`)
	pgtest.Exec(t, lost, `UPDATE event SET seats = 99 WHERE venue_id = 1`)
	var tid int
	require.NoError(t, conn.QueryRow(ctx, `SELECT id FROM matcol.target`).Scan(&tid))
	pgtest.Exec(t, conn, `INSERT INTO matcol.pending (target_id, vals) VALUES ($1, NULL)`, tid)
	_, err := m.Drain(ctx)
	require.NoError(t, err)
	_, err = m.MaterializeAll(ctx) // the pass, while the batch still holds row 1
	require.NoError(t, err)
	require.NoError(t, <-slow)

	for i := 0; i < 5; i++ {
		_, err = m.Drain(ctx)
		require.NoError(t, err)
		_, err = m.MaterializeAll(ctx)
		require.NoError(t, err)
	}
	var seats int64
	var pending int
	require.NoError(t, conn.QueryRow(ctx, `SELECT seat_count, (SELECT count(*) FROM matcol.pending WHERE vals <> '[]' OR vals IS NULL)
		FROM venue WHERE id = 1`).Scan(&seats, &pending))
	require.Equal(t, int64(99), seats, "row 1 must end with the lost change")
	require.Zero(t, pending)
}

// A whole-table pass recomputes every row once, in key order, and removes its entry.
func TestWholeTablePassRecomputesEveryRow(t *testing.T) {
	ctx := context.Background()
	conn, m, dsn := pausable(t)
	lost := pgtest.Connect(t, dsn)
	pgtest.Exec(t, lost, `SET session_replication_role = replica`)
	pgtest.Exec(t, lost, `UPDATE event SET seats = seats + id`)
	pgtest.Exec(t, conn, `INSERT INTO matcol.pending (target_id, vals) SELECT id, NULL FROM matcol.target`)
	_, err := m.Drain(ctx)
	require.NoError(t, err)
	_, err = m.MaterializeAll(ctx)
	require.NoError(t, err)
	var wrong, pending int
	require.NoError(t, conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM venue v WHERE seat_count IS DISTINCT FROM
		(SELECT sum(seats) FROM event e WHERE e.venue_id = v.id) OR materialized_at IS NULL),
		(SELECT count(*) FROM matcol.pending WHERE vals IS NULL)`).Scan(&wrong, &pending))
	require.Zero(t, wrong)
	require.Zero(t, pending)
}

// A pass writes only the rows whose values changed: a fresh row that computes to what it holds
// keeps its row version and its stamp.
func TestWholeTablePassWritesOnlyChangedRows(t *testing.T) {
	ctx := context.Background()
	conn, m, dsn := pausable(t)
	lost := pgtest.Connect(t, dsn)
	pgtest.Exec(t, lost, `SET session_replication_role = replica`)
	pgtest.Exec(t, lost, `UPDATE event SET seats = 77 WHERE venue_id = 5`)
	pgtest.Exec(t, conn, `CREATE TABLE before AS SELECT id, xmin::text AS x FROM venue`)
	pgtest.Exec(t, conn, `INSERT INTO matcol.pending (target_id, vals) SELECT id, NULL FROM matcol.target`)
	_, err := m.Drain(ctx)
	require.NoError(t, err)
	_, err = m.MaterializeAll(ctx)
	require.NoError(t, err)
	var rewritten []int64
	rows, err := conn.Query(ctx, `SELECT v.id FROM venue v JOIN before b ON b.id = v.id WHERE v.xmin::text <> b.x ORDER BY 1`)
	require.NoError(t, err)
	for rows.Next() {
		var id int64
		require.NoError(t, rows.Scan(&id))
		rewritten = append(rewritten, id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []int64{5}, rewritten)
	var seats int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT seat_count FROM venue WHERE id = 5`).Scan(&seats))
	require.Equal(t, int64(77), seats)
}

// A whole-table entry that commits after a pass has started, with a lower id than the entries the
// pass answers, stays queued when the pass ends: the pass may have read rows before that
// transaction's changes, and deleting every entry up to the pass's highest id lost them.
func TestPassKeepsEntriesItDidNotSee(t *testing.T) {
	ctx := context.Background()
	conn, m, dsn := pausable(t)
	var tid int
	require.NoError(t, conn.QueryRow(ctx, `SELECT id FROM matcol.target`).Scan(&tid))
	late := pgtest.Connect(t, dsn)
	tx, err := late.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	var lateID, seenID int64
	require.NoError(t, tx.QueryRow(ctx, `INSERT INTO matcol.pending (target_id, vals) VALUES ($1, NULL) RETURNING id`, tid).Scan(&lateID))
	require.NoError(t, conn.QueryRow(ctx, `INSERT INTO matcol.pending (target_id, vals) VALUES ($1, NULL) RETURNING id`, tid).Scan(&seenID))
	require.Less(t, lateID, seenID)
	_, err = m.Drain(ctx) // the pass starts, answering the entry it sees
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	_, err = m.MaterializeAll(ctx) // the pass runs to its end
	require.NoError(t, err)
	var left []int64
	rows, err := conn.Query(ctx, `SELECT id FROM matcol.pending WHERE vals IS NULL ORDER BY id`)
	require.NoError(t, err)
	for rows.Next() {
		var id int64
		require.NoError(t, rows.Scan(&id))
		left = append(left, id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []int64{lateID}, left, "the entry that committed after the pass started waits for a pass of its own")

	_, err = m.Drain(ctx)
	require.NoError(t, err)
	_, err = m.MaterializeAll(ctx)
	require.NoError(t, err)
	var n int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM matcol.pending WHERE vals IS NULL`).Scan(&n))
	require.Zero(t, n)
}

// A pass's chunks run on up to the table's worker cap at once, each over its own key range, and
// together write every row once: a logical-mode resync ran at half a backfill's speed with one
// chunk at a time.
func TestPassChunksRunOnTableWorkers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cap      int
		min, max int64
	}{
		{"one table worker", 1, 1, 1},
		{"two table workers", 2, 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b := timedVenue(t, tc.cap, time.Nanosecond)
			pgtest.Exec(t, b.conn, `INSERT INTO venue (id, seat_count, materialized_at) SELECT g, 0, now() FROM generate_series(3, 1202) g;
				UPDATE venue SET seat_count = 0, materialized_at = now();
				DELETE FROM matcol.pending;
				INSERT INTO matcol.pending (target_id, vals) SELECT id, NULL FROM matcol.target`)
			b.run(t)
			require.Eventually(t, func() bool {
				var left, entries int
				require.NoError(t, b.conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM venue WHERE ended IS NULL),
					(SELECT count(*) FROM matcol.pending)`).Scan(&left, &entries))
				return left == 0 && entries == 0
			}, 60*time.Second, 20*time.Millisecond, "the pass must write every row and end")
			var most, chunks, rows int64
			require.NoError(t, b.conn.QueryRow(ctx, `WITH w AS (SELECT DISTINCT started, ended FROM venue)
				SELECT max((SELECT count(*) FROM w o WHERE o.started <= w.started AND w.started < o.ended)),
				       (SELECT count(*) FROM w), (SELECT count(*) FROM venue) FROM w`).Scan(&most, &chunks, &rows))
			require.GreaterOrEqual(t, most, tc.min, "chunks of the pass at once")
			require.LessOrEqual(t, most, tc.max, "chunks of the pass at once")
			require.Equal(t, int64(1202), rows)
			require.GreaterOrEqual(t, chunks, int64(1202/20), "chunks of at most 20 rows")
		})
	}
}
