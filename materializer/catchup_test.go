package materializer_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/registry"
)

// A backlog is worked off without waiting for the safety-net sweep: every full batch is followed
// by another at once, however batch sizing moves meanwhile.
func TestBacklogNeedsNoSweep(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 2, SweepInterval: time.Hour,
		TargetBatchDuration: 10 * time.Second}) // every batch counts as quick, so batch sizing grows after each
	pgtest.Exec(t, b.conn, `CREATE INDEX ON venue (id) WHERE materialized_at IS NULL`)
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id) SELECT generate_series(3, 20002)`)
	pgtest.Exec(t, b.conn, `ANALYZE venue`)

	b.run(t)
	start := time.Now()
	require.Eventually(t, func() bool {
		var stale int
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM venue WHERE materialized_at IS NULL`).Scan(&stale))
		return stale == 0
	}, 30*time.Second, 20*time.Millisecond, "20,000 stale rows must be worked off without a sweep")
	t.Logf("20,000 rows in %s", time.Since(start).Round(time.Millisecond))
	require.Empty(t, b.drift(t))
}

// A poison row delays the other rows of its batch by at most one more batch: the rest of the
// backlog does not wait for the sweep.
func TestPoisonRowStaysLocal(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 2, SweepInterval: time.Hour, BatchSize: 100})
	pgtest.Exec(t, b.conn, `CREATE INDEX ON venue (id) WHERE materialized_at IS NULL`)
	pgtest.Exec(t, b.conn, `CREATE FUNCTION poison(id bigint) RETURNS bigint LANGUAGE plpgsql AS
		$$BEGIN IF id = 777 THEN RAISE EXCEPTION 'poison %', id; END IF; RETURN id; END$$`)
	applyDefs(t, b.conn, []registry.Enrichment{{Name: "venue_seats", Target: tableName("public", "venue"),
		Columns: []string{"seat_count"}, Self: new(true),
		SQL:       `SELECT v.id, poison(v.id) AS seat_count FROM venue v WHERE v.id = ANY($1)`,
		DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}}})
	reload(t, b)
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id) SELECT generate_series(3, 5002)`)
	b.run(t)
	require.Eventually(t, func() bool {
		var stale int
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM venue WHERE materialized_at IS NULL`).Scan(&stale))
		return stale == 1
	}, 20*time.Second, 20*time.Millisecond, "every row but the poison one must be fresh without a sweep")
	var failures int
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM matcol.failure`).Scan(&failures))
	require.Equal(t, 1, failures)
}

// A new daemon runs its batch statements once on a connection per worker before the first change
// arrives: a backend's first batch of a table loads the catalog and plans cold, and a small change
// right after a start waited for that.
func TestStartWarmsWorkerConnections(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 3, SweepInterval: time.Hour})
	b.run(t)
	require.Eventually(t, func() bool {
		conns := b.pool.AcquireAllIdle(ctx)
		defer func() {
			for _, c := range conns {
				c.Release()
			}
		}()
		warm := 0
		for _, c := range conns {
			var n int
			// The queue take; the pattern does not match this statement's own text.
			require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM pg_prepared_statements
				WHERE statement ~ 'DELETE FROM matcol[.]pending d WHERE'`).Scan(&n))
			if n > 0 {
				warm++
			}
		}
		return warm >= 3
	}, 20*time.Second, 50*time.Millisecond, "every worker's connection has the queue take prepared before any change")
	var pending int
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM matcol.pending`).Scan(&pending))
	require.Zero(t, pending)
}

// The warm-up never holds the whole pool: with more workers than connections the daemon still
// starts at once.
func TestWarmUpWithFewerConnectionsThanWorkers(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 6, SweepInterval: time.Hour}) // the pool has 4
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id) SELECT generate_series(3, 102)`)
	b.run(t)
	require.Eventually(t, func() bool {
		var stale int
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM venue WHERE materialized_at IS NULL`).Scan(&stale))
		return stale == 0
	}, 10*time.Second, 20*time.Millisecond)
}

// A daemon without work soon asks writers to wake it (matcol.wake_flag), so that a change after a
// pause is taken at once, not at the next poll of the queue.
func TestIdleDaemonSleepsSoon(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1, SweepInterval: time.Hour})
	b.run(t)
	start := time.Now()
	require.Eventually(t, func() bool {
		var flag int64
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT pg_sequence_last_value('matcol.wake_flag')`).Scan(&flag))
		return flag == 1
	}, 1500*time.Millisecond, 10*time.Millisecond, "an idle daemon must ask for NOTIFY well before two seconds")
	t.Logf("asleep after %s", time.Since(start).Round(time.Millisecond))
}

