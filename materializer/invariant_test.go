package materializer_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/listener/trigger"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/registry"
	"github.com/matcol/matcol/verify"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const schema = `
CREATE TABLE venue (id bigint PRIMARY KEY, seat_count bigint, materialized_at timestamptz);
CREATE TABLE event (id bigint PRIMARY KEY, venue_id bigint NOT NULL, seats int NOT NULL);
INSERT INTO venue (id) VALUES (1), (2);
INSERT INTO event VALUES (1, 1, 10), (2, 2, 20);
-- Blocks while the test holds advisory lock 4242: a window between a statement's snapshot and
-- its row locks.
CREATE FUNCTION test_gate() RETURNS boolean LANGUAGE sql VOLATILE AS
  'SELECT pg_advisory_lock_shared(4242) IS NOT NULL AND pg_advisory_unlock_shared(4242)';
`

const venueSQL = `SELECT v.id, sum(e.seats)::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id
WHERE v.id = ANY($1) GROUP BY v.id`

type bundle struct {
	dsn  string
	conn *pgx.Conn
	pool *pgxpool.Pool
	plan *plan.Plan
	mat  *materializer.Materializer
}

func setup(t *testing.T) *bundle {
	t.Helper()
	return setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1})
}

// setupOn loads the venue schema and its enrichment into the empty database dsn.
func setupOn(t *testing.T, dsn string, cfg materializer.Config) *bundle {
	t.Helper()
	ctx := context.Background()
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, schema)
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = registry.Install(ctx, tx)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	defs := []registry.Enrichment{{Name: "venue_seats", Target: tableName("public", "venue"), Columns: []string{"seat_count"},
		SQL: venueSQL, Self: new(true), DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}}}
	applyDefs(t, conn, defs)
	pool, err := dial.Pool(ctx, dsn, "test", dial.PoolOptions{MaxConns: 4})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	p, _, err := daemon.LoadPlan(ctx, pool)
	require.NoError(t, err)
	// Shown when the test fails (or with -v): a failure on a loaded CI machine explains itself.
	log := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: pgtest.LogWriter(t)})
	m := materializer.New(pool, p, cfg, log)
	return &bundle{dsn: dsn, conn: conn, pool: pool, plan: p, mat: m}
}

// catchUp drains and materializes until nothing is left, without the background loops.
func (b *bundle) catchUp(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < 50; i++ {
		res, err := b.mat.Drain(ctx)
		require.NoError(t, err)
		n, err := b.mat.MaterializeAll(ctx)
		require.NoError(t, err)
		var pending int
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM matcol.pending`).Scan(&pending))
		if res.Taken == 0 && n == 0 && pending == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("did not catch up")
}

// run runs the materializer until the test ends.
func (b *bundle) run(t *testing.T) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- b.mat.Run(ctx) }()
	// As in the daemon: once the drainer sleeps, writers' NOTIFY is what wakes it.
	l := &trigger.Listener{DSN: b.dsn, Sink: b.mat, Log: hclog.NewNullLogger()}
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done; <-done })
}

// left is what the materializer still has to do: queued entries plus venue's stale rows.
func (b *bundle) left(t *testing.T) int {
	t.Helper()
	var n int
	require.NoError(t, b.conn.QueryRow(context.Background(),
		`SELECT (SELECT count(*) FROM matcol.pending) + (SELECT count(*) FROM venue WHERE materialized_at IS NULL)`).Scan(&n))
	return n
}

// lazy is a failure message computed only when it is printed.
type lazy func() string

func (f lazy) String() string { return f() }

// state describes what is left and the materializer's counters, for a failure message.
func (b *bundle) state(t *testing.T) string {
	t.Helper()
	// Its own connection: a wait's condition may still be running on b.conn.
	conn := pgtest.Connect(t, b.dsn)
	var pend, whole, stale int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM matcol.pending),
		(SELECT count(*) FROM matcol.pending WHERE vals IS NULL), (SELECT count(*) FROM venue WHERE materialized_at IS NULL)`).Scan(&pend, &whole, &stale))
	s := &b.mat.Stats
	return fmt.Sprintf("queued %d (whole-table %d), stale rows %d; batches %d (errors %d), throttled %d, level %d, backlogs to a pass %d",
		pend, whole, stale, s.Batches.Load(), s.BatchErrors.Load(), s.Throttled.Load(), b.mat.ThrottleLevel(), s.BacklogsToPass.Load())
}

