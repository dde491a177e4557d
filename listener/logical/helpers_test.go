package logical_test

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"strings"
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
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/verify"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// bundle is one test's database, config and slot.
type bundle struct {
	dsn  string
	conn *pgx.Conn
	cfg  *config.Config
	slot string
}

// setup creates a database with the demo schema and a logical-mode config on a unique slot,
// which is dropped at cleanup (a database with a slot cannot be dropped).
func setup(t *testing.T) *bundle {
	t.Helper()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, demo.Schema)
	require.NoError(t, demo.Seed(context.Background(), conn, 1))
	return setupDB(t, dsn, conn, demo.Config)
}

// setupDB is setup on a database the caller prepared, with its own config.
func setupDB(t *testing.T, dsn string, conn *pgx.Conn, yaml string) *bundle {
	t.Helper()
	b := make([]byte, 4)
	_, _ = crand.Read(b)
	slot := "matcol_t_" + hex.EncodeToString(b)
	t.Cleanup(func() { pgtest.DropSlot(dsn, slot) })
	yaml = strings.Replace(yaml, "mode: trigger", "mode: logical\n  slot: "+slot+"\n  publication: "+slot+"\n  fix_replica_identity: true", 1)
	f := t.TempDir() + "/matcol.yaml"
	require.NoError(t, os.WriteFile(f, []byte(yaml), 0o600))
	cfg, err := config.Load(f, nil)
	require.NoError(t, err)
	cfg.DatabaseURL = dsn
	cfg.Status.Listen = ""
	cfg.Materializer.SweepInterval = time.Second
	require.NoError(t, cfg.Validate())
	require.Equal(t, "logical", cfg.Invalidation.Mode)
	return &bundle{dsn: dsn, conn: conn, cfg: cfg, slot: slot}
}

func testLogger(t *testing.T, name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Info, Output: pgtest.LogWriter(t)})
}

// running is a daemon started in this process.
type running struct {
	d      *daemon.Daemon
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// stop cancels the daemon and waits for it.
func (r *running) stop(t *testing.T) {
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			require.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Error("daemon did not stop within 20s")
		}
	})
}

func startDaemon(t *testing.T, b *bundle, name string) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.Start(ctx, b.cfg, testLogger(t, name))
	require.NoError(t, err)
	r := &running{d: d, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- d.Wait(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// waitFresh polls until no row of any target is stale, the queue is empty, and verify finds no
// drift.
func waitFresh(t *testing.T, conn *pgx.Conn, p *plan.Plan, within time.Duration) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(within)
	var stale, pending int
	var drift []verify.Drift
	for time.Now().Before(deadline) {
		stale = 0
		ok := true
		for _, tg := range p.Targets {
			var n int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+tg.Table.Sanitize()+" WHERE materialized_at IS NULL").Scan(&n); err != nil {
				ok = false // the server may be restarting
				break
			}
			stale += n
		}
		if ok && conn.QueryRow(ctx, "SELECT count(*) FROM matcol.pending").Scan(&pending) == nil && stale == 0 && pending == 0 {
			var err error
			drift, _, err = verify.Run(ctx, conn, p, verify.Options{IncludeStale: true})
			require.NoError(t, err)
			if len(drift) == 0 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(drift) > 5 {
		drift = drift[:5]
	}
	t.Fatalf("not fresh after %s: %d stale rows, %d pending, drift %+v", within, stale, pending, drift)
}

// load runs demo writes on dsn until stop is closed, tolerating errors (the server may restart),
// and returns how many succeeded.
func load(t *testing.T, dsn string, workers int, stop <-chan struct{}) func() int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 7))
			var conn *pgx.Conn
			defer func() {
				if conn != nil {
					conn.Close(context.Background())
				}
			}()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if conn == nil || conn.IsClosed() {
					c, err := pgx.Connect(context.Background(), dsn)
					if err != nil {
						time.Sleep(100 * time.Millisecond)
						continue
					}
					conn = c
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := demo.Write(ctx, conn, 1, r)
				cancel()
				if err == nil {
					mu.Lock()
					total++
					mu.Unlock()
				} else if conn.IsClosed() {
					conn = nil
				}
			}
		}(uint64(i + 1))
	}
	return func() int {
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return total
	}
}

// slotLSNs returns the slot's confirmed_flush_lsn and the server's current WAL position.
func slotLag(t *testing.T, conn *pgx.Conn, slot string) (confirmed string, lag int64) {
	t.Helper()
	err := conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&confirmed, &lag)
	require.NoError(t, err)
	return confirmed, lag
}

// waitSlot polls until the slot exists.
func waitSlot(t *testing.T, conn *pgx.Conn, slot string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		var n int
		require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active`, slot).Scan(&n))
		if n == 1 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("slot %s not active within %s", slot, within)
}

// waitStreaming polls until the daemon streams from its slot, after any first-start resync.
func waitStreaming(t *testing.T, r *running, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !r.d.Logical.Stats().Streaming {
		require.True(t, time.Now().Before(deadline), "not streaming within %s", within)
		time.Sleep(50 * time.Millisecond)
	}
}