// A writer whose trigger saw the daemon awake sends no NOTIFY; when its transaction commits
// after the daemon fell asleep and rechecked, its change is still taken within about a second,
// not at the next sweep.
func TestWriterOpenWhileDaemonFallsAsleep(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1, SweepInterval: time.Hour})
	flag := func() (v int64) {
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT pg_sequence_last_value('matcol.wake_flag')`).Scan(&v))
		return v
	}
	require.Zero(t, flag())
	w := pgtest.Connect(t, b.dsn)
	pgtest.Exec(t, w, `BEGIN; INSERT INTO event VALUES (7, 1, 7)`)
	b.run(t)
	require.Eventually(t, func() bool { return flag() == 1 }, 5*time.Second, 10*time.Millisecond, "the daemon must fall asleep")
	time.Sleep(1500 * time.Millisecond) // past its rechecks
	pgtest.Exec(t, w, `COMMIT`)
	require.Eventually(t, func() bool {
		var n *int64
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT seat_count FROM venue WHERE id = 1`).Scan(&n))
		return n != nil && *n == 17 // with event 1's 10 seats
	}, 3*time.Second, 10*time.Millisecond, "the change committed after the daemon fell asleep")
}

// A queue batch knows from its own take whether entries wait beyond it: a burst of exactly one
// batch ends with that batch, where a worker sent after it would take nothing (2-40 ms of a cold
// backend at the end of every burst).
func TestTakeSeesTheQueueEnd(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1, SweepInterval: time.Hour, BatchSize: 50})
	id := b.plan.Targets[0].ID
	queued := func() (n int) {
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM matcol.pending`).Scan(&n))
		return n
	}
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id, seat_count, materialized_at) SELECT g, 0, now() FROM generate_series(10, 200) g`)
	pgtest.Exec(t, b.conn, `DELETE FROM matcol.pending`)

	pgtest.Exec(t, b.conn, `INSERT INTO event SELECT g, g, 1 FROM generate_series(10, 59) g`)
	require.Equal(t, 50, queued())
	n, more, err := b.mat.QueueBatchOf(ctx, id)
	require.NoError(t, err)
	require.Equal(t, 50, n)
	require.False(t, more, "the take found the queue's end: no second batch")
	require.Zero(t, queued())

	pgtest.Exec(t, b.conn, `INSERT INTO event SELECT g, g, 1 FROM generate_series(60, 110) g`)
	require.Equal(t, 51, queued())
	b.mat.SetBatchSize(id, 50) // the quick full batch above grew it
	n, more, err = b.mat.QueueBatchOf(ctx, id)
	require.NoError(t, err)
	require.Equal(t, 50, n)
	require.True(t, more, "one entry waits beyond the batch")
	require.Equal(t, 1, queued(), "the entry seen beyond the batch stays queued")
	n, more, err = b.mat.QueueBatchOf(ctx, id)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.False(t, more)
	var fresh int
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM venue
		WHERE id BETWEEN 10 AND 110 AND seat_count = 1 AND materialized_at IS NOT NULL`).Scan(&fresh))
	require.Equal(t, 101, fresh)
}

// The drainer's look tells a table with more than a batch of keys queued from one with a batch or
// less, so that a burst gets its second worker at once, not after the first batch's take.
func TestDrainerSeesABacklogOfKeys(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 2, SweepInterval: time.Hour, BatchSize: 50})
	id := b.plan.Targets[0].ID
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id, seat_count, materialized_at) SELECT g, 0, now() FROM generate_series(10, 200) g`)
	pgtest.Exec(t, b.conn, `DELETE FROM matcol.pending`)

	pgtest.Exec(t, b.conn, `INSERT INTO event SELECT g, g, 1 FROM generate_series(10, 59) g`)
	n, err := b.mat.NoteDirect(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.False(t, b.mat.Backlog(id), "exactly one batch waits")

	pgtest.Exec(t, b.conn, `INSERT INTO event SELECT g, g, 1 FROM generate_series(60, 60) g`)
	_, err = b.mat.NoteDirect(ctx)
	require.NoError(t, err)
	require.True(t, b.mat.Backlog(id), "one entry waits beyond a batch")

	// The size it compares with is the table's own, as batches adapted it.
	b.mat.SetBatchSize(id, 51)
	_, more, err := b.mat.QueueBatchOf(ctx, id)
	require.NoError(t, err)
	require.False(t, more)
	pgtest.Exec(t, b.conn, `INSERT INTO event SELECT g, g, 1 FROM generate_series(61, 111) g`)
	_, err = b.mat.NoteDirect(ctx)
	require.NoError(t, err)
	require.False(t, b.mat.Backlog(id), "51 entries are one batch of 51")
	b.mat.SetBatchSize(id, 50)
	_, err = b.mat.NoteDirect(ctx)
	require.NoError(t, err)
	require.True(t, b.mat.Backlog(id))

	// Under a big batch size, two shares of a take are a backlog: a second worker takes one.
	b.mat.SetBatchSize(id, 1000)
	_, more, err = b.mat.QueueBatchOf(ctx, id)
	require.NoError(t, err)
	require.False(t, more)
	pgtest.Exec(t, b.conn, `INSERT INTO event SELECT g, g, 1 FROM generate_series(112, 112+2*`+strconv.Itoa(plan.SplitMin)+`-1) g`)
	_, err = b.mat.NoteDirect(ctx)
	require.NoError(t, err)
	require.False(t, b.mat.Backlog(id), "two shares are left to one batch")
	pgtest.Exec(t, b.conn, `INSERT INTO event SELECT 113+2*`+strconv.Itoa(plan.SplitMin)+`, 1, 1`)
	_, err = b.mat.NoteDirect(ctx)
	require.NoError(t, err)
	require.True(t, b.mat.Backlog(id))
}

