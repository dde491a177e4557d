package materializer_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/registry"
)

// A plan that changes while a batch runs (apply, a rescan) leaves the table with the workers: the
// batch ends on the new plan's target, and changes after it are materialized without a sweep.
func TestPlanChangeMidBatchKeepsTableRunning(t *testing.T) {
	ctx := context.Background()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1, SweepInterval: time.Hour, BatchSize: 5000})
	applyDefs(t, b.conn, []registry.Enrichment{{Name: "venue_seats", Target: tableName("public", "venue"), Columns: []string{"seat_count"},
		Self: new(true), SQL: `SELECT v.id, sum(e.seats)::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id
			WHERE v.id = ANY($1) AND test_gate() GROUP BY v.id`,
		DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}}})
	reload(t, b)
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id) SELECT generate_series(3, 1000)`)

	gate := pgtest.Connect(t, b.dsn)
	pgtest.Exec(t, gate, `SELECT pg_advisory_lock(4242)`)
	b.run(t)
	require.Eventually(t, func() bool {
		var waiting bool
		_ = gate.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)`).Scan(&waiting)
		return waiting
	}, 10*time.Second, 10*time.Millisecond, "a batch waits at the gate")
	reload(t, b)
	pgtest.Exec(t, gate, `SELECT pg_advisory_unlock(4242)`)

	caughtUp := func() bool { return b.left(t) == 0 }
	require.Eventually(t, caughtUp, 20*time.Second, 20*time.Millisecond)

	pgtest.Exec(t, b.conn, `INSERT INTO event SELECT g, g, 7 FROM generate_series(3, 100) g`)
	require.Eventually(t, caughtUp, 20*time.Second, 20*time.Millisecond, "a change after the batch must not wait for a sweep")
	require.Empty(t, b.drift(t))
}
