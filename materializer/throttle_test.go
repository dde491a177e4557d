package materializer_test

import (
	"context"
	"os"
	"sync"
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

// slowVenues sets up 30 venues whose enrichment sleeps s seconds per row, set by the caller
// through table slow, and starts the daemon's loops.
func slowVenues(t *testing.T, cfg materializer.Config) (*bundle, func(where string) func() bool) {
	b := setupOn(t, pgtest.NewDB(t), cfg)
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
	t.Cleanup(func() { stop(); <-done })
	// The test's polling is no application work.
	poll := pgtest.Connect(t, b.dsn+"&application_name=matcol%20test")
	return b, func(where string) func() bool {
		return func() bool {
			var n int
			_ = poll.QueryRow(ctx, `SELECT count(*) FROM venue WHERE materialized_at IS NULL AND `+where).Scan(&n)
			var pending int
			_ = poll.QueryRow(ctx, `SELECT count(*) FROM matcol.pending`).Scan(&pending)
			return n == 0 && pending == 0
		}
	}
}

// Batches that grow slow on a database nobody else uses are no reason to back off: catch-up
// runs flat out.
func TestSlowBatchesAloneDoNotThrottle(t *testing.T) {
	b, fresh := slowVenues(t, materializer.Config{Workers: 1, BatchSize: 10, PollInterval: 20 * time.Millisecond, LatencyFactor: 4})
	for i := 0; i < 12; i++ {
		pgtest.Exec(t, b.conn, `UPDATE event SET seats = seats + 1 WHERE id = 1`)
		require.Eventually(t, fresh("id = 1"), 10*time.Second, 5*time.Millisecond)
	}
	// 30 rows at 100 ms each, far slower than the batches before.
	pgtest.Exec(t, b.conn, `UPDATE slow SET s = 0.1`)
	before := b.mat.Stats.Batches.Load()
	pgtest.Exec(t, b.conn, `UPDATE venue SET materialized_at = NULL WHERE id > 2`)
	require.Eventually(t, fresh("true"), 60*time.Second, 20*time.Millisecond)
	t.Logf("%d slow batches, %d throttled", b.mat.Stats.Batches.Load()-before, b.mat.Stats.Throttled.Load())
	require.Zero(t, b.mat.Stats.Throttled.Load(), "nothing but matcol ran: no batch may be followed by a pause")
	require.Empty(t, b.drift(t))
}

// An application transaction that waits for a lock a batch holds makes matcol back off.
func TestLockWaitsThrottle(t *testing.T) {
	ctx := context.Background()
	b, fresh := slowVenues(t, materializer.Config{Workers: 2, BatchSize: 10, PollInterval: 20 * time.Millisecond, LatencyFactor: 4})
	pgtest.Exec(t, b.conn, `UPDATE slow SET s = 0.2`) // a batch of 10 holds its rows 2 s
	pgtest.Exec(t, b.conn, `UPDATE venue SET materialized_at = NULL WHERE id > 2`)
	app := pgtest.Connect(t, b.dsn)
	require.Eventually(t, func() bool {
		var held int
		_ = b.conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'`).Scan(&held)
		return held > 0
	}, 10*time.Second, 10*time.Millisecond)
	// Every venue row the batches might hold, in one statement that waits for them.
	pgtest.Exec(t, app, `UPDATE venue SET seat_count = seat_count WHERE id > 2`)
	require.Eventually(t, func() bool { return b.mat.ThrottleLevel() > 0 || b.mat.Stats.Throttled.Load() > 0 },
		20*time.Second, 50*time.Millisecond, "an application waiting on matcol's locks must throttle it")
	pgtest.Exec(t, b.conn, `UPDATE slow SET s = 0`)
	require.Eventually(t, fresh("true"), 60*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool { return b.mat.ThrottleLevel() == 0 }, 20*time.Second, 100*time.Millisecond,
		"the throttle lifts once nobody waits")
}

// A database busy with the application's work, answering a trivial statement many times slower
// than when quiet, makes matcol back off.
func TestBusyDatabaseThrottles(t *testing.T) {
	ctx := context.Background()
	b, _ := slowVenues(t, materializer.Config{Workers: 1, BatchSize: 10, PollInterval: 20 * time.Millisecond, LatencyFactor: 4})
	time.Sleep(3 * time.Second) // the probe learns the quiet latency
	require.Zero(t, b.mat.ThrottleLevel())
	loadCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Many more CPU-bound backends than cores: a woken backend answers a trivial statement
	// quickly even on saturated cores, so the load must be deep, the more so when other tests
	// share the machine: 16 backends once left the throttle at 0 for 45 s beside the daemon
	// package's tests, and with 32 it took 12-53 s alone on the 2-core machine (the probe's
	// woken backend is scheduled ahead of the CPU-bound ones).
	for i := 0; i < 32; i++ {
		app := pgtest.Connect(t, b.dsn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for loadCtx.Err() == nil {
				_, _ = app.Exec(loadCtx, `SELECT count(*) FROM generate_series(1, 3000000)`)
			}
		}()
	}
	defer func() { stop(); wg.Wait() }()
	require.Eventually(t, func() bool { return b.mat.ThrottleLevel() > 0 }, 90*time.Second, 50*time.Millisecond,
		"an application saturating the server must throttle matcol")
}

// At the throttle's highest level work waits for the application, but never longer than
// max_delay: then it runs without pauses.
func TestYieldWaitsAtMostMaxDelay(t *testing.T) {
	b, fresh := slowVenues(t, materializer.Config{Workers: 2, BatchSize: 10, PollInterval: 20 * time.Millisecond,
		LatencyFactor: 4, MaxDelay: 3 * time.Second})
	b.mat.PinThrottle(8)
	time.Sleep(1500 * time.Millisecond) // the level is read four times a second
	start := time.Now()
	pgtest.Exec(t, b.conn, `UPDATE event SET seats = seats + 1 WHERE id = 1`)
	time.Sleep(2 * time.Second)
	require.False(t, fresh("id = 1")(), "at the highest level work waits")
	require.Eventually(t, fresh("id = 1"), 10*time.Second, 20*time.Millisecond, "past max_delay work runs")
	waited := time.Since(start)
	t.Logf("fresh after %s", waited)
	require.Greater(t, waited, 3*time.Second)
	require.Empty(t, b.drift(t))
}