// The last entries of a burst are shared among the table's workers: a take of fewer than a batch
// per worker takes its share and leaves the rest to another, where one batch used to take them
// all while the other worker found nothing.
func TestLastEntriesAreShared(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 2, TableWorkers: 2, SweepInterval: time.Hour, BatchSize: 5000})
	id := b.plan.Targets[0].ID
	split := plan.SplitMin
	events := func(from, n int) {
		pgtest.Exec(t, b.conn, fmt.Sprintf(`INSERT INTO event SELECT g, g, 1 FROM generate_series(%d, %d) g`, from, from+n-1))
	}
	take := func(size, want int, wantMore bool, msg string) {
		t.Helper()
		b.mat.SetBatchSize(id, size) // quick batches grow it
		n, more, err := b.mat.QueueBatchOf(ctx, id)
		require.NoError(t, err)
		require.Equal(t, want, n, msg)
		require.Equal(t, wantMore, more, msg)
	}
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id, seat_count, materialized_at) SELECT g, 0, now() FROM generate_series(10, 30000) g`)
	pgtest.Exec(t, b.conn, `DELETE FROM matcol.pending`)

	events(10, 6*split)
	take(5000, 3*split, true, "half of the entries, for two workers")
	// Alone, the next take shares again, until two shares of SplitMin are left: a worker that
	// runs beside it would have counted the first batch's entries in its whole.
	take(5000, 3*split/2, true, "half again")
	take(5000, 3*split/2, false, "up to two shares go to one batch")

	events(10000, 6*split)
	take(2*split, 2*split, true, "a share of a full batch or more takes a batch")
	pgtest.Exec(t, b.conn, `DELETE FROM matcol.pending`)

	// Side by side, the second take counts the entries the first took but has not committed, and
	// takes the other half.
	events(20000, 4*split)
	sql := plan.QueueTakeSQL(b.plan.Targets[0])
	locked := func(tx pgx.Tx, done int) (n int) {
		rows, err := tx.Query(ctx, sql, id, 5000, 2, done)
		require.NoError(t, err)
		for rows.Next() {
			vals, err := rows.Values()
			require.NoError(t, err)
			if vals[0] == "l" {
				n++
			}
		}
		require.NoError(t, rows.Err())
		return n
	}
	first, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer first.Rollback(ctx) //nolint:errcheck // nothing to keep
	second, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer second.Rollback(ctx) //nolint:errcheck // nothing to keep
	require.Equal(t, 2*split, locked(first, 0))
	require.Equal(t, 2*split-1, locked(second, 0), "the other half, but for the entry the first holds as its look beyond")
	require.NoError(t, second.Rollback(ctx))

	// When the first batch has likely computed what it took, its worker is about to come back:
	// the next take leaves it half of the rest. The estimate comes from the table's batches in
	// flight and its last batch's speed.
	b.mat.SetFlight(id, 2*split, time.Second, 10000)
	take(5000, split, true, "half of the rest, the other batch about to end")
	require.NoError(t, first.Rollback(ctx))
}

// A take that finds the queue's end hands the table's keys back to the drainer's look, unless
// another batch of the table runs: that batch's look beyond its take holds one entry, which it
// takes itself once it commits, rather than leaving it for the drainer.
func TestQueueEndWhileAnotherBatchRuns(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 2, SweepInterval: time.Hour, BatchSize: 50})
	id := b.plan.Targets[0].ID
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id, seat_count, materialized_at) SELECT g, 0, now() FROM generate_series(10, 200) g`)
	pgtest.Exec(t, b.conn, `DELETE FROM matcol.pending`)
	for _, running := range []int{2, 0} {
		pgtest.Exec(t, b.conn, fmt.Sprintf(`INSERT INTO event SELECT g, g, 1 FROM generate_series(%d, %d) g`, 10+running*10, 19+running*10))
		_, err := b.mat.NoteDirect(ctx)
		require.NoError(t, err)
		require.True(t, b.mat.Direct(id))
		b.mat.SetRunning(id, running)
		_, more, err := b.mat.QueueBatchOf(ctx, id)
		require.NoError(t, err)
		require.False(t, more)
		require.Equal(t, running > 1, b.mat.Direct(id), "another batch running: %v", running > 1)
	}
}

