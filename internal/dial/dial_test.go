package dial_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgtest"
)

// The daemon commits asynchronously; commands a user runs keep the server's durability, and a
// setting in the connection string wins over both.
func TestSynchronousCommitByRole(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	var db string
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	pgtest.Exec(t, conn, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` SET synchronous_commit = on`)
	show := func(dsn, role string) string {
		c, err := dial.Connect(ctx, dsn, role)
		require.NoError(t, err)
		defer c.Close(ctx)
		var v string
		require.NoError(t, c.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&v))
		return v
	}
	for _, role := range []string{"worker", "listener", "backfill", "refresh"} {
		require.Equal(t, "off", show(dsn, role), role)
	}
	for _, role := range []string{"apply", "cli", "install"} {
		require.Equal(t, "on", show(dsn, role), role)
	}
	require.Equal(t, "local", show(dsn+"&options=-c%20synchronous_commit%3Dlocal", "worker"))
	require.Equal(t, "remote_write", show(dsn+"&synchronous_commit=remote_write", "worker"))
}
