package materializer_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/registry"
)

// A backfill computes without locking; a batch that recomputes and stamps a row while the
// backfill's statement runs must win: the backfill's older value never lands on the fresh row.
func TestBackfillNeverOverwritesFresherRow(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	// Only the backfill's connection waits at the gate.
	pgtest.Exec(t, b.conn, `CREATE FUNCTION backfill_gate() RETURNS boolean LANGUAGE sql VOLATILE AS
		$$SELECT CASE WHEN current_setting('application_name') LIKE '%backfill%'
		     THEN pg_advisory_lock_shared(4242) IS NOT NULL AND pg_advisory_unlock_shared(4242) ELSE true END$$`)
	defs := []registry.Enrichment{{Name: "venue_seats", Target: tableName("public", "venue"), Columns: []string{"seat_count"}, Self: new(true),
		SQL: `SELECT v.id, sum(e.seats)::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id
			WHERE v.id = ANY($1) AND backfill_gate() GROUP BY v.id`,
		DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}}}
	applyDefs(t, b.conn, defs)
	p := reload(t, b)
	b.catchUp(t)

	gate := pgtest.Connect(t, b.dsn)
	pgtest.Exec(t, gate, `SELECT pg_advisory_lock(4242)`)
	spec := materializer.BackfillSpec{Target: p.Targets[0], Enrichments: p.Targets[0].Enrichments}
	bf := b.openBackfill(t, spec)
	done := make(chan error, 1)
	go func() { done <- bf.Run(ctx, nil) }()
	require.Eventually(t, func() bool {
		var waiting bool
		_ = gate.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)`).Scan(&waiting)
		return waiting
	}, 10*time.Second, 10*time.Millisecond)

	// While the backfill's write sits after its snapshot, venue 1 changes and matcol stamps it.
	pgtest.Exec(t, b.conn, `INSERT INTO event VALUES (3, 1, 5)`)
	b.catchUp(t)
	var seats int64
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT seat_count FROM venue WHERE id = 1`).Scan(&seats))
	require.Equal(t, int64(15), seats)

	pgtest.Exec(t, gate, `SELECT pg_advisory_unlock(4242)`)
	require.NoError(t, <-done)
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT seat_count FROM venue WHERE id = 1`).Scan(&seats))
	require.Equal(t, int64(15), seats, "the backfill must not write its older value over the fresh row")
	require.Empty(t, b.drift(t))
}

func reload(t *testing.T, b *bundle) *planT {
	t.Helper()
	p, err := loadPlanFrom(context.Background(), b.pool)
	require.NoError(t, err)
	b.plan = p
	b.mat.SetPlan(p)
	return p
}

// matcol pause holds a backfill before its next batch, in either mode, and resume lets it finish.
func TestBackfillHoldsWhilePaused(t *testing.T) {
	for _, jobs := range []int{1, 2} {
		t.Run(fmt.Sprintf("jobs %d", jobs), func(t *testing.T) {
			b := setup(t)
			ctx := context.Background()
			b.catchUp(t)
			pgtest.Exec(t, b.conn, `UPDATE venue SET seat_count = NULL;
				INSERT INTO matcol.setting (name, value) VALUES ('pause', '{"paused": true}')`)
			spec := materializer.BackfillSpec{Target: b.plan.Targets[0], Enrichments: b.plan.Targets[0].Enrichments, BatchSize: 1,
				Jobs: jobs, Connect: func(ctx context.Context) (*pgx.Conn, error) { return dial.Connect(ctx, b.dsn, "backfill") }}
			bf := b.openBackfill(t, spec)
			done := make(chan error, 1)
			go func() { done <- bf.Run(ctx, nil) }()

			filled := func() int {
				var n int
				require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(seat_count) FROM venue`).Scan(&n))
				return n
			}
			time.Sleep(1500 * time.Millisecond)
			require.Zero(t, filled(), "no row is written while paused")
			select {
			case err := <-done:
				t.Fatalf("the backfill ended while paused: %v", err)
			default:
			}
			pgtest.Exec(t, b.conn, `UPDATE matcol.setting SET value = '{"paused": false}' WHERE name = 'pause'`)
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(10 * time.Second):
				t.Fatal("the backfill did not finish after resume")
			}
			require.Equal(t, 2, filled())
		})
	}
}

