package refresh_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/refresh"
	"github.com/matcol/matcol/registry"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

type bundle struct {
	dsn  string
	conn *pgx.Conn
}

// setup gives a fresh database with schema matcol installed and the given SQL run.
func setup(t *testing.T, schema string) *bundle {
	t.Helper()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	_, err := registry.Install(context.Background(), conn)
	require.NoError(t, err)
	if schema != "" {
		pgtest.Exec(t, conn, schema)
	}
	return &bundle{dsn: dsn, conn: conn}
}

func (b *bundle) pool(t *testing.T, role string) *pgxpool.Pool {
	t.Helper()
	p, err := dial.Pool(context.Background(), b.dsn, role, dial.PoolOptions{MaxConns: 8})
	require.NoError(t, err)
	t.Cleanup(p.Close)
	return p
}

// schedule adds views from the CLI side.
func (b *bundle) schedule(t *testing.T, name string, o refresh.Options) {
	t.Helper()
	_, err := refresh.Add(context.Background(), b.conn, name, o)
	require.NoError(t, err)
}

// start runs a scheduler until the test ends; the returned func stops it and waits.
func start(t *testing.T, pool *pgxpool.Pool, cfg refresh.Config) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := refresh.New(pool, cfg, hclog.New(&hclog.LoggerOptions{Name: "refresh", Level: hclog.Warn, Output: os.Stderr}))
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				err = errors.New("scheduler did not stop within 10s")
			}
			if errors.Is(err, context.Canceled) {
				err = nil
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

type execution struct {
	view       string
	started    time.Time
	ended      *time.Time
	ok         *bool
	mode       string
	errorName  string
	terminated *time.Time
}

func executions(t *testing.T, conn *pgx.Conn) []execution {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT s.view_name, e.started_at, e.ended_at,
			e.execution_is_successful, coalesce(e.mode, ''), coalesce(e.error_name, ''), e.terminated_at
		FROM matcol.matview_execution e JOIN matcol.matview_schedule s ON s.id = e.schedule_id
		ORDER BY e.started_at, e.id`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (execution, error) {
		var e execution
		err := r.Scan(&e.view, &e.started, &e.ended, &e.ok, &e.mode, &e.errorName, &e.terminated)
		return e, err
	})
	require.NoError(t, err)
	return out
}

func succeeded(es []execution, view string) []execution {
	var out []execution
	for _, e := range es {
		if e.view == view && e.ok != nil && *e.ok {
			out = append(out, e)
		}
	}
	return out
}

func view(t *testing.T, conn *pgx.Conn, name string) refresh.View {
	t.Helper()
	all, err := refresh.List(context.Background(), conn)
	require.NoError(t, err)
	for _, v := range all {
		if v.Name.Name == name {
			return v
		}
	}
	t.Fatalf("view %s is not scheduled", name)
	return refresh.View{}
}

const threeViews = `
CREATE TABLE src (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO src SELECT g, g FROM generate_series(1, 100) g;
CREATE MATERIALIZED VIEW a AS SELECT id, v FROM src;
CREATE UNIQUE INDEX a_id ON a (id);
CREATE MATERIALIZED VIEW b AS SELECT count(*) AS n, sum(v) AS total FROM a;
CREATE TABLE divisor (x int);
CREATE MATERIALIZED VIEW c AS SELECT 1 / (SELECT count(*)::int FROM divisor) AS q WITH NO DATA;
CREATE MATERIALIZED VIEW forgotten AS SELECT 1 AS one;
`

// The check: a (unique index) refreshes CONCURRENTLY, b (built on a) right after a, and
// c's failure shows in the schedule; within 14 s a and b refresh at least twice.
func TestThreeViews(t *testing.T) {
	b := setup(t, threeViews)
	var db string
	require.NoError(t, b.conn.QueryRow(context.Background(), `SELECT current_database()`).Scan(&db))
	pgtest.Exec(t, b.conn, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` SET log_statement = 'all'`)

	// Declared in YAML, synced the way apply does it.
	tx, err := b.conn.Begin(context.Background())
	require.NoError(t, err)
	ch, err := refresh.Sync(context.Background(), tx, []config.Matview{
		{Name: "public.b", RefreshInterval: 2 * time.Second}, // listed first: order comes from pg_depend
		{Name: "a", RefreshInterval: 2 * time.Second, MaximumExecutionDuration: time.Minute},
		{Name: "public.c", RefreshInterval: 2 * time.Second},
	})
	require.NoError(t, err)
	require.NoError(t, tx.Commit(context.Background()))
	require.ElementsMatch(t, []string{"public.a", "public.b", "public.c"}, ch.Added)

	began := time.Now()
	start(t, b.pool(t, "refresh"), refresh.Config{PollInterval: 200 * time.Millisecond, RetryBase: 500 * time.Millisecond})
	require.Eventually(t, func() bool {
		es := executions(t, b.conn)
		return len(succeeded(es, "a")) >= 2 && len(succeeded(es, "b")) >= 2
	}, 14*time.Second-time.Since(began), 100*time.Millisecond, "a and b were not both refreshed twice within 14s")

	es := executions(t, b.conn)
	for _, e := range succeeded(es, "a") {
		require.Equal(t, refresh.ModeConcurrently, e.mode)
	}
	// Each refresh of b starts after a refresh of a has ended, and soon after.
	for _, eb := range succeeded(es, "b") {
		var last *execution
		for i, ea := range es {
			if ea.view == "a" && ea.started.Before(eb.started) {
				last = &es[i]
			}
		}
		require.NotNil(t, last, "b refreshed before any refresh of a")
		require.NotNil(t, last.ended)
		require.False(t, last.ended.After(eb.started), "b started while a was refreshing")
		require.Less(t, eb.started.Sub(*last.ended), time.Second, "b did not follow a")
		require.Equal(t, refresh.ModePlain, eb.mode)
	}

	c := view(t, b.conn, "c")
	require.Contains(t, c.LastError, "division_by_zero")
	require.Contains(t, c.LastError, "division by zero")
	require.Positive(t, c.ConsecutiveFailures)
	require.Nil(t, c.LastSuccessAt)
	require.True(t, view(t, b.conn, "a").Exists)
	require.NotNil(t, view(t, b.conn, "a").LastSuccessAt)
	require.Equal(t, time.Minute, view(t, b.conn, "a").MaximumExecutionDuration)

	un, err := refresh.Unscheduled(context.Background(), b.conn)
	require.NoError(t, err)
	require.Len(t, un, 1)
	require.Equal(t, "public.forgotten", un[0].String())

	// The server's own statement log shows the concurrent refresh.
	if cl := pgtest.Cluster(t); cl != nil {
		log, err := os.ReadFile(filepath.Join(filepath.Dir(cl.DataDir), "server.log"))
		require.NoError(t, err)
		require.Contains(t, string(log), `REFRESH MATERIALIZED VIEW CONCURRENTLY "public"."a"`)
		require.Contains(t, string(log), `REFRESH MATERIALIZED VIEW "public"."b"`)
	}
}

// Two instances racing for one slow view never refresh it at the same time.
func TestRacingSchedulersNeverOverlap(t *testing.T) {
	b := setup(t, `CREATE MATERIALIZED VIEW slow AS
		SELECT g AS id FROM generate_series(1, 3) g, LATERAL pg_sleep(0.05)`)
	b.schedule(t, "slow", refresh.Options{RefreshInterval: 10 * time.Millisecond})
	cfg := refresh.Config{Workers: 3, PollInterval: 20 * time.Millisecond}
	stop1 := start(t, b.pool(t, "one"), cfg)
	stop2 := start(t, b.pool(t, "two"), cfg)
	require.Eventually(t, func() bool { return len(succeeded(executions(t, b.conn), "slow")) >= 12 },
		30*time.Second, 50*time.Millisecond)
	require.NoError(t, stop1())
	require.NoError(t, stop2())

	es := executions(t, b.conn)
	for i := 1; i < len(es); i++ {
		require.NotNil(t, es[i-1].ended)
		require.False(t, es[i].started.Before(*es[i-1].ended),
			"execution started at %s overlaps the one from %s to %s", es[i].started, es[i-1].started, *es[i-1].ended)
	}
	var overlaps int
	require.NoError(t, b.conn.QueryRow(context.Background(), `SELECT count(*)
		FROM matcol.matview_execution x JOIN matcol.matview_execution y ON x.id < y.id
		WHERE tstzrange(x.started_at, x.ended_at) && tstzrange(y.started_at, y.ended_at)`).Scan(&overlaps))
	require.Zero(t, overlaps)
	requireNoLocks(t, b.conn)
}

func requireNoLocks(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	// A closed session's backend exits, and drops its locks, a moment later.
	var n int
	var who string
	require.Eventually(t, func() bool {
		require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*), coalesce(string_agg(a.state || ': ' || a.query, '; '), '')
			FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n, &who))
		return n == 0
	}, 3*time.Second, 20*time.Millisecond, "an advisory lock outlived its refresh: %s", who)
}

// A failing view is retried with doubling waits up to the cap, and recovers.
func TestRetryBackoff(t *testing.T) {
	b := setup(t, `CREATE TABLE divisor (x int);
		CREATE MATERIALIZED VIEW c AS SELECT 1 / (SELECT count(*)::int FROM divisor) AS q WITH NO DATA`)
	b.schedule(t, "c", refresh.Options{RefreshInterval: time.Hour})
	stop := start(t, b.pool(t, "refresh"), refresh.Config{PollInterval: 20 * time.Millisecond,
		RetryBase: 150 * time.Millisecond, RetryMax: 600 * time.Millisecond})
	require.Eventually(t, func() bool { return view(t, b.conn, "c").ConsecutiveFailures >= 5 },
		20*time.Second, 20*time.Millisecond)

	es := executions(t, b.conn)
	require.GreaterOrEqual(t, len(es), 5)
	want := []time.Duration{150, 300, 600, 600} // ms, the waits after failures 1..4
	for i, w := range want {
		gap := es[i+1].started.Sub(*es[i].ended)
		lo := w * time.Millisecond * 9 / 10
		require.GreaterOrEqual(t, gap, lo, "wait after failure %d", i+1)
		require.Less(t, gap, w*time.Millisecond*11/10+time.Second, "wait after failure %d", i+1)
		require.Equal(t, "division_by_zero", es[i].errorName)
		require.False(t, *es[i].ok)
	}

	pgtest.Exec(t, b.conn, `INSERT INTO divisor VALUES (1)`)
	require.Eventually(t, func() bool { return view(t, b.conn, "c").LastSuccessAt != nil }, 10*time.Second, 20*time.Millisecond)
	v := view(t, b.conn, "c")
	require.Zero(t, v.ConsecutiveFailures)
	require.Contains(t, v.LastError, "division by zero") // kept, with its time, for the record
	require.Greater(t, time.Until(v.NextDueAt), 50*time.Minute, "after a success the normal interval applies")
	require.NoError(t, stop())
}

// The history keeps only the newest keep_executions rows of each view.
func TestHistoryIsBounded(t *testing.T) {
	b := setup(t, `CREATE MATERIALIZED VIEW m AS SELECT 1 AS one;
		CREATE MATERIALIZED VIEW other AS SELECT 1 AS one`)
	b.schedule(t, "m", refresh.Options{RefreshInterval: 10 * time.Millisecond, KeepExecutions: 3})
	b.schedule(t, "other", refresh.Options{RefreshInterval: time.Hour, KeepExecutions: 1})
	stop := start(t, b.pool(t, "refresh"), refresh.Config{PollInterval: 10 * time.Millisecond})
	var total int64
	require.Eventually(t, func() bool {
		require.NoError(t, b.conn.QueryRow(context.Background(),
			`SELECT coalesce(max(id), 0) FROM matcol.matview_execution`).Scan(&total))
		return total >= 12
	}, 20*time.Second, 20*time.Millisecond)
	require.NoError(t, stop())
	var kept, keptOther int
	require.NoError(t, b.conn.QueryRow(context.Background(), `SELECT
		count(*) FILTER (WHERE s.view_name = 'm'), count(*) FILTER (WHERE s.view_name = 'other')
		FROM matcol.matview_execution e JOIN matcol.matview_schedule s ON s.id = e.schedule_id`).Scan(&kept, &keptOther))
	require.Equal(t, 3, kept)
	require.Equal(t, 1, keptOther)
}

// skip_if_unchanged skips while the source's counters stand still and refreshes once they move.
func TestSkipIfUnchanged(t *testing.T) {
	b := setup(t, `CREATE TABLE t (id int PRIMARY KEY);
		CREATE VIEW t_view AS SELECT id FROM t;
		CREATE MATERIALIZED VIEW n AS SELECT count(*) AS n FROM t_view`)
	b.schedule(t, "n", refresh.Options{RefreshInterval: 50 * time.Millisecond, SkipIfUnchanged: true})
	start(t, b.pool(t, "refresh"), refresh.Config{PollInterval: 20 * time.Millisecond})
	count := func(mode string) int {
		n := 0
		for _, e := range executions(t, b.conn) {
			if e.mode == mode {
				n++
			}
		}
		return n
	}
	require.Eventually(t, func() bool { return count(refresh.ModeSkipped) >= 3 }, 20*time.Second, 20*time.Millisecond)
	refreshed := count(refresh.ModePlain)
	require.Equal(t, 1, refreshed, "only the first pass refreshes an unchanged view")

	// The change is seen through the plain view, once the writer's statistics are flushed.
	pgtest.Exec(t, b.conn, `INSERT INTO t SELECT generate_series(1, 5)`)
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, b.conn.QueryRow(context.Background(), `SELECT n FROM n`).Scan(&n))
		return n == 5
	}, 20*time.Second, 50*time.Millisecond)
	require.Greater(t, count(refresh.ModePlain), refreshed)
}

// Stopping mid-refresh cancels the statement on the server, records the execution as cut short,
// leaves no lock behind and counts no failure.
func TestStopDuringRefresh(t *testing.T) {
	b := setup(t, `CREATE OR REPLACE FUNCTION pause() RETURNS int LANGUAGE sql AS 'SELECT 1 FROM pg_sleep(30)';
		CREATE MATERIALIZED VIEW slower AS SELECT pause() AS one WITH NO DATA`)
	b.schedule(t, "slower", refresh.Options{RefreshInterval: time.Hour})
	for round := range 3 { // start/stop stress; a view cut short stays due, so each round refreshes it again
		stop := start(t, b.pool(t, "refresh"), refresh.Config{PollInterval: 20 * time.Millisecond})
		require.Eventually(t, func() bool { return len(executions(t, b.conn)) == round+1 }, 10*time.Second, 10*time.Millisecond)
		began := time.Now()
		require.NoError(t, stop())
		require.Less(t, time.Since(began), 5*time.Second)
	}
	es := executions(t, b.conn)
	require.Len(t, es, 3)
	for _, e := range es {
		require.Equal(t, "shutdown", e.errorName)
		require.NotNil(t, e.terminated)
	}
	require.Zero(t, view(t, b.conn, "slower").ConsecutiveFailures)
	requireNoLocks(t, b.conn)
	var busy int
	require.NoError(t, b.conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
		WHERE query LIKE 'REFRESH%' AND state = 'active'`).Scan(&busy))
	require.Zero(t, busy, "the refresh kept running on the server")
}

// A statement timeout ends a refresh as terminated and counts as a failure.
func TestMaximumExecutionDuration(t *testing.T) {
	b := setup(t, `CREATE OR REPLACE FUNCTION pause() RETURNS int LANGUAGE sql AS 'SELECT 1 FROM pg_sleep(30)';
		CREATE MATERIALIZED VIEW slower AS SELECT pause() AS one WITH NO DATA`)
	b.schedule(t, "slower", refresh.Options{RefreshInterval: time.Hour, MaximumExecutionDuration: 200 * time.Millisecond})
	p := b.pool(t, "refresh")
	s := refresh.New(p, refresh.Config{}, hclog.NewNullLogger())
	r, err := s.RunNow(context.Background(), "slower")
	require.NoError(t, err)
	require.Error(t, r.Err)
	require.Less(t, r.Duration, 5*time.Second)
	es := executions(t, b.conn)
	require.Len(t, es, 1)
	require.Equal(t, "query_canceled", es[0].errorName)
	require.NotNil(t, es[0].terminated)
	v := view(t, b.conn, "slower")
	require.Equal(t, 1, v.ConsecutiveFailures)
	require.True(t, strings.Contains(v.LastError, "statement timeout"), v.LastError)
}
