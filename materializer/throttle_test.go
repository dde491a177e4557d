package materializer_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgcluster"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/registry"
)

// A real standby that applies WAL 3 s late: while its replay lag is above max_replica_lag the
// daemon applies no invalidation and computes no row; once the standby catches up, it does.
func TestReplicaLagHoldsWork(t *testing.T) {
	if os.Getenv("MATCOL_TEST_DATABASE_URL") != "" {
		t.Skip("needs a primary and a standby of its own")
	}
	ctx := context.Background()
	primary, err := pgcluster.Start(ctx, pgcluster.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = primary.Stop() })
	standby, err := primary.StartStandby(ctx, map[string]string{"recovery_min_apply_delay": "'3s'"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = standby.Stop() })

	b := setupOn(t, primary.DSN("postgres"), materializer.Config{Workers: 1, PollInterval: 20 * time.Millisecond,
		MaxReplicaLag: time.Second})
	b.catchUp(t)
	pgtest.Exec(t, b.conn, `CREATE TABLE tick (at timestamptz)`)
	// Commits keep flowing, so the primary keeps measuring the standby's lag.
	tickCtx, stopTicks := context.WithCancel(ctx)
	ticker := pgtest.Connect(t, primary.DSN("postgres"))
	ticked := make(chan struct{})
	defer func() { stopTicks(); <-ticked }()
	go func() {
		defer close(ticked)
		for tickCtx.Err() == nil {
			_, _ = ticker.Exec(tickCtx, `INSERT INTO tick VALUES (now())`)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	lag := func() float64 {
		var s float64
		_ = b.conn.QueryRow(ctx, `SELECT coalesce(max(extract(epoch FROM replay_lag)), 0)::float8 FROM pg_stat_replication`).Scan(&s)
		return s
	}
	require.Eventually(t, func() bool { return lag() > 2 }, 30*time.Second, 100*time.Millisecond, "the standby never lagged")

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.mat.Run(runCtx) }()
	defer func() { stop(); <-done }()
	pgtest.Exec(t, b.conn, `UPDATE event SET seats = 99 WHERE id = 1`)
	time.Sleep(3 * time.Second)
	require.Greater(t, lag(), 1.0, "the standby must still lag for the hold to mean anything")
	var seats int64
	var pending int
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT seat_count, (SELECT count(*) FROM matcol.pending) FROM venue WHERE id = 1`).Scan(&seats, &pending))
	require.Equal(t, int64(10), seats, "no row is computed while the replica lags")
	require.Positive(t, pending, "no invalidation is applied while the replica lags")

	sconn := pgtest.Connect(t, standby.DSN("postgres"))
	pgtest.Exec(t, sconn, `ALTER SYSTEM SET recovery_min_apply_delay = 0`)
	pgtest.Exec(t, sconn, `SELECT pg_reload_conf()`)
	require.Eventually(t, func() bool {
		var fresh bool
		_ = b.conn.QueryRow(ctx, `SELECT seat_count = 99 AND materialized_at IS NOT NULL FROM venue WHERE id = 1`).Scan(&fresh)
		return fresh
	}, 30*time.Second, 50*time.Millisecond, "work must resume once the standby catches up")
}

// Once a table's usual time per row is known, a batch far slower than that (here each row sleeps
// 100 ms) makes the worker wait as long as the batch took before the next one, so matcol takes
// at most about half of a struggling database's time.
func TestSlowBatchesBackOff(t *testing.T) {
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1, BatchSize: 10, PollInterval: 20 * time.Millisecond,
		LatencyFactor: 4})
	ctx := context.Background()
	pgtest.Exec(t, b.conn, `CREATE TABLE slow (s float8 NOT NULL); INSERT INTO slow VALUES (0);
		CREATE FUNCTION slow_row(id bigint) RETURNS boolean LANGUAGE plpgsql VOLATILE AS
		  $$BEGIN PERFORM pg_sleep((SELECT s FROM slow)); RETURN true; END$$;
		INSERT INTO venue (id, seat_count, materialized_at) SELECT g, 0, now() FROM generate_series(3, 32) g`)
	defs := []registry.Enrichment{{Name: "venue_seats", Target: tableName("public", "venue"), Columns: []string{"seat_count"},
		SQL: `SELECT v.id, sum(e.seats)::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id
			WHERE v.id = ANY($1) AND slow_row(v.id) GROUP BY v.id`, Self: new(true),
		DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}}}
	applyDefs(t, b.conn, defs)
	reload(t, b)
	b.catchUp(t)

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.mat.Run(runCtx) }()
	defer func() { stop(); <-done }()
	fresh := func(where string) func() bool {
		return func() bool {
			var n int
			_ = b.conn.QueryRow(ctx, `SELECT count(*) FROM venue WHERE materialized_at IS NULL AND `+where).Scan(&n)
			var pending int
			_ = b.conn.QueryRow(ctx, `SELECT count(*) FROM matcol.pending`).Scan(&pending)
			return n == 0 && pending == 0
		}
	}
	// Twelve ordinary batches teach the worker the table's usual time per row.
	for i := 0; i < 12; i++ {
		pgtest.Exec(t, b.conn, `UPDATE event SET seats = seats + 1 WHERE id = 1`)
		require.Eventually(t, fresh("id = 1"), 10*time.Second, 5*time.Millisecond)
	}

	// 30 rows at 100 ms each: 3 s of computing.
	pgtest.Exec(t, b.conn, `UPDATE slow SET s = 0.1`)
	before, throttledBefore := b.mat.Stats.Batches.Load(), b.mat.Stats.Throttled.Load()
	start := time.Now()
	pgtest.Exec(t, b.conn, `UPDATE venue SET materialized_at = NULL WHERE id > 2`)
	require.Eventually(t, fresh("true"), 60*time.Second, 20*time.Millisecond)
	took := time.Since(start)
	slow, throttled := b.mat.Stats.Batches.Load()-before, b.mat.Stats.Throttled.Load()-throttledBefore
	t.Logf("30 slow rows took %s in %d batches; %d throttled", took.Round(time.Millisecond), slow, throttled)
	require.Positive(t, slow)
	require.Equal(t, slow, throttled, "every slow batch must be followed by a pause")
	require.Greater(t, took, 5*time.Second, "3 s of slow batches, each followed by a pause as long")
	require.Empty(t, b.drift(t))
}