// A composite key under an awkward name, a --where, and both modes: the one-statement batch binds
// each key column's array to its own $n and walks the key in order.
func TestBackfillCompositeKeyAndWhere(t *testing.T) {
	for _, jobs := range []int{1, 2} {
		t.Run(fmt.Sprintf("jobs %d", jobs), func(t *testing.T) {
			b := setup(t)
			ctx := context.Background()
			pgtest.Exec(t, b.conn, `CREATE SCHEMA "Ünï ""q"""; CREATE TABLE "Ünï ""q"""."Line item" (
					"order id" bigint, "no." text, qty int NOT NULL, doubled int, materialized_at timestamptz DEFAULT now(),
					PRIMARY KEY ("order id", "no."));
				INSERT INTO "Ünï ""q"""."Line item" ("order id", "no.", qty) SELECT o, 'n' || l, o * 10 + l
				FROM generate_series(1, 40) o, generate_series(1, 3) l`)
			defs := []registry.Enrichment{{Name: "doubled", Target: tableName(`Ünï "q"`, "Line item"), Columns: []string{"doubled"}, Self: new(true),
				SQL: `SELECT l."order id", l."no.", l.qty * 2 AS doubled
					FROM "Ünï ""q"""."Line item" l JOIN unnest($1::bigint[], $2::text[]) AS k(o, n) ON (k.o, k.n) = (l."order id", l."no.")
					-- $3 in a comment, '$1' in a string: left alone
					WHERE '$1' <> ''`}}
			applyDefs(t, b.conn, defs)
			p := reload(t, b)
			var target = p.Targets[0]
			for _, tg := range p.Targets {
				if tg.Table.Name == "Line item" {
					target = tg
				}
			}
			bconn, err := dial.Connect(ctx, b.dsn, "backfill")
			require.NoError(t, err)
			defer bconn.Close(ctx)
			spec := materializer.BackfillSpec{Target: target, Enrichments: target.Enrichments, BatchSize: 7, Jobs: jobs,
				Where:   `"order id" % 2 = 0`,
				Connect: func(ctx context.Context) (*pgx.Conn, error) { return dial.Connect(ctx, b.dsn, "backfill") }}
			var logs strings.Builder
			bf, err := materializer.OpenBackfill(ctx, bconn, spec, true, hclog.New(&hclog.LoggerOptions{Output: &logs, Mutex: &sync.Mutex{}}))
			require.NoError(t, err)
			require.NoError(t, bf.Run(ctx, nil))
			require.NotContains(t, logs.String(), "reads each batch's keys first", "the one-statement batch must plan")
			var right, wrong, untouched int
			require.NoError(t, b.conn.QueryRow(ctx, `SELECT
				count(*) FILTER (WHERE "order id" % 2 = 0 AND doubled = qty * 2),
				count(*) FILTER (WHERE "order id" % 2 = 0 AND doubled IS DISTINCT FROM qty * 2),
				count(*) FILTER (WHERE "order id" % 2 = 1 AND doubled IS NULL)
				FROM "Ünï ""q"""."Line item"`).Scan(&right, &wrong, &untouched))
			require.Equal(t, 60, right)
			require.Zero(t, wrong)
			require.Equal(t, 60, untouched, "--where leaves other rows alone")
		})
	}
}

