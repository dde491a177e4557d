package materializer

import (
	"context"
	"testing"
	"time"

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
