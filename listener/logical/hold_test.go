package logical_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/listener/logical"
	"github.com/matcol/matcol/plan"
)

// While the materializer yields to a saturated application, the walsender stops decoding: the
// slot goes inactive and nothing is queued. Decoding resumes when the application has room, when
// the oldest held change has waited MaxHold, or when the slot's retained WAL reaches a quarter of
// MaxRetainedWAL; the held changes are then queued with their commit times, so the materializer's
// max_delay counts from there.
func TestHoldStopsDecodingWhileYielding(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	p := appliedPlan(t, b)
	var yielding atomic.Bool
	l := &logical.Listener{DSN: b.dsn, Slot: b.slot, Publication: b.cfg.Invalidation.Publication,
		Plan: func() *plan.Plan { return p }, Sink: nopSink{}, Log: testLogger(t, "listener"),
		Yielding: yielding.Load, MaxHold: 8 * time.Second, MaxRetainedWAL: 64 << 20}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- l.Run(lctx) }()
	stopListener := sync.OnceFunc(func() {
		cancel()
		require.NoError(t, <-done)
	})
	defer stopListener()
	waitPending(t, b, "vals IS NULL", len(p.Targets), 20*time.Second) // streaming, first resync done

	// A steady writer: a hold needs a recent commit, and held changes to show.
	stop := make(chan struct{})
	stopWriter := sync.OnceFunc(func() { close(stop) })
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w := pgtest.Connect(t, b.dsn)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			_, _ = w.Exec(ctx, `UPDATE event SET seat_count = seat_count + 1 WHERE id = $1`, 1+i%1000)
		}
	}()
	defer func() { stopWriter(); wg.Wait() }()
	waitPending(t, b, "vals IS NOT NULL", 1, 10*time.Second)

	active := func() bool {
		var on bool
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, b.slot).Scan(&on))
		return on
	}
	waitFor := func(what string, within time.Duration, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !cond() {
			require.True(t, time.Since(start) < within, "%s: not within %s", what, within)
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(start)
	}
	lastID := func() int64 {
		var id int64
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM matcol.pending`).Scan(&id))
		return id
	}

	// Holds that end as soon as they begin: the walsender is replaced at once, twice.
	for i := 0; i < 2; i++ {
		yielding.Store(true)
		waitFor("short hold", 5*time.Second, func() bool { return l.Stats().Holding })
		yielding.Store(false)
		waitFor("resume after a short hold", 5*time.Second, func() bool { return !l.Stats().Holding && active() })
	}

	// The application has room again: decoding resumes at once.
	yielding.Store(true)
	waitFor("hold", 5*time.Second, func() bool { return l.Stats().Holding && !active() })
	before := lastID()
	time.Sleep(1500 * time.Millisecond)
	require.Equal(t, before, lastID(), "changes were queued during the hold")
	yielding.Store(false)
	resumed := time.Now()
	waitFor("resume", 5*time.Second, func() bool { return active() && lastID() > before })
	var oldest time.Time
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT min(enqueued_at) FROM matcol.pending WHERE id > $1`, before).Scan(&oldest))
	require.Less(t, oldest, resumed.Add(-time.Second), "held changes are queued with their commit times")

	// A saturated application that stays so: the hold ends at MaxHold.
	yielding.Store(true)
	waitFor("second hold", 5*time.Second, func() bool { return l.Stats().Holding })
	held := waitFor("resume at MaxHold", 12*time.Second, func() bool { return !l.Stats().Holding && active() })
	t.Logf("a hold with the application saturated lasted %s after it was seen", held.Round(time.Millisecond))
	require.Greater(t, held, 6*time.Second)

	// WAL piling up ends a hold early: 16 MB is a quarter of MaxRetainedWAL.
	waitFor("third hold", 10*time.Second, func() bool { return l.Stats().Holding && !active() })
	third := time.Now()
	pgtest.Exec(t, b.conn, `CREATE TABLE noise AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 100000) g`)
	waitFor("resume on retained WAL", 2*time.Second, active)
	require.Less(t, time.Since(third), 6*time.Second, "the hold lasted as if no WAL had piled up")
	require.GreaterOrEqual(t, l.Stats().Holds, 5)
	yielding.Store(false)

	// Nothing was lost across the holds: the slot's acked position passed no change whose entries
	// were not queued, so a daemon resuming from it ends exact.
	stopWriter()
	wg.Wait()
	stopListener()
	r := startDaemon(t, b, "matcol")
	waitFresh(t, b.conn, r.d.Mat.Plan(), 60*time.Second)
}

// A hold also ends when the slot's WAL outgrows max_wal_size (wal_status leaves "reserved"),
// however far the slot is from a quarter of MaxRetainedWAL.
func TestHoldEndsWhenWALOutgrowsMaxWALSize(t *testing.T) {
	if pgtest.Cluster(t) == nil {
		t.Skip("changes the server's max_wal_size: needs the throwaway cluster")
	}
	b := setup(t)
	ctx := context.Background()
	p := appliedPlan(t, b)
	pgtest.Exec(t, b.conn, `ALTER SYSTEM SET max_wal_size = '32MB'`)
	pgtest.Exec(t, b.conn, `SELECT pg_reload_conf()`)
	t.Cleanup(func() {
		admin := pgtest.Connect(t, b.dsn)
		pgtest.Exec(t, admin, `ALTER SYSTEM RESET max_wal_size`)
		pgtest.Exec(t, admin, `SELECT pg_reload_conf()`)
	})
	var yielding atomic.Bool
	l := &logical.Listener{DSN: b.dsn, Slot: b.slot, Publication: b.cfg.Invalidation.Publication,
		Plan: func() *plan.Plan { return p }, Sink: nopSink{}, Log: testLogger(t, "listener"),
		Yielding: yielding.Load, MaxHold: time.Minute, MaxRetainedWAL: 8 << 30}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- l.Run(lctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	waitPending(t, b, "vals IS NULL", len(p.Targets), 20*time.Second)

	// A commit to decode now and then: a hold needs a recent one.
	yielding.Store(true)
	deadline := time.Now().Add(10 * time.Second)
	for !l.Stats().Holding {
		require.True(t, time.Now().Before(deadline), "no hold")
		pgtest.Exec(t, b.conn, `UPDATE event SET seat_count = seat_count + 1 WHERE id = 1`)
		time.Sleep(50 * time.Millisecond)
	}
	pgtest.Exec(t, b.conn, `CREATE TABLE noise AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 300000) g`)
	pgtest.Exec(t, b.conn, `CHECKPOINT`)
	var status string
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1`, b.slot).Scan(&status))
	t.Logf("wal_status after the burst: %s", status)
	start := time.Now()
	for l.Stats().Holding {
		require.Less(t, time.Since(start), 5*time.Second, "the hold outlasted wal_status %s", status)
		time.Sleep(20 * time.Millisecond)
	}
	yielding.Store(false)
}
