package daemon_test

import (
	"cmp"
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/demo"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/verify"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func loadConfig(t *testing.T, dsn, yaml string) *config.Config {
	t.Helper()
	f := t.TempDir() + "/matcol.yaml"
	require.NoError(t, os.WriteFile(f, []byte(yaml), 0o600))
	cfg, err := config.Load(f, nil)
	require.NoError(t, err)
	cfg.DatabaseURL = dsn
	cfg.Status.Listen = ""
	cfg.Materializer.SweepInterval = time.Second
	require.NoError(t, cfg.Validate())
	return cfg
}

func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "matcol", Level: hclog.LevelFromString(cmp.Or(os.Getenv("MATCOL_TEST_LOG_LEVEL"), "info")), Output: pgtest.LogWriter(t)})
}

// startDaemon runs the daemon until the test ends.
func startDaemon(t *testing.T, cfg *config.Config) *daemon.Daemon {
	t.Helper()
	d, _ := startStoppableDaemon(t, cfg)
	return d
}

// startStoppableDaemon also returns a stop that waits for the daemon to end; cleanup calls it too.
func startStoppableDaemon(t *testing.T, cfg *config.Config) (*daemon.Daemon, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.Start(ctx, cfg, testLogger(t))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- d.Wait(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(15 * time.Second):
				t.Error("daemon did not stop within 15s")
			}
		})
	}
	t.Cleanup(stop)
	return d, stop
}

// waitFresh polls until no row of any target is stale and verify finds no drift.
func waitFresh(t *testing.T, conn *pgx.Conn, d *daemon.Daemon, within time.Duration) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(within)
	var stale int
	var drift []verify.Drift
	for time.Now().Before(deadline) {
		stale = 0
		for _, tg := range d.Mat.Plan().Targets {
			var n int
			require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM "+tg.Table.Sanitize()+" WHERE materialized_at IS NULL").Scan(&n))
			stale += n
		}
		var pending int
		require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM matcol.pending").Scan(&pending))
		if stale == 0 && pending == 0 {
			var err error
			drift, _, err = verify.Run(ctx, conn, d.Mat.Plan(), verify.Options{IncludeStale: true})
			require.NoError(t, err)
			if len(drift) == 0 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("not fresh after %s: %d stale rows, drift %+v", within, stale, first(drift, 5))
}

func first(d []verify.Drift, n int) []verify.Drift {
	if len(d) > n {
		return d[:n]
	}
	return d
}

func TestCinemaEndToEnd(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, demo.Schema)
	require.NoError(t, demo.Seed(ctx, conn, 1))
	cfg := loadConfig(t, dsn, demo.Config)
	d := startDaemon(t, cfg)
	waitFresh(t, conn, d, 30*time.Second)

	// Moving an event makes both venues stale; renaming a cinema reaches its venues via sql.
	pgtest.Exec(t, conn, `UPDATE event SET venue_id = 2 WHERE id = 1`)
	pgtest.Exec(t, conn, `UPDATE cinema SET name = 'Renamed' WHERE id = 3`)
	pgtest.Exec(t, conn, `UPDATE seat_state SET state = 'SOLD' WHERE change_id = 5`)
	pgtest.Exec(t, conn, `DELETE FROM event WHERE venue_id = 7`)
	waitFresh(t, conn, d, 10*time.Second)
	var name string
	require.NoError(t, conn.QueryRow(ctx, `SELECT cinema_name FROM venue WHERE cinema_id = 3 LIMIT 1`).Scan(&name))
	require.Equal(t, "Renamed", name)
	var sold int
	require.NoError(t, conn.QueryRow(ctx, `SELECT sold_count FROM event_seat_state_change WHERE id = 5`).Scan(&sold))
	require.Equal(t, 50, sold)
}