func (b *bundle) drift(t *testing.T) []verify.Drift {
	t.Helper()
	d, _, err := verify.Run(context.Background(), b.conn, b.plan, verify.Options{IncludeStale: true})
	require.NoError(t, err)
	return d
}

// interleave runs a claim whose snapshot is taken before a concurrent writer commits and whose row
// lock is taken after, then the write. form "two" is matcol's: claim, then a separate write
// statement. form "one" is the trap from DESIGN invariant 2: claim and write in one statement.
func interleave(t *testing.T, b *bundle, form string) {
	ctx := context.Background()
	gate := pgtest.Connect(t, b.dsn)
	pgtest.Exec(t, gate, `SELECT pg_advisory_lock(4242)`)

	target := b.plan.Targets[0]
	claim := `SELECT id::text FROM venue WHERE materialized_at IS NULL AND id = 1 AND test_gate() FOR UPDATE SKIP LOCKED`
	one := `WITH claim AS (SELECT id FROM venue WHERE materialized_at IS NULL AND id = 1 AND test_gate() FOR UPDATE SKIP LOCKED)
		UPDATE venue v SET seat_count = (SELECT sum(seats) FROM event e WHERE e.venue_id = v.id), materialized_at = now()
		FROM claim WHERE v.id = claim.id`

	worker := pgtest.Connect(t, b.dsn)
	done := make(chan error, 1)
	go func() {
		done <- pgx.BeginFunc(ctx, worker, func(tx pgx.Tx) error {
			if form == "one" {
				_, err := tx.Exec(ctx, one)
				return err
			}
			var key string
			if err := tx.QueryRow(ctx, claim).Scan(&key); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, plan.WriteSQL(target, target.Enrichments, true), "{"+key+"}")
			return err
		})
	}()
	// Wait until the worker's statement has its snapshot and sits at the gate.
	require.Eventually(t, func() bool {
		var waiting bool
		_ = gate.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)`).Scan(&waiting)
		return waiting
	}, 10*time.Second, 10*time.Millisecond)

	// A writer commits a change to venue 1's input; matcol applies the invalidation at once.
	writer := pgtest.Connect(t, b.dsn)
	pgtest.Exec(t, writer, `INSERT INTO event VALUES (3, 1, 5)`)
	_, err := b.mat.Drain(ctx)
	require.NoError(t, err)

	pgtest.Exec(t, gate, `SELECT pg_advisory_unlock(4242)`)
	require.NoError(t, <-done)
}

func TestInvariant2ClaimThenWrite(t *testing.T) {
	b := setup(t)
	b.mat.DirectToDrainer() // the invalidation lands by setting the row stale
	b.catchUp(t)
	require.Empty(t, b.drift(t))
	pgtest.Exec(t, b.conn, `UPDATE venue SET materialized_at = NULL WHERE id = 1`)

	interleave(t, b, "two")
	b.catchUp(t)
	require.Empty(t, b.drift(t), "matcol's claim-then-write must never stamp stale data as fresh")
	var seats int64
	require.NoError(t, b.conn.QueryRow(context.Background(), `SELECT seat_count FROM venue WHERE id = 1`).Scan(&seats))
	require.Equal(t, int64(15), seats)
}

// The same interleaving catches the one-statement form: this is what makes the test above able
// to fail.
func TestInvariant2OneStatementFormIsCaught(t *testing.T) {
	b := setup(t)
	b.mat.DirectToDrainer() // the invalidation lands by setting the row stale
	b.catchUp(t)
	pgtest.Exec(t, b.conn, `UPDATE venue SET materialized_at = NULL WHERE id = 1`)

	interleave(t, b, "one")
	b.catchUp(t)
	d := b.drift(t)
	require.Len(t, d, 1, "the one-statement form stamps venue 1 fresh with its old seat count")
	require.Equal(t, []string{"1"}, d[0].Key)
	require.Equal(t, "10", *d[0].Stored)
	require.Equal(t, "15", *d[0].Fresh)
}

// A change committed while a batch holds the row's lock lands after the batch: the row ends up
// stale again instead of being stamped with what the batch computed.
func TestInvalidationDuringBatchLandsAfterIt(t *testing.T) {
	b := setup(t)
	b.mat.DirectToDrainer() // the invalidation lands by setting the row stale
	b.catchUp(t)
	ctx := context.Background()
	target := b.plan.Targets[0]
	pgtest.Exec(t, b.conn, `UPDATE venue SET materialized_at = NULL WHERE id = 1`)

	worker := pgtest.Connect(t, b.dsn)
	tx, err := worker.Begin(ctx)
	require.NoError(t, err)
	var key string
	require.NoError(t, tx.QueryRow(ctx, plan.ClaimSQL(target), 10, target.ID).Scan(&key))
	_, err = tx.Exec(ctx, plan.WriteSQL(target, target.Enrichments, true), "{"+key+"}")
	require.NoError(t, err)

	// The write's snapshot is taken; now a writer commits and matcol tries to apply it.
	writer := pgtest.Connect(t, b.dsn)
	pgtest.Exec(t, writer, `INSERT INTO event VALUES (3, 1, 5)`)
	res, err := b.mat.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, res.Requeued, "the locked row's invalidation must be kept for later")
	require.NoError(t, tx.Commit(ctx))

	var stale bool
	_, err = b.mat.Drain(ctx)
	require.NoError(t, err)
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT materialized_at IS NULL FROM venue WHERE id = 1`).Scan(&stale))
	require.True(t, stale, "the row must be stale again after the batch committed")
	b.catchUp(t)
	require.Empty(t, b.drift(t))
}

