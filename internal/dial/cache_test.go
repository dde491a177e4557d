package dial_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// A backend that touched many tables is recycled once its catalog cache passes the cap.
func TestCacheGuardRecyclesBigBackends(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, `DO $$ BEGIN FOR i IN 1..400 LOOP
		EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, a text, b int, c timestamptz)', i); END LOOP; END $$`)
	guard := &dial.CacheGuard{MaxBytes: 2 << 20, Every: time.Nanosecond}
	pool, err := dial.Pool(ctx, dsn, "test", dial.PoolOptions{MaxConns: 1, Cache: guard})
	require.NoError(t, err)
	defer pool.Close()

	pid := func() (p int) {
		require.NoError(t, pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&p))
		return p
	}
	first := pid()
	require.Equal(t, first, pid(), "a small backend stays")
	sizes := guard.Sizes()
	require.Less(t, sizes[uint32(first)], int64(2<<20))

	c, err := pool.Acquire(ctx)
	require.NoError(t, err)
	for i := 1; i <= 400; i++ {
		_, err := c.Exec(ctx, fmt.Sprintf("SELECT * FROM t%d WHERE id = 1", i))
		require.NoError(t, err)
	}
	c.Release()
	require.NotEqual(t, first, pid(), "the backend that cached 400 tables must be replaced")
	require.Equal(t, int64(1), guard.Recycled)
}
