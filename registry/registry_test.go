package registry_test

import (
	"context"
	"os"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/registry"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestConcurrentInstall(t *testing.T) {
	dsn := pgtest.NewDB(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(context.Background(), dsn)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			_, err = registry.Install(context.Background(), conn)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	conn := pgtest.Connect(t, dsn)
	v, err := registry.Version(context.Background(), conn)
	require.NoError(t, err)
	require.Equal(t, registry.LatestVersion(), v)
	var n int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM matcol.schema_migration`).Scan(&n))
	require.Equal(t, len(registry.Migrations()), n, "each migration applied once")
}

func TestVersionBeforeInstall(t *testing.T) {
	conn := pgtest.Connect(t, pgtest.NewDB(t))
	v, err := registry.Version(context.Background(), conn)
	require.NoError(t, err)
	require.Zero(t, v)
}

// Enrichments registered before self became tri-state keep the value they had: true stays the
// old "any column" behaviour, not the new read-based default.
func TestSelfSurvivesTheUpgrade(t *testing.T) {
	ctx := context.Background()
	conn := pgtest.Connect(t, pgtest.NewDB(t))
	pgtest.Exec(t, conn, `CREATE SCHEMA matcol; CREATE TABLE matcol.schema_migration (
		version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`)
	for _, m := range registry.Migrations() {
		if m.Version >= 7 {
			break
		}
		pgtest.Exec(t, conn, m.SQL)
		pgtest.Exec(t, conn, `INSERT INTO matcol.schema_migration (version, name) VALUES ($1, $2)`, m.Version, m.Name)
	}
	pgtest.Exec(t, conn, `CREATE TABLE venue (id int PRIMARY KEY, n int, materialized_at timestamptz);
		INSERT INTO matcol.target (schema_name, table_name) VALUES ('public', 'venue');
		INSERT INTO matcol.enrichment (name, target_id, columns, sql) VALUES ('by_default', 1, '{n}', 'SELECT 1');
		INSERT INTO matcol.enrichment (name, target_id, columns, sql, self) VALUES ('off', 1, '{n}', 'SELECT 1', false)`)

	_, err := registry.Install(ctx, conn)
	require.NoError(t, err)
	got, err := registry.Load(ctx, conn)
	require.NoError(t, err)
	require.Equal(t, new(true), got[0].Self, "registered with the old default")
	require.Equal(t, new(false), got[1].Self)
	require.Equal(t, "added", registerSelf(t, conn, "new"))
	got, err = registry.Load(ctx, conn)
	require.NoError(t, err)
	require.Nil(t, got[1].Self, "registered after the upgrade without self")
}

func registerSelf(t *testing.T, conn *pgx.Conn, name string) string {
	t.Helper()
	var res string
	require.NoError(t, conn.QueryRow(context.Background(),
		`SELECT matcol.register_enrichment($1, 'venue', ARRAY['n'], 'SELECT 1')`, name).Scan(&res))
	return res
}
