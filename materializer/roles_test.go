package materializer_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgtest"
)

// rolePool creates a login role that may do anything with the tables of schemas matcol and
// public but is no superuser, and returns a pool connected as it, and its name.
func rolePool(t *testing.T, b *bundle) (*pgxpool.Pool, string) {
	t.Helper()
	ctx := context.Background()
	var db string
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	role := "r_" + strings.TrimPrefix(db, "matcol_test_")
	roleDSN := pgtest.LoginRole(t, b.dsn, role)
	pgtest.Exec(t, b.conn, fmt.Sprintf(`GRANT USAGE ON SCHEMA matcol, public TO %[1]s;
		GRANT ALL ON ALL TABLES IN SCHEMA matcol, public TO %[1]s;
		GRANT ALL ON ALL SEQUENCES IN SCHEMA matcol, public TO %[1]s`, role))
	pool, err := dial.Pool(ctx, roleDSN, "test", dial.PoolOptions{MaxConns: 4})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool, role
}

// lockedLog collects a logger's output while the test reads it.
type lockedLog struct {
	mu sync.Mutex
	sb strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sb.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sb.String()
}
