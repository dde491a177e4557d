package daemon_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/demo"
	"github.com/matcol/matcol/internal/pgtest"
)

// Invariants 1-3 under load: writers hammer every source with inserts, key-changing updates and
// deletes while the daemon runs; once they stop, every row must equal a fresh computation.
func TestConcurrentWritersEndFresh(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, demo.Schema)
	require.NoError(t, demo.Seed(ctx, conn, 1))
	cfg := loadConfig(t, dsn, demo.Config)
	cfg.Materializer.Workers = 3
	cfg.Materializer.BatchSize = 20 // small batches: more interleavings
	d := startDaemon(t, cfg)

	wctx, stop := context.WithTimeout(ctx, 6*time.Second)
	defer stop()
	var wg sync.WaitGroup
	var mu sync.Mutex
	writes := 0
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			wc := pgtest.Connect(t, dsn)
			r := rand.New(rand.NewPCG(seed, 99))
			for wctx.Err() == nil {
				// Several changes per transaction, so statements see multi-row transition tables.
				tx, err := wc.Begin(wctx)
				if err != nil {
					return
				}
				ok := true
				for j := 0; j < 1+r.IntN(4) && ok; j++ {
					ok = demo.Write(wctx, tx.Conn(), 1, r) == nil
				}
				if ok && tx.Commit(wctx) == nil {
					mu.Lock()
					writes++
					mu.Unlock()
				} else {
					_ = tx.Rollback(context.Background())
				}
			}
		}(uint64(i))
	}
	// Bulk statements too: a multi-row key change and a mass delete.
	pgtest.Exec(t, conn, `UPDATE event SET venue_id = 1 + (venue_id % 50) WHERE id % 97 = 0`)
	pgtest.Exec(t, conn, `DELETE FROM seat_state WHERE change_id % 89 = 0 AND seat_id < 10`)
	wg.Wait()
	require.Greater(t, writes, 100, "the writers should have committed a real load")
	waitFresh(t, conn, d, 30*time.Second)
	t.Logf("%d write transactions, %d rows materialized", writes, d.Mat.Stats.RowsMaterialized.Load())
}

// An idle daemon makes no further writes.
func TestIdleDaemonWritesNothing(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, demo.Schema)
	require.NoError(t, demo.Seed(ctx, conn, 1))
	cfg := loadConfig(t, dsn, demo.Config)
	cfg.Materializer.SweepInterval = 300 * time.Millisecond
	d := startDaemon(t, cfg)
	waitFresh(t, conn, d, 30*time.Second)
	stamp := func() (s string) {
		require.NoError(t, conn.QueryRow(ctx, `SELECT (SELECT max(materialized_at) FROM venue)::text || ' '
			|| (SELECT max(materialized_at) FROM event_seat_state_change)::text`).Scan(&s))
		return s
	}
	before, batches := stamp(), d.Mat.Stats.Batches.Load()
	time.Sleep(2 * time.Second) // several sweeps
	require.Equal(t, before, stamp(), "no row may be re-stamped while nothing changes")
	require.Equal(t, batches, d.Mat.Stats.Batches.Load(), "no batch may write while nothing changes")
}

// The daemon survives a PostgreSQL crash and restart, and catches up on what was written after.
func TestSurvivesPostgresRestart(t *testing.T) {
	cl := pgtest.Cluster(t)
	if cl == nil {
		t.Skip("needs the test cluster to restart PostgreSQL")
	}
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, demo.Schema)
	require.NoError(t, demo.Seed(ctx, conn, 1))
	d := startDaemon(t, loadConfig(t, dsn, demo.Config))
	waitFresh(t, conn, d, 30*time.Second)

	require.NoError(t, cl.Restart(ctx, "immediate"))
	conn2 := pgtest.Connect(t, dsn)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200; i++ {
		require.NoError(t, demo.Write(ctx, conn2, 1, r))
	}
	waitFresh(t, conn2, d, 60*time.Second)
}