// One table's backlog runs on one worker for its first RampAfter, then on at most TableWorkers at
// once, whatever the number of workers: on two cores, a burst of one table ran slower spread over
// four batches at once than on one backend (docs/benchmarks.md).
func TestTableWorkersCapOneTable(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cap      int
		ramp     time.Duration
		min, max int64
		stale    bool // the rows are stale, not queued: claims of stale rows, not queue batches
	}{
		{"one table worker", 1, time.Nanosecond, 1, 1, false},
		{"before the ramp", 0, time.Hour, 1, 1, false},
		{"after the ramp", 0, time.Nanosecond, 2, 3, false},
		{"after the ramp, capped", 2, time.Nanosecond, 2, 2, false},
		{"stale rows, one table worker", 1, time.Nanosecond, 1, 1, true},
		{"stale rows, after the ramp, capped", 2, time.Nanosecond, 2, 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			b := timedVenue(t, tc.cap, tc.ramp)
			if tc.stale {
				pgtest.Exec(t, b.conn, `INSERT INTO venue (id) SELECT generate_series(3, 1202); DELETE FROM matcol.pending; ANALYZE venue`)
			} else {
				pgtest.Exec(t, b.conn, `INSERT INTO venue (id, seat_count, materialized_at) SELECT g, 0, now() FROM generate_series(3, 1202) g;
					DELETE FROM matcol.pending;
					INSERT INTO event SELECT g, g, 1 FROM generate_series(3, 1202) g`) // a queued key each
			}
			b.run(t)
			waitTimedBatches(t, b)
			// The most batches running at once is reached as one of them starts.
			var most int64
			require.NoError(t, b.conn.QueryRow(ctx, `WITH w AS (SELECT DISTINCT started, ended FROM venue WHERE id > 2)
				SELECT max((SELECT count(*) FROM w o WHERE o.started <= w.started AND w.started < o.ended)) FROM w`).Scan(&most))
			require.GreaterOrEqual(t, most, tc.min, "batches of the table at once")
			require.LessOrEqual(t, most, tc.max, "batches of the table at once")
		})
	}
}

