package main_test

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/demo"
	"github.com/matcol/matcol/internal/pgtest"
)

// Chaos: writers keep changing every source while the daemon is SIGKILLed and restarted every
// few seconds, its connections (the walsender's too) are terminated, and PostgreSQL itself
// restarts with -m immediate. Afterwards verify --all must find no drift. MATCOL_CHAOS_SECONDS
// runs it longer (default 15).
func TestChaosTriggerMode(t *testing.T) { testChaos(t, "trigger") }

func TestChaosLogicalMode(t *testing.T) { testChaos(t, "logical") }

func testChaos(t *testing.T, mode string) {
	cl := pgtest.Cluster(t)
	if cl == nil {
		t.Skip("needs the test cluster to restart PostgreSQL")
	}
	secs := 15
	if s, err := strconv.Atoi(os.Getenv("MATCOL_CHAOS_SECONDS")); err == nil && s > 0 {
		secs = s
	}
	dsn := cinemaDB(t)
	env := []string{"MATCOL_DATABASE_URL=" + dsn, "MATCOL_STATUS_LISTEN=", "MATCOL_MATERIALIZER_SWEEP_INTERVAL=1s",
		"MATCOL_INVALIDATION_MODE=" + mode, "MATCOL_INVALIDATION_FIX_REPLICA_IDENTITY=true", "MATCOL_INVALIDATION_SLOT=chaos"}
	cfg := writeConfig(t, demo.Config)
	start := func() *exec.Cmd {
		cmd := exec.Command(binary, "run", "-c", cfg, "--log-level", "error")
		cmd.Env = append(os.Environ(), env...)
		require.NoError(t, cmd.Start())
		return cmd
	}
	daemon := start()

	ctx, stop := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second)
	defer stop()
	var writes atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 3))
			var conn *pgx.Conn
			for ctx.Err() == nil {
				if conn == nil {
					c, err := pgx.Connect(ctx, dsn)
					if err != nil {
						time.Sleep(100 * time.Millisecond)
						continue
					}
					conn = c
				}
				// Not cut off when the run ends: its backend could commit after the check below.
				if err := demo.Write(context.WithoutCancel(ctx), conn, 1, r); err == nil {
					writes.Add(1)
				} else if conn.IsClosed() || ctx.Err() == nil {
					_ = conn.Close(context.Background())
					conn = nil
				}
			}
			if conn != nil {
				_ = conn.Close(context.Background())
			}
		}(uint64(i))
	}

	killer := pgtest.Connect(t, dsn)
	round := 0
	for ctx.Err() == nil {
		time.Sleep(time.Duration(1500+rand.IntN(1500)) * time.Millisecond)
		round++
		switch round % 4 {
		case 0:
			require.NoError(t, cl.Restart(context.Background(), "immediate"))
			killer = pgtest.Connect(t, dsn)
		case 1:
			_, _ = killer.Exec(context.Background(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE application_name LIKE 'matcol%' AND pid <> pg_backend_pid()`)
		default:
			_ = daemon.Process.Signal(syscall.SIGKILL)
			_ = daemon.Wait()
			daemon = start()
		}
	}
	wg.Wait()
	require.Greater(t, writes.Load(), int64(100))

	// Quiesce: the daemon catches up, then verify compares every row with a fresh computation.
	conn := pgtest.Connect(t, dsn)
	if mode == "logical" {
		var lsn string
		require.NoError(t, conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&lsn))
		require.Eventually(t, func() bool {
			var done bool
			err := conn.QueryRow(context.Background(), `SELECT coalesce((SELECT confirmed_flush_lsn >= $1::pg_lsn
				FROM pg_replication_slots WHERE slot_name = 'chaos'), false)`, lsn).Scan(&done)
			return err == nil && done
		}, 60*time.Second, 200*time.Millisecond, "the slot must confirm every write")
	}
	require.Eventually(t, func() bool {
		var stale int
		err := conn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM venue WHERE materialized_at IS NULL)
			+ (SELECT count(*) FROM event_seat_state_change WHERE materialized_at IS NULL)
			+ (SELECT count(*) FROM matcol.pending)`).Scan(&stale)
		return err == nil && stale == 0
	}, 60*time.Second, 200*time.Millisecond)
	time.Sleep(2 * time.Second) // a daemon started in the last round must have its signal handler up
	_ = daemon.Process.Signal(syscall.SIGTERM)
	require.NoError(t, daemon.Wait())
	r := matcol(t, env, "verify", "-c", cfg, "--all", "--rate", "0")
	require.Zero(t, r.code, r.stdout+r.stderr)
	require.Contains(t, r.stdout, "0 values differ")
	t.Logf("%s mode: %d writes over %d chaos rounds", mode, writes.Load(), round)
}
