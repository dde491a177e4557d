package main_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/demo"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/verify"
)

// Logical mode, the way it is checked: writers run throughout; the daemon is killed with SIGKILL
// and restarted four times, then PostgreSQL restarts with -m immediate under the last daemon.
// Afterwards no row may be stale or differ from a fresh computation.
func TestLogicalSurvivesKillAndImmediateRestart(t *testing.T) {
	cluster := pgtest.Cluster(t)
	if cluster == nil {
		t.Skip("needs the throwaway cluster")
	}
	dsn := cinemaDB(t)
	slot := "matcol_kill_test"
	t.Cleanup(func() { pgtest.DropSlot(dsn, slot) }) // after the daemon stops: a database with a slot cannot be dropped
	env := []string{"MATCOL_DATABASE_URL=" + dsn, "MATCOL_STATUS_LISTEN=", "MATCOL_INVALIDATION_MODE=logical",
		"MATCOL_INVALIDATION_SLOT=" + slot, "MATCOL_INVALIDATION_PUBLICATION=" + slot,
		"MATCOL_INVALIDATION_FIX_REPLICA_IDENTITY=true", "MATCOL_MATERIALIZER_SWEEP_INTERVAL=1s"}
	cfg := writeConfig(t, demo.Config)
	var logs bytes.Buffer
	var logMu sync.Mutex
	start := func() *exec.Cmd {
		cmd := exec.Command(binary, "run", "-c", cfg)
		cmd.Env = append(os.Environ(), env...)
		w := &lockedWriter{mu: &logMu, b: &logs}
		cmd.Stdout, cmd.Stderr = w, w
		require.NoError(t, cmd.Start())
		return cmd
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes sync.Map
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 11))
			var conn *pgx.Conn
			n := 0
			defer func() {
				writes.Store(seed, n)
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
				if demo.Write(ctx, conn, 1, r) == nil {
					n++
				}
				cancel()
			}
		}(uint64(i + 1))
	}

	cmd := start()
	for i := 0; i < 4; i++ {
		time.Sleep(2 * time.Second)
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		_ = cmd.Wait()
		time.Sleep(300 * time.Millisecond)
		cmd = start()
	}
	time.Sleep(2 * time.Second)
	require.NoError(t, cluster.Restart(context.Background(), "immediate"))
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	total := 0
	writes.Range(func(_, v any) bool { total += v.(int); return true })
	require.Greater(t, total, 100)

	conn := pgtest.Connect(t, dsn)
	deadline := time.Now().Add(90 * time.Second)
	// A daemon killed before its first apply committed leaves no registry yet: the last one
	// installs it.
	var p *plan.Plan
	var err error
	for p == nil {
		if p, _, err = daemon.LoadPlan(context.Background(), conn); err != nil {
			require.True(t, time.Now().Before(deadline), "no registry: %v", err)
			time.Sleep(200 * time.Millisecond)
		}
	}
	var stale, pending int
	var drift []verify.Drift
	for {
		require.Nil(t, cmd.ProcessState, "the daemon exited")
		stale, pending = 0, 0
		require.NoError(t, conn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM venue WHERE materialized_at IS NULL)
			+ (SELECT count(*) FROM event_seat_state_change WHERE materialized_at IS NULL), (SELECT count(*) FROM matcol.pending)`).Scan(&stale, &pending))
		if stale == 0 && pending == 0 {
			drift, _, err = verify.Run(context.Background(), conn, p, verify.Options{IncludeStale: true})
			require.NoError(t, err)
			if len(drift) == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			logMu.Lock()
			t.Log(logs.String())
			logMu.Unlock()
			t.Fatalf("not fresh: %d stale, %d pending, %d drifted rows", stale, pending, len(drift))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%d writes; fresh after 4 SIGKILLs and an immediate PostgreSQL restart", total)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	_ = cmd.Wait()
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// Without fix_replica_identity, apply in logical mode fails and prints the exact statement to run;
// with it, apply runs the statement.
func TestLogicalApplyChecksReplicaIdentity(t *testing.T) {
	dsn := cinemaDB(t)
	cfg := writeConfig(t, demo.Config)
	env := []string{"MATCOL_DATABASE_URL=" + dsn, "MATCOL_INVALIDATION_MODE=logical",
		"MATCOL_INVALIDATION_PUBLICATION=matcol_ri_test"}
	r := matcol(t, env, "apply", "-c", cfg)
	require.NotZero(t, r.code)
	require.Contains(t, r.stdout+r.stderr, `ALTER TABLE "public"."event" REPLICA IDENTITY FULL;`)
	r = matcol(t, append(env, "MATCOL_INVALIDATION_FIX_REPLICA_IDENTITY=true"), "apply", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, `ran ALTER TABLE "public"."event" REPLICA IDENTITY FULL;`)
	conn := pgtest.Connect(t, dsn)
	var ident string
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT relreplident::text FROM pg_class WHERE oid = 'public.event'::regclass`).Scan(&ident))
	require.Equal(t, "f", ident)
}