// A backfill whose batches grow slow on a database nobody else uses does not back off.
func TestBackfillSlowBatchesAloneDoNotThrottle(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	pgtest.Exec(t, b.conn, `CREATE TABLE slow (s float8 NOT NULL); INSERT INTO slow VALUES (0);
		CREATE FUNCTION slow_row(id bigint) RETURNS boolean LANGUAGE plpgsql VOLATILE AS
		  $$BEGIN PERFORM pg_sleep((SELECT s FROM slow)); RETURN true; END$$;
		INSERT INTO venue (id, seat_count, materialized_at) SELECT g, 0, now() FROM generate_series(3, 40) g`)
	defs := []registry.Enrichment{{Name: "venue_seats", Target: tableName("public", "venue"), Columns: []string{"seat_count"}, Self: new(true),
		SQL: `SELECT v.id, sum(e.seats)::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id
			WHERE v.id = ANY($1) AND slow_row(v.id) GROUP BY v.id`,
		DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}}}
	applyDefs(t, b.conn, defs)
	p := reload(t, b)
	spec := materializer.BackfillSpec{Target: p.Targets[0], Enrichments: p.Targets[0].Enrichments, BatchSize: 1, LatencyFactor: 4}
	bf := b.openBackfill(t, spec)
	var last materializer.BackfillProgress
	require.NoError(t, bf.Run(ctx, func(pr materializer.BackfillProgress) {
		last = pr
		if pr.Done == 15 { // 25 rows 30 times slower follow
			pgtest.Exec(t, b.conn, `UPDATE slow SET s = 0.03`)
		}
	}))
	require.Zero(t, last.Throttled, "nothing but the backfill ran: no batch may be followed by a pause")
}

// A backfill that deadlocks with the application retries its batch instead of failing: the
// application's transaction goes on, and the backfill still fills every row.
func TestBackfillRetriesAfterDeadlock(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	b.catchUp(t)
	pgtest.Exec(t, b.conn, `UPDATE venue SET seat_count = NULL`)
	app := pgtest.Connect(t, b.dsn)
	appTx, err := app.Begin(ctx)
	require.NoError(t, err)
	_, err = appTx.Exec(ctx, `UPDATE venue SET materialized_at = materialized_at WHERE id = 2`)
	require.NoError(t, err)
	// PostgreSQL aborts the backend whose deadlock check runs first after the cycle forms, and
	// each waiter checks once, deadlock_timeout after it began to wait. The backfill checks after
	// 5 s, by when the application surely waits too; the application only after 60 s.
	_, err = appTx.Exec(ctx, `SET LOCAL deadlock_timeout = '60s'`)
	require.NoError(t, err)

	spec := materializer.BackfillSpec{Target: b.plan.Targets[0], Enrichments: b.plan.Targets[0].Enrichments}
	bf := b.openBackfill(t, spec, `SET deadlock_timeout = '5s'`)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- bf.Run(runCtx, nil) }()
	t.Cleanup(func() { cancel(); <-done }) // before the connection closes
	// The backfill holds venue 1 and waits for venue 2; the application then wants venue 1.
	require.Eventually(t, func() bool {
		var waiting bool
		_ = b.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE application_name LIKE 'matcol backfill%' AND wait_event_type = 'Lock')`).Scan(&waiting)
		return waiting
	}, 10*time.Second, 10*time.Millisecond)
	_, err = appTx.Exec(ctx, `UPDATE venue SET materialized_at = materialized_at WHERE id = 1`)
	require.NoError(t, err, "the backfill, which waited first, is the one PostgreSQL aborts")
	require.NoError(t, appTx.Commit(ctx))
	select {
	case err := <-done:
		done <- err // for the cleanup
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("the backfill did not finish")
	}
	var filled int
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(seat_count) FROM venue`).Scan(&filled))
	require.Equal(t, 2, filled)
}

// openBackfill starts spec's backfill over on a connection of its own, closed after the test.
// Statements in setup run on that connection first.
func (b *bundle) openBackfill(t *testing.T, spec materializer.BackfillSpec, setup ...string) *materializer.Backfill {
	t.Helper()
	ctx := context.Background()
	conn, err := dial.Connect(ctx, b.dsn, "backfill")
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(ctx) })
	for _, sql := range setup {
		_, err := conn.Exec(ctx, sql)
		require.NoError(t, err)
	}
	bf, err := materializer.OpenBackfill(ctx, conn, spec, true, hclog.NewNullLogger())
	require.NoError(t, err)
	return bf
}
