package dial_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
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

// The guard leaves pgxpool's order alone: the next acquire gets the connection released last,
// whose backend is warm, even when that connection is due for a measurement. Measured at
// release, it was still out when the next batch asked, which took another.
func TestCacheGuardKeepsTheConnectionReleasedLast(t *testing.T) {
	dsn := pgtest.NewDB(t)
	ctx := context.Background()
	guard := &dial.CacheGuard{MaxBytes: 64 << 20, Every: time.Nanosecond}
	pool, err := dial.Pool(ctx, dsn, "test", dial.PoolOptions{MaxConns: 4, Cache: guard})
	require.NoError(t, err)
	defer pool.Close()
	pids := map[uint32]bool{}
	for i := 0; i < 50; i++ {
		c, err := pool.Acquire(ctx)
		require.NoError(t, err)
		_, err = c.Exec(ctx, `SELECT 1`)
		require.NoError(t, err)
		pids[c.Conn().PgConn().PID()] = true
		c.Release()
	}
	require.Len(t, pids, 1, "one backend serves acquires one after another")
	require.Len(t, guard.Sizes(), 1, "and it is measured")
}

// A role that may not read pg_backend_memory_contexts keeps its connections: the guard says so
// once, names the grant, and counts the relations each connection's statements read instead.
// Granted pg_read_all_stats, the same role is measured.
func TestCacheGuardWithoutPrivilegeCountsRelations(t *testing.T) {
	dsn := pgtest.NewDB(t)
	su := pgtest.Connect(t, dsn)
	ctx := context.Background()
	var db string
	require.NoError(t, su.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	role := "guard_" + strings.TrimPrefix(db, "matcol_test_")
	pgtest.Exec(t, su, `CREATE ROLE `+role+` LOGIN`)
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), dsn)
		if err == nil {
			_, _ = c.Exec(context.Background(), `DROP ROLE IF EXISTS `+role)
			_ = c.Close(context.Background())
		}
	})
	cfg, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	roleDSN := strings.Replace(dsn, "://"+cfg.User+"@", "://"+role+"@", 1)

	var logs lockedBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logs, JSONFormat: true})
	guard := &dial.CacheGuard{MaxBytes: 4 << 10, PerRelation: 1 << 10, Log: log} // 4 relations
	pool, err := dial.Pool(ctx, roleDSN, "test", dial.PoolOptions{MaxConns: 1, Cache: guard})
	require.NoError(t, err)
	defer pool.Close()
	pid := func(ctx context.Context) (p int) {
		require.NoError(t, pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&p))
		return p
	}
	first := pid(ctx)
	for i := 0; i < 50; i++ {
		require.Equal(t, first, pid(ctx), "release %d must keep the connection", i)
	}
	require.True(t, guard.Counting())
	require.Equal(t, 1, strings.Count(logs.String(), "cannot read pg_backend_memory_contexts"), logs.String())
	require.Contains(t, logs.String(), `GRANT pg_read_all_stats TO \"`+role)

	require.Equal(t, first, pid(dial.Touching(ctx, []uint32{1, 2})))
	require.Equal(t, first, pid(dial.Touching(ctx, []uint32{2, 3, 4})), "4 relations are within the cap")
	require.Equal(t, first, pid(dial.Touching(ctx, []uint32{5})), "a fifth relation passes it: closed at the next acquire")
	second := pid(ctx)
	require.NotEqual(t, first, second)
	require.Equal(t, second, pid(dial.Touching(ctx, []uint32{1, 2, 3})), "a new connection starts counting afresh")
	require.Equal(t, int64(1), guard.RecycledCount())
	require.Equal(t, 1, strings.Count(logs.String(), "cannot read pg_backend_memory_contexts"))

	pgtest.Exec(t, su, `GRANT pg_read_all_stats TO `+role)
	measured := &dial.CacheGuard{MaxBytes: 64 << 20, Log: log}
	mpool, err := dial.Pool(ctx, roleDSN, "test", dial.PoolOptions{MaxConns: 1, Cache: measured})
	require.NoError(t, err)
	defer mpool.Close()
	var p int
	require.NoError(t, mpool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&p))
	require.NoError(t, mpool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&p)) // measured at its first acquire
	require.False(t, measured.Counting())
	require.Positive(t, measured.Sizes()[uint32(p)])
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
