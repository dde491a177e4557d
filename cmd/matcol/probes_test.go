package main_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/demo"
	"github.com/matcol/matcol/internal/pgtest"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

func httpGet(url string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// startRun starts `matcol run` and stops it with SIGTERM at cleanup, requiring a prompt exit.
func startRun(t *testing.T, env []string, args ...string) time.Time {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"run"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	started := time.Now()
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Error("matcol run did not stop within 20s of SIGTERM")
		}
	})
	return started
}

// healthyWithin polls /healthz and requires a 200 within d of start.
func healthyWithin(t *testing.T, base string, started time.Time, d time.Duration) {
	t.Helper()
	for {
		if code, _ := httpGet(base + "/healthz"); code == 200 {
			return
		}
		if time.Since(started) > d {
			t.Fatalf("/healthz did not answer within %s of matcol run", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A Kubernetes startup probe must not kill a daemon that waits for its database: /healthz answers
// within seconds of `matcol run` while the database is unreachable, /readyz says not ready.
func TestHealthzWhileDatabaseUnreachable(t *testing.T) {
	addr := freeAddr(t)
	cfg := writeConfig(t, "database_url: postgres://matcol@127.0.0.1:1/app?connect_timeout=1\nstatus:\n  listen: "+addr+"\n")
	started := startRun(t, nil, "-c", cfg)
	base := "http://" + addr
	healthyWithin(t, base, started, 5*time.Second)
	code, body := httpGet(base + "/readyz")
	require.Equal(t, 503, code, body)
	require.Contains(t, body, "starting")
	code, _ = httpGet(base + "/status")
	require.Equal(t, 503, code)
	code, body = httpGet(base + "/metrics")
	require.Equal(t, 200, code)
	require.Contains(t, body, "matcol_build_info{")
	require.Contains(t, body, "matcol_status_up 0")
}

// A slow first apply (here: held up by another install's lock) keeps /healthz answering and
// /readyz not ready until the daemon runs.
func TestHealthzDuringSlowApply(t *testing.T) {
	dsn := cinemaDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(0x6d6174636f6c0001)) // install's lock
	require.NoError(t, err)
	addr := freeAddr(t)
	started := startRun(t, []string{"MATCOL_DATABASE_URL=" + dsn, "MATCOL_STATUS_LISTEN=" + addr}, "-c", writeConfig(t, demo.Config))
	base := "http://" + addr
	healthyWithin(t, base, started, 5*time.Second)
	time.Sleep(time.Second)
	code, body := httpGet(base + "/readyz")
	require.Equal(t, 503, code, body)
	require.NoError(t, tx.Rollback(ctx))
	require.Eventually(t, func() bool { c, _ := httpGet(base + "/readyz"); return c == 200 }, 60*time.Second, 200*time.Millisecond)
	_, body = httpGet(base + "/metrics")
	require.True(t, strings.Contains(body, "matcol_status_up 1"), body)
}
