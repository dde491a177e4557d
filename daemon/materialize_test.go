package daemon_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/verify"
)

const orderSchema = `
CREATE TABLE orders (id bigint PRIMARY KEY, total bigint, lines int, note text, materialized_at timestamptz);
CREATE INDEX ON orders (id) WHERE materialized_at IS NULL;
CREATE TABLE line (id bigserial PRIMARY KEY, order_id bigint NOT NULL, cents bigint NOT NULL);
CREATE INDEX ON line (order_id);
INSERT INTO orders (id) SELECT generate_series(1, 20000);
INSERT INTO line (order_id, cents) SELECT 1 + g % 20000, g FROM generate_series(1, 60000) g;
`

const orderConfig = `
enrichments:
  - name: order_total
    table: public.orders
    columns: [total]
    sql: SELECT o.id, (SELECT sum(cents) FROM line l WHERE l.order_id = o.id)::bigint AS total FROM orders o WHERE o.id = ANY($1)
    depends_on: [{table: public.line, columns: [order_id]}]
`

const orderConfigWithLines = orderConfig + `
  - name: order_lines
    table: public.orders
    columns: [lines]
    sql: SELECT o.id, (SELECT count(*) FROM line l WHERE l.order_id = o.id)::int AS lines FROM orders o WHERE o.id = ANY($1)
    depends_on: [{table: public.line, columns: [order_id]}]
`

func loadPlan(t *testing.T, dsn string) *plan.Plan {
	t.Helper()
	conn := pgtest.Connect(t, dsn)
	p, _, err := daemon.LoadPlan(context.Background(), conn)
	require.NoError(t, err)
	return p
}

// A new column is filled by its enrichment alone: the table's other enrichments do not run,
// materialized_at stays, and a killed backfill resumes from its checkpoint.
func TestBackfillOneColumnResumes(t *testing.T) { testBackfillResumes(t, 1) }

// With --jobs the checkpoint is the prefix of committed chunks: a killed run resumes from it and
// still counts every row once.
func TestParallelBackfillResumes(t *testing.T) { testBackfillResumes(t, 3) }

