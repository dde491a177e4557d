package materializer

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/registry"
)

// Whether the drainer has entries waiting is read from pending_drain, whatever the queue's
// statistics say: a scan of the queue for a first match reads every queued key when none
// matches, and the drainer asks several times a second while writers fill the queue.
func TestDrainableReadsItsIndex(t *testing.T) {
	ctx := context.Background()
	conn := pgtest.Connect(t, pgtest.NewDB(t))
	require.NoError(t, pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		_, err := registry.Install(ctx, tx)
		return err
	}))
	// Statistics from a queue full of the drainer's entries; then only keys wait.
	pgtest.Exec(t, conn, `INSERT INTO matcol.pending (target_id, dependency_id, vals) SELECT 1, 1, jsonb_build_array(g) FROM generate_series(1, 20000) g;
		ANALYZE matcol.pending; DELETE FROM matcol.pending;
		INSERT INTO matcol.pending (target_id, vals) SELECT 1, jsonb_build_array(g) FROM generate_series(1, 20000) g`)
	rows, err := conn.Query(ctx, `EXPLAIN (FORMAT TEXT) `+drainableSQL)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	plan := ""
	for _, l := range lines {
		plan += l + "\n"
	}
	require.Contains(t, plan, "pending_drain", plan)
	require.NotContains(t, plan, "Seq Scan", plan)
}