// A claim of stale rows that gets all it asked for brings a second worker while its batch
// computes, not after it commits: the first two batches of a backlog overlap.
func TestFullClaimBringsASecondWorker(t *testing.T) {
	ctx := context.Background()
	b := timedVenue(t, 2, 0)
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id) SELECT generate_series(3, 202); DELETE FROM matcol.pending; ANALYZE venue`)
	b.run(t)
	waitTimedBatches(t, b)
	var overlap bool
	require.NoError(t, b.conn.QueryRow(ctx, `WITH w AS (SELECT DISTINCT started, ended FROM venue WHERE id > 2 ORDER BY started LIMIT 2)
		SELECT max(started) < min(ended) FROM w`).Scan(&overlap))
	require.True(t, overlap, "the second batch started before the first ended")
}

// Queued keys that name most of a table's rows are answered by one pass over every row, which
// reads the rows in key order with one statement per chunk; fewer keep their queue batches.
func TestBigKeyBacklogBecomesAPass(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 2, SweepInterval: time.Hour, BatchSize: 50,
		PassShare: 0.5, PassMin: 100})
	id := b.plan.Targets[0].ID
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id, seat_count, materialized_at) SELECT g, 0, now() FROM generate_series(3, 1002) g;
		ANALYZE venue`)
	count := func(sql string) (n int) {
		require.NoError(t, b.conn.QueryRow(ctx, sql).Scan(&n))
		return n
	}

	// 300 of 1,002 rows: below the share, the keys stay queued.
	pgtest.Exec(t, b.conn, `DELETE FROM matcol.pending; INSERT INTO event SELECT g, g, 2 FROM generate_series(3, 302) g`)
	switched, err := b.mat.KeysToPassOf(ctx, id)
	require.NoError(t, err)
	require.False(t, switched)
	require.Equal(t, 300, count(`SELECT count(*) FROM matcol.pending WHERE vals IS NOT NULL`))

	// 700: a pass answers them, and the keys' entries go with the switch, but for those a running
	// batch has taken: they stay its own, and the switch does not wait for that batch.
	pgtest.Exec(t, b.conn, `INSERT INTO event SELECT g, g, 3 FROM generate_series(303, 702) g`)
	batch, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer batch.Rollback(ctx) //nolint:errcheck // rolled back below; this one is for a failing test
	_, err = batch.Exec(ctx, `SELECT FROM matcol.pending WHERE vals IS NOT NULL ORDER BY id LIMIT 50 FOR UPDATE`)
	require.NoError(t, err)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	switched, err = b.mat.KeysToPassOf(wctx, id)
	cancel()
	require.NoError(t, err)
	require.True(t, switched)
	require.NoError(t, batch.Rollback(ctx))
	require.True(t, b.mat.Passing(id))
	require.Equal(t, 50, count(`SELECT count(*) FROM matcol.pending WHERE vals IS NOT NULL`))
	require.Equal(t, 1, count(`SELECT count(*) FROM matcol.pending WHERE vals IS NULL`))
	// A change after the switch queues its key as usual.
	pgtest.Exec(t, b.conn, `UPDATE event SET seats = 9 WHERE id = 5`)

	b.run(t)
	require.Eventually(t, func() bool {
		return count(`SELECT count(*) FROM matcol.pending`) == 0 && count(`SELECT count(*) FROM venue WHERE materialized_at IS NULL`) == 0 &&
			!b.mat.Passing(id)
	}, 30*time.Second, 20*time.Millisecond)
	require.Empty(t, b.drift(t))
	require.Equal(t, 700, count(`SELECT count(*) FROM venue WHERE id > 2 AND seat_count > 0`))
}