func testBackfillResumes(t *testing.T, jobs int) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, orderSchema)
	cfg := loadConfig(t, dsn, orderConfig)
	d, stop := startStoppableDaemon(t, cfg)
	waitFresh(t, conn, d, 60*time.Second)
	// A running daemon adopts a backfill whose process died; stopped, it cannot race the rerun below.
	stop()

	// The new column arrives; the registered order_total values are marked so a rerun would show.
	pgtest.Exec(t, conn, `ALTER TABLE orders DISABLE TRIGGER USER; UPDATE orders SET total = -7; ALTER TABLE orders ENABLE TRIGGER USER`)
	var stamp string
	require.NoError(t, conn.QueryRow(ctx, `SELECT max(materialized_at)::text FROM orders`).Scan(&stamp))
	_, err := daemon.Apply(ctx, loadConfig(t, dsn, orderConfigWithLines), hclog.NewNullLogger())
	require.NoError(t, err)
	p := loadPlan(t, dsn)
	var spec materializer.BackfillSpec
	for _, e := range p.Targets[0].Enrichments {
		if e.Name == "order_lines" {
			spec = materializer.BackfillSpec{Target: p.Targets[0], Enrichments: []*plan.Enrichment{e}, BatchSize: 500}
		}
	}
	require.NotNil(t, spec.Target)
	writers := map[uint32]bool{}
	var mu sync.Mutex
	spec.Jobs = jobs
	spec.Connect = func(ctx context.Context) (*pgx.Conn, error) {
		c, err := dial.Connect(ctx, dsn, "backfill")
		if err == nil {
			mu.Lock()
			writers[c.PgConn().PID()] = true
			mu.Unlock()
		}
		return c, err
	}

	// First run: stop after a few batches, as a kill would.
	bconn, err := dial.Connect(ctx, dsn, "backfill")
	require.NoError(t, err)
	b, err := materializer.OpenBackfill(ctx, bconn, spec, false, hclog.NewNullLogger())
	require.NoError(t, err)
	require.False(t, b.Resumed())

	// While the first process holds it, nobody else may run it.
	other, err := dial.Connect(ctx, dsn, "backfill")
	require.NoError(t, err)
	defer other.Close(ctx)
	_, err = materializer.OpenBackfill(ctx, other, spec, false, hclog.NewNullLogger())
	require.ErrorIs(t, err, materializer.ErrBackfillRunning)
	require.Contains(t, err.Error(), fmt.Sprintf("pid %d", bconn.PgConn().PID()), "the error names the holder")

	rctx, cancel := context.WithCancel(ctx)
	batches := 0
	err = b.Run(rctx, func(p materializer.BackfillProgress) {
		if batches++; batches == 4 {
			cancel()
		}
	})
	require.ErrorIs(t, err, context.Canceled)
	var done int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT rows_done FROM matcol.backfill WHERE id = $1`, b.ID).Scan(&done))
	require.Positive(t, done)
	require.Less(t, done, int64(20000))

	require.NoError(t, bconn.Close(ctx))

	b2, err := materializer.OpenBackfill(ctx, other, spec, false, hclog.NewNullLogger())
	require.NoError(t, err)
	require.True(t, b2.Resumed())
	require.Equal(t, b.ID, b2.ID)
	var final materializer.BackfillProgress
	require.NoError(t, b2.Run(ctx, func(p materializer.BackfillProgress) { final = p }))
	require.True(t, final.Finished)
	require.Equal(t, int64(20000), final.Done, "resumed, not restarted: every row counted once")
	if jobs > 1 {
		require.Len(t, writers, 2*jobs, "each run writes on its own %d connections", jobs)
	}

	var wrong, stampNow string
	var badTotals int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*)::text FROM orders o
		WHERE lines IS DISTINCT FROM (SELECT count(*) FROM line l WHERE l.order_id = o.id)`).Scan(&wrong))
	require.Equal(t, "0", wrong)
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM orders WHERE total <> -7`).Scan(&badTotals))
	require.Zero(t, badTotals, "order_total must not be rerun by a backfill of order_lines")
	require.NoError(t, conn.QueryRow(ctx, `SELECT max(materialized_at)::text FROM orders`).Scan(&stampNow))
	require.Equal(t, stamp, stampNow, "backfill leaves materialized_at alone")
}

// A row whose enrichment raises is quarantined and stays stale; every other row gets fresh.
func TestFailingRowIsQuarantined(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, `CREATE TABLE orders (id bigint PRIMARY KEY, inv numeric, materialized_at timestamptz);
		INSERT INTO orders (id) SELECT generate_series(1, 3000);`)
	cfg := loadConfig(t, dsn, `
enrichments:
  - name: inverse
    table: orders
    columns: [inv]
    sql: SELECT id, 1 / (id - 1234)::numeric AS inv FROM orders WHERE id = ANY($1)
