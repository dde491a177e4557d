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
