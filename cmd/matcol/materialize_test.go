package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
)

const ordersConfig = `
enrichments:
  - name: order_total
    table: orders
    columns: [total]
    sql: SELECT o.id, (SELECT sum(cents) FROM line l WHERE l.order_id = o.id)::bigint AS total FROM orders o WHERE o.id = ANY($1)
    depends_on: [{table: line, columns: [order_id]}]
  - name: order_inverse
    table: orders
    columns: [inv]
    sql: SELECT id, 1 / (id - 777)::numeric AS inv FROM orders WHERE id = ANY($1)
`

// ordersDB makes a database of n fresh orders, three lines each, with ordersConfig applied, and
// returns a connection to it, the environment that points matcol at it and the config's path.
func ordersDB(t *testing.T, n int) (*pgx.Conn, []string, string) {
	t.Helper()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, fmt.Sprintf(`CREATE TABLE orders (id bigint PRIMARY KEY, total bigint, inv numeric, materialized_at timestamptz);
		CREATE TABLE line (id bigserial PRIMARY KEY, order_id bigint NOT NULL, cents bigint NOT NULL);
		CREATE INDEX ON line (order_id);
		INSERT INTO orders (id, inv, materialized_at) SELECT g, 0, now() FROM generate_series(1, %[1]d) g;
		INSERT INTO line (order_id, cents) SELECT 1 + g %% %[1]d, g FROM generate_series(1, 3 * %[1]d) g;`, n))
	env := []string{"MATCOL_DATABASE_URL=" + dsn, "MATCOL_STATUS_LISTEN=", "MATCOL_LOG_FORMAT=text"}
	cfg := writeConfig(t, ordersConfig)
	r := matcol(t, env, "apply", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	return conn, env, cfg
}

// The scenario: a new column on otherwise fresh rows is filled by one enrichment; a
// backfill killed with SIGKILL resumes and finishes; a failing row shows in matcol failures.
func TestBackfillKilledResumesAndFailuresList(t *testing.T) {
	conn, env, cfg := ordersDB(t, 30000)
	ctx := context.Background()

	cmd := exec.Command(binary, "backfill", "-c", cfg, "--enrichment", "order_total", "--rate", "5000", "--batch", "500")
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	require.Eventually(t, func() bool {
		var done int64
		_ = conn.QueryRow(ctx, `SELECT coalesce(max(rows_done), 0) FROM matcol.backfill`).Scan(&done)
		return done >= 5000
	}, 30*time.Second, 50*time.Millisecond)
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	var done int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT rows_done FROM matcol.backfill`).Scan(&done))
	require.Less(t, done, int64(30000), "killed halfway")

	r := matcol(t, env, "backfill", "-c", cfg, "--enrichment", "order_total", "--jobs", "0")
	require.NotZero(t, r.code)
	require.Contains(t, r.stderr, "--jobs 0: give at least 1")
	r = matcol(t, env, "backfill", "-c", cfg, "--enrichment", "order_total", "--jobs", "2", "--async")
	require.NotZero(t, r.code)
	require.Contains(t, r.stderr, "--async backfills run one batch at a time")

	// The resumed run writes two batches at once.
	r = matcol(t, env, "backfill", "-c", cfg, "--enrichment", "order_total", "--jobs", "2")
	require.Zero(t, r.code, r.stdout+r.stderr)
	require.Contains(t, r.stdout, "resuming backfill 1")
	require.Contains(t, r.stdout, "backfill 1 done: 30000 rows")
	var wrong, restamped int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM orders o
		WHERE total IS DISTINCT FROM (SELECT sum(cents) FROM line l WHERE l.order_id = o.id)`).Scan(&wrong))
	require.Zero(t, wrong)
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM orders WHERE inv <> 0`).Scan(&restamped))
	require.Zero(t, restamped, "the table's other enrichment must not run")

	// The daemon quarantines the row whose enrichment fails; everything else gets fresh.
	pgtest.Exec(t, conn, `UPDATE orders SET materialized_at = NULL WHERE id BETWEEN 700 AND 800`)
	run := exec.Command(binary, "run", "-c", cfg)
	run.Env = append(os.Environ(), env...)
	require.NoError(t, run.Start())
	defer func() { _ = run.Process.Signal(syscall.SIGTERM); _ = run.Wait() }()
	require.Eventually(t, func() bool {
		var stale int
		_ = conn.QueryRow(ctx, `SELECT count(*) FROM orders WHERE materialized_at IS NULL`).Scan(&stale)
		return stale == 1
	}, 30*time.Second, 100*time.Millisecond)
	r = matcol(t, env, "failures", "-c", cfg, "--json")
	require.Zero(t, r.code, r.stderr)
	var list []struct {
		Table      string   `json:"table"`
		Key        []string `json:"key"`
		Enrichment string   `json:"enrichment"`
		Error      string   `json:"error"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &list))
	require.Len(t, list, 1)
	require.Equal(t, []string{"777"}, list[0].Key)
	require.Equal(t, "order_inverse", list[0].Enrichment)
	require.Contains(t, list[0].Error, "division by zero")
	var id int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT id FROM orders WHERE materialized_at IS NULL`).Scan(&id))
	require.Equal(t, int64(777), id)
	r = matcol(t, env, "retry", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "1 rows re-queued")
}

// A second `matcol backfill` of a backfill another process runs (after a kill, usually the
// daemon that took it over) follows its progress, takes it over when that process dies, and
// reports when the other process finishes it.
func TestBackfillFollowsAndTakesOver(t *testing.T) {
	conn, env, cfg := ordersDB(t, 20000)
	ctx := context.Background()
	start := func(args ...string) (*exec.Cmd, *lockedBuffer) {
		cmd := exec.Command(binary, append([]string{"backfill", "-c", cfg, "--enrichment", "order_total"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		var out lockedBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd, &out
	}
	doneRows := func() int64 {
		var done int64
		_ = conn.QueryRow(ctx, `SELECT coalesce(max(rows_done), 0) FROM matcol.backfill WHERE status = 'running'`).Scan(&done)
		return done
	}

	first, _ := start("--rate", "2000", "--batch", "500", "--jobs", "1")
	require.Eventually(t, func() bool { return doneRows() >= 1000 }, 30*time.Second, 50*time.Millisecond)
	second, out := start()
	require.Eventually(t, func() bool { return strings.Contains(out.String(), "following its progress") }, 30*time.Second, 50*time.Millisecond)
	require.Contains(t, out.String(), "backfill is running in another process (last taken by matcol backfill pid")
	require.NoError(t, first.Process.Signal(syscall.SIGKILL))
	_ = first.Wait()
	require.NoError(t, second.Wait(), out.String())
	require.Contains(t, out.String(), "backfill 1: its process went away; continuing here")
	require.Contains(t, out.String(), "resuming backfill 1")
	require.Contains(t, out.String(), "backfill 1 done: 20000 rows")
	var wrong int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM orders o
		WHERE total IS DISTINCT FROM (SELECT sum(cents) FROM line l WHERE l.order_id = o.id)`).Scan(&wrong))
	require.Zero(t, wrong)

	// The other process finishes: the follower says so and succeeds.
	first, _ = start("--restart", "--rate", "5000", "--batch", "500", "--jobs", "1")
	require.Eventually(t, func() bool { return doneRows() >= 500 }, 30*time.Second, 50*time.Millisecond)
	second, out = start()
	require.NoError(t, second.Wait(), out.String())
	require.NoError(t, first.Wait())
	require.Contains(t, out.String(), "following its progress")
	require.Regexp(t, `backfill \d+ done by another process: 20000 rows`, out.String())
}

