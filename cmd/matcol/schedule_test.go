package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
)

func TestSchedule(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, `CREATE TABLE src (id int PRIMARY KEY);
		INSERT INTO src SELECT generate_series(1, 10);
		CREATE MATERIALIZED VIEW a AS SELECT id FROM src;
		CREATE UNIQUE INDEX ON a (id);
		CREATE TABLE divisor (x int);
		CREATE MATERIALIZED VIEW c AS SELECT 1 / (SELECT count(*)::int FROM divisor) AS q WITH NO DATA;
		CREATE MATERIALIZED VIEW forgotten AS SELECT 1 AS one`)
	env := []string{"MATCOL_DATABASE_URL=" + dsn, "MATCOL_STATUS_LISTEN="}
	missing := writeConfig(t, "matviews:\n  - name: public.nope\n    refresh_interval: 1m\n")
	cfg := writeConfig(t, "matviews:\n  - name: public.a\n    refresh_interval: 10m\n    maximum_execution_duration: 1m\n")

	r := matcol(t, env, "apply", "-c", missing)
	require.NotZero(t, r.code)
	require.Contains(t, r.stderr, "matviews: materialized view public.nope does not exist")
	r = matcol(t, env, "apply", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "scheduled matview public.a")

	r = matcol(t, env, "schedule", "add", "c", "--every", "1h", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	r = matcol(t, env, "schedule", "add", "a", "--every", "1h", "-c", cfg)
	require.NotZero(t, r.code)
	require.Contains(t, r.stderr, "public.a is declared under matviews: in the config")

	r = matcol(t, env, "schedule", "run-now", "a", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "refreshed public.a (concurrently)")
	r = matcol(t, env, "schedule", "run-now", "public.c", "-c", cfg)
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "division by zero")

	r = matcol(t, env, "schedule", "list", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "division_by_zero: division by zero")
	require.Contains(t, r.stdout, "not scheduled: public.forgotten")

	r = matcol(t, env, "schedule", "list", "--json", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	var doc struct {
		Matviews []struct {
			Name          string  `json:"name"`
			Source        string  `json:"source"`
			Interval      float64 `json:"refresh_interval_seconds"`
			LastSuccessAt *string `json:"last_success_at"`
			NextDueAt     string  `json:"next_due_at"`
			LastError     string  `json:"last_error"`
			LastMode      string  `json:"last_mode"`
		} `json:"matviews"`
		Unscheduled []string `json:"unscheduled"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &doc), r.stdout)
	require.Len(t, doc.Matviews, 2)
	a, c := doc.Matviews[0], doc.Matviews[1]
	require.Equal(t, "public.a", a.Name)
	require.Equal(t, "config", a.Source)
	require.Equal(t, 600.0, a.Interval)
	require.NotNil(t, a.LastSuccessAt)
	require.Equal(t, "concurrently", a.LastMode)
	require.Equal(t, "public.c", c.Name)
	require.Equal(t, "cli", c.Source)
	require.Contains(t, c.LastError, "division by zero")
	require.NotEmpty(t, c.NextDueAt)
	require.Equal(t, []string{"public.forgotten"}, doc.Unscheduled)

	r = matcol(t, env, "schedule", "remove", "a", "-c", cfg)
	require.NotZero(t, r.code)
	require.Contains(t, r.stderr, "remove it there")
	r = matcol(t, env, "schedule", "remove", "c", "-c", cfg)
	require.Zero(t, r.code, r.stderr)

	// apply leaves CLI entries alone and removes config entries that left the config.
	r = matcol(t, env, "schedule", "add", "forgotten", "--every", "1h", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	r = matcol(t, env, "apply", "-c", writeConfig(t, "matviews: []\n"))
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "unscheduled matview public.a")
	var names []string
	rows, err := conn.Query(t.Context(), `SELECT view_name FROM matcol.matview_schedule ORDER BY 1`)
	require.NoError(t, err)
	for rows.Next() {
		var n string
		require.NoError(t, rows.Scan(&n))
		names = append(names, n)
	}
	require.Equal(t, []string{"forgotten"}, names)
}

// The check through `matcol run`: three views at 2 s; a (unique index) and b (built on a)
// refresh at least twice within 14 s, a CONCURRENTLY, and c's error shows in `schedule list`.
func TestRunRefreshesScheduledViews(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, `CREATE TABLE src (id int PRIMARY KEY);
		INSERT INTO src SELECT generate_series(1, 10);
		CREATE MATERIALIZED VIEW a AS SELECT id FROM src;
		CREATE UNIQUE INDEX ON a (id);
		CREATE MATERIALIZED VIEW b AS SELECT count(*) AS n FROM a;
		CREATE TABLE divisor (x int);
		CREATE MATERIALIZED VIEW c AS SELECT 1 / (SELECT count(*)::int FROM divisor) AS q WITH NO DATA`)
	env := []string{"MATCOL_DATABASE_URL=" + dsn, "MATCOL_STATUS_LISTEN="}
	cfg := writeConfig(t, `matviews:
  - name: public.a
    refresh_interval: 2s
  - name: public.b
    refresh_interval: 2s
  - name: public.c
    refresh_interval: 2s
`)
	cmd := exec.Command(binary, "run", "-c", cfg, "--log-format", "json")
	cmd.Env = append(os.Environ(), env...)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	began := time.Now()
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	count := func(view, mode string) int {
		var n int
		require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM matcol.matview_execution e
			JOIN matcol.matview_schedule s ON s.id = e.schedule_id
			WHERE s.view_name = $1 AND e.mode = $2 AND e.execution_is_successful`, view, mode).Scan(&n))
		return n
	}
	require.Eventually(t, func() bool {
		if v, _ := registryVersion(conn); v < 2 {
			return false
		}
		return count("a", "concurrently") >= 2 && count("b", "plain") >= 2
	}, 14*time.Second-time.Since(began), 100*time.Millisecond, "a and b were not both refreshed twice within 14s")

	r := matcol(t, env, "schedule", "list", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "division_by_zero: division by zero")

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, cmd.Wait(), stderr.String())
}

func registryVersion(conn *pgx.Conn) (int, error) {
	var v int
	err := conn.QueryRow(context.Background(), `SELECT coalesce(max(version), 0) FROM matcol.schema_migration`).Scan(&v)
	return v, err
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Logical mode syncs the publication instead of triggers; the matview schedule is synced all the same.
func TestApplySchedulesMatviewsInLogicalMode(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, `CREATE TABLE src (id int PRIMARY KEY);
		CREATE MATERIALIZED VIEW a AS SELECT id FROM src`)
	env := []string{"MATCOL_DATABASE_URL=" + dsn, "MATCOL_STATUS_LISTEN="}
	cfg := writeConfig(t, "invalidation: {mode: logical}\nmatviews:\n  - name: public.a\n    refresh_interval: 10m\n")
	r := matcol(t, env, "apply", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "scheduled matview public.a")
	var n int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM matcol.matview_schedule WHERE view_name = 'a'`).Scan(&n))
	require.Equal(t, 1, n)
}
