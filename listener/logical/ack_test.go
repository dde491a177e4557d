package logical_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/listener/logical"
	"github.com/matcol/matcol/plan"
)

// nopSink ignores wake-ups: these tests read matcol.pending themselves.
type nopSink struct{}

func (nopSink) TargetStale(string) {}
func (nopSink) QueueFilled()       {}
func (nopSink) Resync()            {}

func runListener(t *testing.T, b *bundle, p *plan.Plan, noAck bool) (stop func()) {
	t.Helper()
	l := &logical.Listener{DSN: b.dsn, Slot: b.slot, Publication: b.cfg.Invalidation.Publication,
		Plan: func() *plan.Plan { return p }, Sink: nopSink{}, Log: testLogger(t, "listener")}
	logical.SetNoAck(l, noAck)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(10 * time.Second):
				t.Fatal("listener did not stop")
			}
		})
	}
	// A failed assertion skips the test's own stop; the listener must not log past the test.
	t.Cleanup(stop)
	return stop
}

// commitChange runs stmt with a synchronous commit and returns a position at or past the end of
// that commit. Logical walsenders send only flushed WAL, so a slot can confirm this position,
// while the insert position may hold others' unflushed records (running xacts, async commits).
func commitChange(t *testing.T, conn *pgx.Conn, stmt string) pglogrepl.LSN {
	t.Helper()
	pgtest.Exec(t, conn, `SET synchronous_commit = on`)
	pgtest.Exec(t, conn, stmt)
	var s string
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT pg_current_wal_flush_lsn()::text`).Scan(&s))
	lsn, err := pglogrepl.ParseLSN(s)
	require.NoError(t, err)
	return lsn
}

// appliedPlan applies b's config and returns the plan it registered.
func appliedPlan(t *testing.T, b *bundle) *plan.Plan {
	t.Helper()
	ctx := context.Background()
	_, err := daemon.Apply(ctx, b.cfg, testLogger(t, "apply"))
	require.NoError(t, err)
	p, _, err := daemon.LoadPlan(ctx, b.conn)
	require.NoError(t, err)
	return p
}

// waitAcked waits up to 10 s for b's slot to confirm lsn.
func waitAcked(t *testing.T, b *bundle, lsn pglogrepl.LSN, msg string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		confirmed, _ := slotLag(t, b.conn, b.slot)
		if c, _ := pglogrepl.ParseLSN(confirmed); c >= lsn {
			return
		}
		require.True(t, time.Now().Before(deadline), msg)
		time.Sleep(20 * time.Millisecond)
	}
}

func pendingCount(t *testing.T, b *bundle, where string) int {
	var n int
	require.NoError(t, b.conn.QueryRow(context.Background(), `SELECT count(*) FROM matcol.pending WHERE `+where).Scan(&n))
	return n
}

func waitPending(t *testing.T, b *bundle, where string, atLeast int, within time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(within)
	n := 0
	for time.Now().Before(deadline) {
		if n = pendingCount(t, b, where); n >= atLeast {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%d pending entries (%s), want at least %d", n, where, atLeast)
	return 0
}

// A crash after the entries are applied and before the ack: the slot has not moved, so a new
// listener receives the same changes again (at least once), and the end state is fresh.
func TestCrashBetweenApplyAndAck(t *testing.T) {
	b := setup(t)
	p := appliedPlan(t, b)

	stop := runListener(t, b, p, true)
	waitSlot(t, b.conn, b.slot, 20*time.Second)
	waitPending(t, b, "vals IS NULL", len(p.Targets), 10*time.Second) // the first-start resync
	start, _ := slotLag(t, b.conn, b.slot)

	pgtest.Exec(t, b.conn, `UPDATE event SET seat_count = seat_count + 1 WHERE id <= 30`)
	pgtest.Exec(t, b.conn, `UPDATE cinema SET name = name || '!' WHERE id <= 3`)
	first := waitPending(t, b, "vals IS NOT NULL", 1, 10*time.Second)
	time.Sleep(2 * time.Second) // several status intervals: an acking listener would have moved the slot
	first = pendingCount(t, b, "vals IS NOT NULL")
	stop()
	after, _ := slotLag(t, b.conn, b.slot)
	require.Equal(t, start, after, "the slot advanced past unacked changes")

	stop = runListener(t, b, p, false)
	again := waitPending(t, b, "vals IS NOT NULL", 2*first, 20*time.Second)
	t.Logf("entries after the crash: %d, after redelivery: %d", first, again)
	// Once re-applied, the position is acked.
	deadline := time.Now().Add(10 * time.Second)
	for {
		now, _ := slotLag(t, b.conn, b.slot)
		a, _ := pglogrepl.ParseLSN(now)
		s, _ := pglogrepl.ParseLSN(start)
		if a > s {
			break
		}
		require.True(t, time.Now().Before(deadline), "slot did not advance after redelivery")
		time.Sleep(100 * time.Millisecond)
	}
	stop()

	r := startDaemon(t, b, "matcol")
	waitFresh(t, b.conn, r.d.Mat.Plan(), 60*time.Second)
}

// An idle slot advances while another database on the server writes WAL: confirmed_flush_lsn
// trails pg_current_wal_lsn() by less than 1 MB within 20 s.
func TestIdleSlotAdvances(t *testing.T) {
	b := setup(t)
	r := startDaemon(t, b, "matcol")
	waitFresh(t, b.conn, r.d.Mat.Plan(), 60*time.Second)

	other := pgtest.Connect(t, pgtest.NewDB(t))
	pgtest.Exec(t, other, `CREATE TABLE noise (id bigint, pad text)`)
	pgtest.Exec(t, other, `INSERT INTO noise SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g`)
	_, lag := slotLag(t, b.conn, b.slot)
	require.Greater(t, lag, int64(1<<20), "the other database wrote too little WAL to test anything")

	started := time.Now()
	deadline := started.Add(20 * time.Second)
	for {
		_, lag = slotLag(t, b.conn, b.slot)
		if lag < 1<<20 {
			break
		}
		require.True(t, time.Now().Before(deadline), "slot trails by %d bytes after 20s", lag)
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("idle slot caught up to within %d bytes in %s", lag, time.Since(started).Round(time.Millisecond))
	st := r.d.Logical.Stats()
	require.True(t, st.Leader)
}

// Switching back to trigger mode drops the inactive slot (it would retain WAL forever) and the
// publication, queueing a resync so that changes the slot still held are not lost.
func TestTriggerModeRetiresSlot(t *testing.T) {
	b := setup(t)
	r := startDaemon(t, b, "matcol")
	waitStreaming(t, r, 20*time.Second)
	r.stop(t)
	b.cfg.Invalidation.Mode = "trigger"
	before := pendingCount(t, b, "vals IS NULL") // the first-start resync may still be queued
	deadline := time.Now().Add(10 * time.Second)
	for {
		rep, err := daemon.Apply(context.Background(), b.cfg, testLogger(t, "apply"))
		require.NoError(t, err)
		if len(rep.Publication) == 2 {
			break
		}
		require.Empty(t, rep.Publication, "retired only in part")
		require.True(t, time.Now().Before(deadline), "slot not retired: %v", rep.Publication)
		time.Sleep(200 * time.Millisecond)
	}
	var n int
	require.NoError(t, b.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, b.slot).Scan(&n))
	require.Zero(t, n)
	require.Equal(t, len(r.d.Mat.Plan().Targets), pendingCount(t, b, "vals IS NULL")-before)
}

// Invariant 4: while the entries of a commit cannot be inserted (matcol.pending is locked), the
// slot does not move past that commit; once they land, it does.
func TestNoAckBeforeApply(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	p := appliedPlan(t, b)
	stop := runListener(t, b, p, false)
	defer stop()
	waitPending(t, b, "vals IS NULL", len(p.Targets), 20*time.Second) // streaming, first resync done
	var marked bool
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM matcol.setting WHERE name = $1)`,
		"logical.resync."+b.slot).Scan(&marked))
	require.False(t, marked, "the resync's record goes with the commit that queues it")
	time.Sleep(1500 * time.Millisecond)

	locker := pgtest.Connect(t, b.dsn)
	pgtest.Exec(t, locker, `BEGIN`)
	pgtest.Exec(t, locker, `LOCK TABLE matcol.pending IN ACCESS EXCLUSIVE MODE`)
	w := commitChange(t, b.conn, `UPDATE event SET seat_count = seat_count + 1 WHERE id = 42`)
	time.Sleep(3 * time.Second) // three status intervals
	confirmed, _ := slotLag(t, b.conn, b.slot)
	c, _ := pglogrepl.ParseLSN(confirmed)
	require.Less(t, uint64(c), uint64(w), "slot acked a commit whose entries are not applied")

	pgtest.Exec(t, locker, `COMMIT`)
	waitPending(t, b, "vals IS NOT NULL", 1, 10*time.Second)
	waitAcked(t, b, w, "slot did not advance after the entries landed")
}

