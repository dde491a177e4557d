package materializer_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/materializer"
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

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.mat.Run(runCtx) }()
	defer func() { stop(); <-done }()
	start := time.Now()
	require.Eventually(t, func() bool {
		var stale int
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM venue WHERE materialized_at IS NULL`).Scan(&stale))
		return stale == 0
	}, 30*time.Second, 20*time.Millisecond, "20,000 stale rows must be worked off without a sweep")
	t.Logf("20,000 rows in %s", time.Since(start).Round(time.Millisecond))
	require.Empty(t, b.drift(t))
}
