package materializer_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/registry"
)

// probeSetup gives a table of one stale row two enrichments under statement_timeout timeout.
// a_flaky fails its first run (the batch) and sleeps an hour in every later one: the runs that
// look for the enrichment at fault.
func probeSetup(t *testing.T, timeout time.Duration) *bundle {
	t.Helper()
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1, PollInterval: 20 * time.Millisecond,
		SweepInterval: 200 * time.Millisecond})
	pgtest.Exec(t, b.conn, `CREATE TABLE probe (id int PRIMARY KEY, a int, b int, materialized_at timestamptz);
		CREATE SEQUENCE calls;
		CREATE FUNCTION flaky(id int) RETURNS int LANGUAGE plpgsql VOLATILE AS $$
		BEGIN
			IF nextval('calls') = 1 THEN RETURN 1 / 0; END IF;
			PERFORM pg_sleep(3600);
			RETURN 1;
		END $$`)
	s := registry.Settings{StatementTimeout: timeout}
	applyDefs(t, b.conn, []registry.Enrichment{
		{Name: "a_flaky", Target: tableName("public", "probe"), Columns: []string{"a"}, Self: new(true), Settings: s,
			SQL: `SELECT id, flaky(id) AS a FROM probe WHERE id = ANY($1)`},
		{Name: "b_plain", Target: tableName("public", "probe"), Columns: []string{"b"}, Self: new(true), Settings: s,
			SQL: `SELECT id, 424242 AS b FROM probe WHERE id = ANY($1)`},
	})
	reload(t, b)
	pgtest.Exec(t, b.conn, `INSERT INTO probe (id) VALUES (1)`)
	t.Cleanup(func() { unblock(b) })
	return b
}

// unblock ends the test's sleeping statements, so that a materializer stuck in one can stop.
func unblock(b *bundle) {
	_, _ = b.conn.Exec(context.Background(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%flaky(id)%'`)
}

// The search for the enrichment at fault runs under the batch's statement_timeout: an enrichment
// that hangs when run alone is blamed after the timeout instead of holding a worker forever.
func TestCulpritProbeIsBounded(t *testing.T) {
	b := probeSetup(t, time.Second)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.mat.Run(ctx) }()
	defer func() {
		stop()
		unblock(b)
		<-done
	}()
	var enrichment, msg string
	require.Eventually(t, func() bool {
		return b.conn.QueryRow(context.Background(), `SELECT enrichment, error FROM matcol.failure`).Scan(&enrichment, &msg) == nil
	}, 20*time.Second, 50*time.Millisecond, "the row must be quarantined once the probe times out")
	require.Equal(t, "a_flaky", enrichment)
	require.Contains(t, msg, "division by zero")
}

// A stop interrupts the search for the enrichment at fault at once; the row stays stale for the
// next start.
func TestStopInterruptsCulpritProbe(t *testing.T) {
	b := probeSetup(t, time.Minute)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.mat.Run(ctx) }()
	require.Eventually(t, func() bool {
		var n int
		_ = b.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND state = 'active' AND query LIKE '%flaky(id)%' AND query NOT LIKE '%424242%'
			  AND now() - query_start > interval '200 milliseconds'`).Scan(&n)
		return n > 0
	}, 20*time.Second, 50*time.Millisecond, "a_flaky never ran alone")
	stop()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		unblock(b)
		<-done
		t.Fatal("the materializer did not stop within 5s while looking for the failing enrichment")
	}
	var stale bool
	require.NoError(t, b.conn.QueryRow(context.Background(), `SELECT materialized_at IS NULL FROM probe`).Scan(&stale))
	require.True(t, stale)
}

// A privilege matcol's role lacks fails every row alike: no row is quarantined, the table's
// batches back off, and the error is logged once, not at every retry. Granted again, the rows
// are computed.
func TestPermissionErrorIsNoRowError(t *testing.T) {
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1})
	b.catchUp(t)
	pool, role := rolePool(t, b)
	var logs lockedLog
	log := hclog.New(&hclog.LoggerOptions{Output: &logs, JSONFormat: true, Level: hclog.Info})
	m := materializer.New(pool, b.plan, materializer.Config{Workers: 1, PollInterval: 20 * time.Millisecond,
		SweepInterval: 200 * time.Millisecond}, log)
	pgtest.Exec(t, b.conn, `REVOKE SELECT ON event FROM `+role)

	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { stop(); <-done }()
	pgtest.Exec(t, b.conn, `UPDATE venue SET materialized_at = NULL`)
	require.Eventually(t, func() bool { return m.Stats.BatchErrors.Load() >= 4 }, 30*time.Second, 50*time.Millisecond)
	var failures int
	require.NoError(t, b.conn.QueryRow(context.Background(), `SELECT count(*) FROM matcol.failure`).Scan(&failures))
	require.Zero(t, failures, "a missing privilege is no fault of any row")
	require.Zero(t, m.Stats.RowsFailed.Load())
	require.Equal(t, 1, strings.Count(logs.String(), "batch failed"), logs.String())
	require.Contains(t, logs.String(), "permission denied for table event")

	pgtest.Exec(t, b.conn, `GRANT SELECT ON event TO `+role)
	require.Eventually(t, func() bool {
		var stale int
		_ = b.conn.QueryRow(context.Background(), `SELECT count(*) FROM venue WHERE materialized_at IS NULL`).Scan(&stale)
		return stale == 0
	}, 60*time.Second, 50*time.Millisecond)
	require.Contains(t, logs.String(), "batches succeed again")
	require.Empty(t, b.drift(t))
}