// matcol's own writes never invalidate anything (invariant 3).
func TestOwnWritesDoNotInvalidate(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	// venue is also a source here: another enrichment reads it, so its triggers see matcol's writes.
	pgtest.Exec(t, b.conn, `CREATE TABLE summary (id int PRIMARY KEY, venues bigint, materialized_at timestamptz); INSERT INTO summary VALUES (1)`)
	defs := []registry.Enrichment{
		{Name: "venue_seats", Target: tableName("public", "venue"), Columns: []string{"seat_count"}, SQL: venueSQL, Self: new(true),
			DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}},
		{Name: "summary", Target: tableName("public", "summary"), Columns: []string{"venues"}, Self: new(true),
			SQL: `SELECT s.id, (SELECT count(*) FROM venue) AS venues FROM summary s WHERE s.id = ANY($1)`,
			DependsOn: []registry.Dependency{{Source: tableName("public", "venue"), Columns: []string{"id"},
				SQL: `SELECT 1 FROM (SELECT $1::bigint[]) x`}}},
	}
	applyDefs(t, b.conn, defs)
	p, _, err := daemon.LoadPlan(ctx, b.pool)
	require.NoError(t, err)
	b.plan = p
	b.mat.SetPlan(p)
	b.catchUp(t)

	pgtest.Exec(t, b.conn, `UPDATE venue SET materialized_at = NULL`)
	var before int
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM matcol.pending`).Scan(&before))
	n, err := b.mat.MaterializeAll(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	var after, stale int
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM matcol.pending`).Scan(&after))
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM venue WHERE materialized_at IS NULL`).Scan(&stale))
	require.Equal(t, before, after, "materializing venue must not queue invalidations")
	require.Zero(t, stale)

	// A real change to venue does reach the summary.
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id) VALUES (3)`)
	var summary int
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM matcol.pending p JOIN matcol.target t ON t.id = p.target_id
		WHERE t.table_name = 'summary'`).Scan(&summary))
	require.Equal(t, 1, summary)
}
