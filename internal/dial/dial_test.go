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
	for _, role := range []string{"worker", "control", "listener", "backfill", "refresh"} {
		require.Equal(t, "off", show(dsn, role), role)
	}
	for _, role := range []string{"apply", "cli", "install"} {
		require.Equal(t, "on", show(dsn, role), role)
	}
	require.Equal(t, "local", show(dsn+"&options=-c%20synchronous_commit%3Dlocal", "worker"))
	require.Equal(t, "remote_write", show(dsn+"&synchronous_commit=remote_write", "worker"))
}

func TestRedactMasksPasswordFieldsOnly(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:hunter2@h:5432/db":                         "postgres://u:xxxxx@h:5432/db",
		"postgres://u@h/db?password=hunter2&sslmode=disable":     "postgres://u@h/db?password=xxxxx&sslmode=disable",
		"postgres://p:p@tcp/p?sslmode=disable":                   "postgres://p:xxxxx@tcp/p?sslmode=disable",
		"host=h user=u password=hunter2 dbname=d":                "host=h user=u password=xxxxx dbname=d",
		"host=h password='hun ter2' user=u":                      "host=h password=xxxxx user=u",
		"host=tcp user=p password=p dbname=p sslpassword=secret": "host=tcp user=p password=xxxxx dbname=p sslpassword=xxxxx",
		"postgres://u:bad%zz@h/db":                               "postgres://u:xxxxx@h/db",
		"postgres://postgres@h/postgres":                         "postgres://postgres@h/postgres",
	} {
		require.Equal(t, want, dial.Redact(in), in)
	}
}

// Connection errors keep their text: a short or common password must not garble it, and the
// password itself never appears.
func TestConnectErrorsKeepTheirText(t *testing.T) {
	ctx := context.Background()
	_, err := dial.Connect(ctx, "postgres://postgres:postgres@127.0.0.1:1/postgres?connect_timeout=2", "cli")
	require.Error(t, err)
	require.Contains(t, err.Error(), "connect to postgres@127.0.0.1:1/postgres")
	require.Contains(t, err.Error(), "user=postgres database=postgres")
	require.NotContains(t, err.Error(), "xxxxx")

	_, err = dial.Connect(ctx, "postgres://u:p@127.0.0.1:1/db?connect_timeout=2", "cli")
	require.Error(t, err)
	require.Contains(t, err.Error(), "tcp")
	require.NotContains(t, err.Error(), "tcxxxxx")

	_, err = dial.Pool(ctx, "postgres://u:hunter2@127.0.0.1:notaport/db", "worker", dial.PoolOptions{})
	require.Error(t, err)
	require.Contains(t, err.Error(), "database_url is not a valid connection string")
	require.NotContains(t, err.Error(), "hunter2")
	_, err = dial.Connect(ctx, "host=127.0.0.1 port=x password=hunter2", "cli")
	require.Error(t, err)
	require.NotContains(t, err.Error(), "hunter2")
}