// Invariant 4 across a crash: the listener's inserts commit durably even where the database's
// default is synchronous_commit = off, so the entries of an acked change survive an immediate
// restart. With the WAL writer asleep for 10 s, an asynchronous commit would be lost.
func TestAckedEntriesSurviveCrash(t *testing.T) {
	c := pgtest.Cluster(t)
	if c == nil {
		t.Skip("needs the throwaway cluster")
	}
	b := setup(t)
	ctx := context.Background()
	p := appliedPlan(t, b)
	pgtest.Exec(t, b.conn, `ALTER SYSTEM SET wal_writer_delay = '10s'`)
	pgtest.Exec(t, b.conn, `SELECT pg_reload_conf()`)
	t.Cleanup(func() {
		admin := pgtest.Connect(t, b.dsn)
		pgtest.Exec(t, admin, `ALTER SYSTEM RESET wal_writer_delay`)
		pgtest.Exec(t, admin, `SELECT pg_reload_conf()`)
	})
	var db string
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	pgtest.Exec(t, b.conn, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` SET synchronous_commit = off`)

	stop := runListener(t, b, p, false)
	waitPending(t, b, "vals IS NULL", len(p.Targets), 20*time.Second) // streaming, first resync done
	w := commitChange(t, b.conn, `UPDATE event SET seat_count = seat_count + 1 WHERE id = 42`)
	waitAcked(t, b, w, "slot did not ack the change")
	stop()
	require.NoError(t, c.Restart(ctx, "immediate"))
	b.conn = pgtest.Connect(t, b.dsn)
	require.Positive(t, pendingCount(t, b, "vals IS NOT NULL"), "the acked change's entries were lost in the crash")
}