// A daemon whose queue fills with keys for most of a table switches to a pass by itself, and ends
// with every row exact.
func TestRunningDaemonSwitchesBigBacklogToAPass(t *testing.T) {
	// One worker: a second one's queue batches could answer every key while the first weighs
	// them, on a loaded machine. Batch sizes grow; the share leaves room for the table's growth.
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1, SweepInterval: time.Hour, BatchSize: 20,
		TargetBatchDuration: 10 * time.Second, PassShare: 0.3, PassMin: 100})
	id := b.plan.Targets[0].ID
	// Fresh rows: the self trigger would make new rows stale, and their claim batches would grow
	// the batch size before the keys arrive.
	pgtest.Exec(t, b.conn, `ALTER TABLE venue DISABLE TRIGGER USER;
		INSERT INTO venue (id, seat_count, materialized_at) SELECT g, 0, now() FROM generate_series(3, 2002) g;
		ALTER TABLE venue ENABLE TRIGGER USER; ANALYZE venue; DELETE FROM matcol.pending`)
	caughtUp := func() {
		t.Helper()
		require.Eventually(t, func() bool { return b.left(t) == 0 && !b.mat.Passing(id) }, 30*time.Second, 5*time.Millisecond,
			lazy(func() string { return fmt.Sprintf("passing %v; %s", b.mat.Passing(id), b.state(t)) }))
	}
	b.run(t)
	pgtest.Exec(t, b.conn, `INSERT INTO event SELECT g, g, 4 FROM generate_series(3, 2002) g`)
	caughtUp()
	require.Equal(t, int64(1), b.mat.Stats.BacklogsToPass.Load(), "2,000 queued keys of 2,002 rows must go to a pass")
	require.Empty(t, b.drift(t))

	// A bulk change a second after the first one's pass is a backlog of its own, weighed at once
	// rather than ten seconds after the first was.
	time.Sleep(1100 * time.Millisecond)
	b.mat.SetBatchSize(id, 20) // grown, one batch could answer the keys before the check counts them
	pgtest.Exec(t, b.conn, `INSERT INTO event SELECT g + 2000, g, 1 FROM generate_series(3, 2002) g`)
	caughtUp()
	require.Equal(t, int64(2), b.mat.Stats.BacklogsToPass.Load(), "the second change's keys must go to a pass too")
	require.Empty(t, b.drift(t))
}

// A backlog of queued keys is weighed when it begins, then every ten seconds while it lasts, and
// never twice in a second: a new backlog seconds after one that queue batches answered is weighed
// at once.
func TestBacklogChecks(t *testing.T) {
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1, SweepInterval: time.Hour})
	id := b.plan.Targets[0].ID
	b.mat.SetBacklog(id, true)
	require.True(t, b.mat.CheckBacklogOf(id), "a new backlog")
	require.False(t, b.mat.CheckBacklogOf(id), "again at once")
	b.mat.AgeBacklog(id, 2*time.Second)
	require.False(t, b.mat.CheckBacklogOf(id), "the same backlog two seconds later")
	b.mat.SetBacklog(id, false)
	b.mat.SetBacklog(id, true)
	require.True(t, b.mat.CheckBacklogOf(id), "a new backlog two seconds after the last check")
	b.mat.AgeBacklog(id, 11*time.Second)
	require.True(t, b.mat.CheckBacklogOf(id), "the same backlog eleven seconds later")
}