// apply names the backfill that brings rows stamped before it up to a changed definition: a new
// sql, or an enrichment added to a table others already keep; not a change of settings, nor a
// table registered for the first time.
func TestApplyNamesTheBackfillsItLeaves(t *testing.T) {
	conn, env, _ := ordersDB(t, 10)
	hint := func(out, name string) bool {
		return strings.Contains(out, "enrichment "+name+": rows stamped before this apply keep the values of its previous definition until a backfill: matcol backfill --enrichment "+name)
	}

	settings := strings.Replace(ordersConfig, "    table: orders\n    columns: [inv]", "    table: orders\n    batch_size: 7\n    columns: [inv]", 1)
	r := matcol(t, env, "apply", "-c", writeConfig(t, settings))
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "updated enrichment order_inverse")
	require.NotContains(t, r.stdout, "rows stamped before", "a setting changes no value")

	changed := strings.Replace(settings, "::bigint AS total", "::bigint + 0 AS total", 1)
	r = matcol(t, env, "apply", "-c", writeConfig(t, changed))
	require.Zero(t, r.code, r.stderr)
	require.True(t, hint(r.stdout, "order_total"), r.stdout)
	require.False(t, hint(r.stdout, "order_inverse"), r.stdout)

	added := changed + `  - name: order_lines
    table: orders
    columns: [lines]
    sql: SELECT o.id, (SELECT count(*) FROM line l WHERE l.order_id = o.id) AS lines FROM orders o WHERE o.id = ANY($1)
    depends_on: [{table: line, columns: [order_id]}]
`
	pgtest.Exec(t, conn, `ALTER TABLE orders ADD COLUMN lines bigint`)
	r = matcol(t, env, "apply", "-c", writeConfig(t, added))
	require.Zero(t, r.code, r.stderr)
	require.True(t, hint(r.stdout, "order_lines"), r.stdout)
	require.False(t, hint(r.stdout, "order_total"), r.stdout)
}