`)
	d := startDaemon(t, cfg)
	require.Eventually(t, func() bool {
		var stale int
		_ = conn.QueryRow(ctx, `SELECT count(*) FROM orders WHERE materialized_at IS NULL`).Scan(&stale)
		return stale == 1
	}, 30*time.Second, 100*time.Millisecond)
	var id int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT id FROM orders WHERE materialized_at IS NULL`).Scan(&id))
	require.Equal(t, int64(1234), id)
	var key []string
	var enrichment, msg string
	var attempts int
	require.NoError(t, conn.QueryRow(ctx, `SELECT key, enrichment, error, attempts FROM matcol.failure`).Scan(&key, &enrichment, &msg, &attempts))
	require.Equal(t, []string{"1234"}, key)
	require.Equal(t, "inverse", enrichment)
	require.Contains(t, msg, "division by zero")
	drift, _, err := verify.Run(ctx, conn, d.Mat.Plan(), verify.Options{})
	require.NoError(t, err)
	require.Empty(t, drift)

	// Once the enrichment is fixed, a retry materializes the row and clears its record.
	_, err = daemon.Apply(ctx, loadConfig(t, dsn, `
enrichments:
  - name: inverse
    table: orders
    columns: [inv]
    sql: SELECT id, 1 / nullif(id - 1234, 0)::numeric AS inv FROM orders WHERE id = ANY($1)
`), hclog.NewNullLogger())
	require.NoError(t, err)
	d.Mat.SetPlan(loadPlan(t, dsn))
	pgtest.Exec(t, conn, `UPDATE matcol.failure SET next_attempt_at = now()`)
	require.Eventually(t, func() bool {
		var stale, failures int
		_ = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM orders WHERE materialized_at IS NULL), (SELECT count(*) FROM matcol.failure)`).Scan(&stale, &failures)
		return stale == 0 && failures == 0
	}, 30*time.Second, 100*time.Millisecond)
}

// Expired rows are recomputed; pause holds materialization until resume.
func TestExpiryAndPause(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, `CREATE TABLE clock (id int PRIMARY KEY, seen timestamptz, materialized_at timestamptz);
		INSERT INTO clock (id) SELECT generate_series(1, 50);`)
	cfg := loadConfig(t, dsn, `
enrichments:
  - name: seen
    table: clock
    columns: [seen]
    expires_after: 1s
    sql: SELECT id, now() AS seen FROM clock WHERE id = ANY($1)
`)
	cfg.Materializer.SweepInterval = 300 * time.Millisecond
	startDaemon(t, cfg)
	first := func() (s string) {
		require.NoError(t, conn.QueryRow(ctx, `SELECT coalesce(min(seen)::text, '') FROM clock`).Scan(&s))
		return s
	}
	require.Eventually(t, func() bool { return first() != "" }, 20*time.Second, 50*time.Millisecond)
	initial := first()
	require.Eventually(t, func() bool { return first() > initial }, 20*time.Second, 100*time.Millisecond,
		"every row must be recomputed after it expires")

	pgtest.Exec(t, conn, `INSERT INTO matcol.setting (name, value) VALUES ('pause', '{"paused": true}')
		ON CONFLICT (name) DO UPDATE SET value = excluded.value`)
	time.Sleep(1500 * time.Millisecond) // the daemon reads the switch every second
	pgtest.Exec(t, conn, `UPDATE clock SET materialized_at = NULL`)
	time.Sleep(1500 * time.Millisecond)
	var stale int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM clock WHERE materialized_at IS NULL`).Scan(&stale))
	require.Equal(t, 50, stale, "a paused daemon materializes nothing")
	pgtest.Exec(t, conn, `UPDATE matcol.setting SET value = '{"paused": false}' WHERE name = 'pause'`)
	require.Eventually(t, func() bool {
		_ = conn.QueryRow(ctx, `SELECT count(*) FROM clock WHERE materialized_at IS NULL`).Scan(&stale)
		return stale == 0
	}, 20*time.Second, 100*time.Millisecond)
}

// One table's flood does not starve another: tables take turns, a batch each.
func TestFairnessAcrossTables(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, `CREATE TABLE big (id int PRIMARY KEY, v int, materialized_at timestamptz);
		CREATE TABLE small (id int PRIMARY KEY, v int, materialized_at timestamptz);
		INSERT INTO big (id) SELECT generate_series(1, 30000);`)
	cfg := loadConfig(t, dsn, `
materializer: {workers: 1, batch_size: 100, target_batch_duration: 20ms}
enrichments:
  - name: big_v
    table: big
    columns: [v]
    sql: SELECT id, id * 2 AS v FROM big WHERE id = ANY($1) AND pg_sleep(0.01) IS NOT NULL
  - name: small_v
    table: small
    columns: [v]
    sql: SELECT id, id * 3 AS v FROM small WHERE id = ANY($1)
`)
	startDaemon(t, cfg)
	require.Eventually(t, func() bool {
		var n int
		_ = conn.QueryRow(ctx, `SELECT count(*) FROM big WHERE materialized_at IS NOT NULL`).Scan(&n)
		return n > 0
	}, 20*time.Second, 20*time.Millisecond, "the flood has started")
	pgtest.Exec(t, conn, `INSERT INTO small (id) SELECT generate_series(1, 10)`)
	require.Eventually(t, func() bool {
		var n int
		_ = conn.QueryRow(ctx, `SELECT count(*) FROM small WHERE materialized_at IS NULL`).Scan(&n)
		return n == 0
	}, 10*time.Second, 20*time.Millisecond, "the small table must not wait for the big one")
	var bigStale int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM big WHERE materialized_at IS NULL`).Scan(&bigStale))
	require.Greater(t, bigStale, 10000, "the big table was still busy: the small one went in between")
}