// An idle daemon, caught up with its drainer asleep, probes the database for its throttle every
// few seconds instead of four times a second; work brings the probes back at once.
func TestIdleDaemonProbesRarely(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1, SweepInterval: time.Hour})
	b.run(t)
	require.Eventually(t, func() bool {
		var flag int64
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT pg_sequence_last_value('matcol.wake_flag')`).Scan(&flag))
		return flag == 1
	}, 5*time.Second, 10*time.Millisecond, "the daemon must fall asleep")
	time.Sleep(300 * time.Millisecond)
	before := b.mat.Stats.HarmProbes.Load()
	time.Sleep(3 * time.Second)
	idle := b.mat.Stats.HarmProbes.Load() - before
	require.LessOrEqual(t, idle, int64(1), "harm probes in 3 idle seconds")

	// A stale row is work: the probes come back while it is done.
	pgtest.Exec(t, b.conn, `CREATE FUNCTION slow_down() RETURNS boolean LANGUAGE sql AS 'SELECT pg_sleep(1.5) IS NOT NULL'`)
	applyDefs(t, b.conn, []registry.Enrichment{{Name: "venue_seats", Target: tableName("public", "venue"),
		Columns: []string{"seat_count"}, Self: new(true),
		SQL:       `SELECT v.id, (SELECT sum(seats) FROM event e WHERE e.venue_id = v.id)::bigint AS seat_count FROM venue v WHERE v.id = ANY($1) AND slow_down()`,
		DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}}})
	reload(t, b)
	before = b.mat.Stats.HarmProbes.Load()
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id) VALUES (10)`)
	b.mat.QueueFilled()
	require.Eventually(t, func() bool { return b.mat.Stats.HarmProbes.Load()-before >= 3 }, 3*time.Second, 10*time.Millisecond,
		"a batch in flight brings the probes back")
}

// A table without a row estimate (never analyzed) keeps its queue batches: a share of an unknown
// size could send a huge table to a pass for a few thousand keys.
func TestBacklogOfUnanalyzedTableStaysQueued(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1, SweepInterval: time.Hour, PassShare: 0.5, PassMin: 1})
	id := b.plan.Targets[0].ID
	pgtest.Exec(t, b.conn, `ALTER TABLE venue SET (autovacuum_enabled = off)`)
	var reltuples float64
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = 'venue'::regclass`).Scan(&reltuples))
	require.LessOrEqual(t, reltuples, 0.0, "venue must not have been analyzed")
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id, seat_count, materialized_at) SELECT g, 0, now() FROM generate_series(3, 102) g;
		DELETE FROM matcol.pending; INSERT INTO event SELECT g, g, 2 FROM generate_series(3, 102) g`)
	switched, err := b.mat.KeysToPassOf(ctx, id)
	require.NoError(t, err)
	require.False(t, switched)
}

// An enrichment whose statement costs the same whatever its rows (here a 200 ms sleep, as a scan
// of a whole source would) keeps batches of many rows: one-row batches would take a minute for
// what takes two seconds.
func TestFixedCostEnrichmentKeepsItsBatchSize(t *testing.T) {
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1, SweepInterval: time.Hour, BatchSize: 40,
		TargetBatchDuration: 100 * time.Millisecond})
	pgtest.Exec(t, b.conn, `CREATE INDEX ON venue (id) WHERE materialized_at IS NULL`)
	applyDefs(t, b.conn, []registry.Enrichment{{Name: "venue_seats", Target: tableName("public", "venue"),
		Columns: []string{"seat_count"}, Self: new(true),
		SQL: `WITH s AS MATERIALIZED (SELECT pg_sleep(0.2))
			SELECT v.id, 0::bigint AS seat_count FROM venue v CROSS JOIN s WHERE v.id = ANY($1)`,
		DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}}})
	reload(t, b)
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id) SELECT generate_series(3, 302); DELETE FROM matcol.pending; ANALYZE venue`)
	b.run(t)
	require.Eventually(t, func() bool { return b.left(t) == 0 }, 20*time.Second, 20*time.Millisecond,
		lazy(func() string { return b.state(t) }))
	require.LessOrEqual(t, b.mat.Stats.Batches.Load(), int64(30), "batches for 302 rows at 40 a batch")
}
