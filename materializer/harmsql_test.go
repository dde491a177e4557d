package materializer

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
)

// The probe counts the application's connections in use: one idle for a second or more is a
// pool's spare or a tool's, and would make a closed loop look open.
func TestProbeCountsConnectionsInUse(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	self := pgtest.Connect(t, dsn)
	pgtest.Exec(t, self, `SET application_name = 'matcol test'`)
	for range 3 {
		pgtest.Exec(t, pgtest.Connect(t, dsn), `SELECT 1`)
	}
	busy := pgtest.Connect(t, dsn)
	pgtest.Exec(t, busy, `BEGIN`)
	pgtest.Exec(t, busy, `SELECT txid_current()`)
	time.Sleep(1500 * time.Millisecond)

	s, err := probe(ctx, self, false)
	require.NoError(t, err)
	require.Equal(t, 1, s.appTx)
	require.Equal(t, 1, s.appConns, "connections idle for over a second are not in use")

	used := pgtest.Connect(t, dsn)
	pgtest.Exec(t, used, `SELECT 1`)
	s, err = probe(ctx, self, false)
	require.NoError(t, err)
	require.Equal(t, 2, s.appConns, "a connection that just ran a statement is in use")
}

// pg_locks stalls every writer that takes a lock while it is copied, so the probe reads it only
// while a matcol backend is inside a transaction, and, given pg_read_all_stats, not at all for
// the application's transactions in flight.
func TestProbeReadsLocksOnlyWhileMatcolWorks(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	self := pgtest.Connect(t, dsn)
	pgtest.Exec(t, self, `SET application_name = 'matcol control'`)
	app := pgtest.Connect(t, dsn)
	pgtest.Exec(t, app, `BEGIN`)
	pgtest.Exec(t, app, `SELECT txid_current()`)
	// lockReads reports how many of the probe's pg_locks reads ran.
	lockReads := func() int {
		rows, err := self.Query(ctx, `EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) `+harmSQL)
		require.NoError(t, err)
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		n := 0
		for _, l := range lines {
			if strings.Contains(l, "pg_lock_status") && !strings.Contains(l, "never executed") {
				n++
			}
		}
		return n
	}
	require.Zero(t, lockReads(), "no matcol backend in a transaction, and the probe may read every session's state")
	s, err := probe(ctx, self, false)
	require.NoError(t, err)
	require.Equal(t, 1, s.appTx)

	worker := pgtest.Connect(t, dsn)
	pgtest.Exec(t, worker, `SET application_name = 'matcol worker'`)
	pgtest.Exec(t, worker, `BEGIN`)
	pgtest.Exec(t, worker, `SELECT 1`)
	require.Equal(t, 1, lockReads(), "a matcol transaction may hold what the application waits for")
	pgtest.Exec(t, worker, `COMMIT`)

	// A role that cannot see other roles' sessions counts their transactions by their locks.
	var db string
	require.NoError(t, self.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	role := "probe_" + strings.TrimPrefix(db, "matcol_test_")
	pgtest.Exec(t, self, `CREATE ROLE `+pgx.Identifier{role}.Sanitize()+` LOGIN`)
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), dsn)
		if err == nil {
			_, _ = c.Exec(context.Background(), `DROP ROLE IF EXISTS `+pgx.Identifier{role}.Sanitize())
			_ = c.Close(context.Background())
		}
	})
	cfg, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	limited := pgtest.Connect(t, strings.Replace(dsn, "://"+cfg.User+"@", "://"+role+"@", 1))
	pgtest.Exec(t, limited, `SET application_name = 'matcol control'`)
	s, err = probe(ctx, limited, false)
	require.NoError(t, err)
	require.Equal(t, 1, s.appTx, "the application's transaction, seen through its lock")
}
