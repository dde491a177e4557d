package materializer_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/listener/trigger"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/registry"
)

func tableName(schema, name string) pgident.Table { return pgident.Table{Schema: schema, Name: name} }

func applyDefs(t *testing.T, conn *pgx.Conn, defs []registry.Enrichment) {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		p, err := plan.Build(ctx, tx, defs)
		if err != nil {
			return err
		}
		if _, err := registry.Sync(ctx, tx, p.Definitions()); err != nil {
			return err
		}
		loaded, err := registry.Load(ctx, tx)
		if err != nil {
			return err
		}
		p, err = plan.Build(ctx, tx, loaded)
		if err != nil {
			return err
		}
		_, _, err = trigger.Sync(ctx, tx, p)
		return err
	}))
}

type planT = plan.Plan

func loadPlanFrom(ctx context.Context, pool interface {
	Begin(context.Context) (pgx.Tx, error)
}) (*plan.Plan, error) {
	var p *plan.Plan
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		defs, err := registry.Load(ctx, tx)
		if err != nil {
			return err
		}
		p, err = plan.Build(ctx, tx, defs)
		return err
	})
	return p, err
}

// timedVenue returns a materializer of venue whose batches each sleep 3 ms a row (60 ms for the
// 20 rows they start with) and note in venue.started and venue.ended when their statement ran,
// so that a test can count how many ran at once: up to tableWorkers of the table's after ramp.
// The sleep is per row, as real work is: a fixed one kept a batch long however small, so on a
// loaded machine a slow spell shrank the batches to one row for good (see observe), and 1,200
// rows took over a minute.
func timedVenue(t *testing.T, tableWorkers int, ramp time.Duration) *bundle {
	t.Helper()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 3, TableWorkers: tableWorkers,
		RampAfter: ramp, SweepInterval: time.Hour, BatchSize: 20,
		TargetBatchDuration: 100 * time.Millisecond}) // 20 rows take over half of it: batches never grow
	pgtest.Exec(t, b.conn, `CREATE INDEX ON venue (id) WHERE materialized_at IS NULL;
		ALTER TABLE venue ADD COLUMN started timestamptz, ADD COLUMN ended timestamptz`)
	applyDefs(t, b.conn, []registry.Enrichment{{Name: "venue_seats", Target: tableName("public", "venue"),
		Columns: []string{"seat_count", "started", "ended"}, Self: new(true),
		SQL: `WITH a AS MATERIALIZED (SELECT clock_timestamp() AS t0),
			r AS MATERIALIZED (SELECT v.id FROM venue v WHERE v.id = ANY($1)),
			s AS MATERIALIZED (SELECT pg_sleep(0.003 * (SELECT count(*) FROM r)), t0 FROM a),
			b AS MATERIALIZED (SELECT clock_timestamp() AS t1, t0 FROM s)
			SELECT r.id, 0::bigint AS seat_count, b.t0 AS started, b.t1 AS ended FROM r CROSS JOIN b`,
		DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}}})
	reload(t, b)
	return b
}

// waitTimedBatches waits until a timedVenue bundle has computed every row it added.
func waitTimedBatches(t *testing.T, b *bundle) {
	t.Helper()
	require.Eventually(t, func() bool {
		var left int
		require.NoError(t, b.conn.QueryRow(context.Background(), `SELECT count(*) FROM venue WHERE id > 2 AND ended IS NULL`).Scan(&left))
		return left == 0
	}, 60*time.Second, 20*time.Millisecond, lazy(func() string { return b.state(t) }))
}
