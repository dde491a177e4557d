package main_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/demo"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/registry"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "matcol-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "matcol")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		panic(fmt.Sprintf("build matcol: %v\n%s", err, out))
	}
	code := pgtest.Main(m)
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code   int
	stdout string
	stderr string
}

func matcol(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run matcol: %v", err)
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "matcol.yaml")
	require.NoError(t, os.WriteFile(f, []byte(body), 0o600))
	return f
}

func cinemaDB(t *testing.T) string {
	t.Helper()
	dsn := pgtest.NewDB(t)
	conn, err := pgx.Connect(context.Background(), dsn)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	pgtest.Exec(t, conn, demo.Schema)
	require.NoError(t, demo.Seed(context.Background(), conn, 1))
	return dsn
}

func TestVersionAndHelp(t *testing.T) {
	r := matcol(t, nil, "version")
	require.Zero(t, r.code)
	require.Contains(t, r.stdout, "matcol ")
	require.Contains(t, r.stdout, "commit:")
	r = matcol(t, nil, "--help")
	require.Zero(t, r.code)
	for _, c := range []string{"install", "apply", "run", "verify", "schedule", "demo", "version"} {
		require.Contains(t, r.stdout, c)
	}
}

func TestInstallApplyRunVerify(t *testing.T) {
	dsn := cinemaDB(t)
	env := []string{"MATCOL_DATABASE_URL=" + dsn, "MATCOL_STATUS_LISTEN="}
	cfg := writeConfig(t, demo.Config)

	r := matcol(t, env, "install", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	r = matcol(t, env, "install", "-c", cfg) // idempotent
	require.Zero(t, r.code, r.stderr)
	r = matcol(t, env, "apply", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "added enrichment venue_counts")

	// verify before the daemon ran: rows are stale, so with --include-stale it finds drift.
	r = matcol(t, env, "verify", "-c", cfg, "--all", "--include-stale")
	require.Equal(t, 1, r.code, r.stdout+r.stderr)

	cmd := exec.Command(binary, "run", "-c", cfg, "--log-format", "json")
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	conn := pgtest.Connect(t, dsn)
	require.Eventually(t, func() bool {
		var n int
		_ = conn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM venue WHERE materialized_at IS NULL)
			+ (SELECT count(*) FROM event_seat_state_change WHERE materialized_at IS NULL)`).Scan(&n)
		return n == 0
	}, 30*time.Second, 100*time.Millisecond)

	// Every connection matcol opened is named matcol…
	var others int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
		  AND application_name NOT LIKE 'matcol%'`).Scan(&others))
	require.Zero(t, others)

	// SIGTERM: exit 0 within 10 s.
	start := time.Now()
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, stderr.String())
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("matcol run did not stop within 10s of SIGTERM")
	}
	require.Less(t, time.Since(start), 10*time.Second)
	require.Contains(t, stderr.String(), `"@message":"matcol stopped"`)

	r = matcol(t, env, "verify", "-c", cfg, "--all")
	require.Zero(t, r.code, r.stdout+r.stderr)
	require.Contains(t, r.stdout, "0 values differ")

	// Corrupt one value behind matcol's back: verify names the row.
	pgtest.Exec(t, conn, `ALTER TABLE venue DISABLE TRIGGER USER`)
	pgtest.Exec(t, conn, `UPDATE venue SET seat_count = -1 WHERE id = 42`)
	pgtest.Exec(t, conn, `ALTER TABLE venue ENABLE TRIGGER USER`)
	r = matcol(t, env, "verify", "-c", cfg, "--all")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stdout, "venue_counts public.venue key (42) column seat_count: stored \"-1\"")
}

func TestRunSurvivesUnreachableDatabaseWithoutLeakingPassword(t *testing.T) {
	cfg := writeConfig(t, demo.Config)
	dsn := "postgres://matcol:s3cr3t-pw@127.0.0.1:1/app?connect_timeout=1"
	cmd := exec.Command(binary, "run", "-c", cfg)
	cmd.Env = append(os.Environ(), "MATCOL_DATABASE_URL="+dsn, "MATCOL_STATUS_LISTEN=", "MATCOL_LOG_FORMAT=text")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	time.Sleep(2 * time.Second)
	require.Nil(t, cmd.ProcessState, "run must keep retrying, not exit")
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, cmd.Wait())
	require.Contains(t, out.String(), "database unreachable")
	require.Contains(t, out.String(), "127.0.0.1:1")
	require.NotContains(t, out.String(), "s3cr3t-pw")

	r := matcol(t, []string{"MATCOL_DATABASE_URL=" + dsn}, "apply", "-c", cfg)
	require.NotZero(t, r.code)
	require.NotContains(t, r.stdout+r.stderr, "s3cr3t-pw")
	require.Contains(t, r.stderr, "127.0.0.1:1")
}

func TestApplyRejectsBadInputNamingTheCulprit(t *testing.T) {
	dsn := cinemaDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, `CREATE TABLE nopk (id int, x int, materialized_at timestamptz);
		CREATE TABLE nostamp (id int PRIMARY KEY, x int);
		CREATE TABLE "we""ird; DROP TABLE venue; --" (id int PRIMARY KEY, x int, materialized_at timestamptz)`)
	base := `  - name: %s
    table: %s
    columns: [%s]
    sql: %s
`
	venueSQL := `SELECT v.id, 1::bigint AS seat_count FROM venue v WHERE v.id = ANY($1)`
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown key", "enrichmnets: []\n", []string{`unknown key "enrichmnets"`, `did you mean "enrichments"`}},
		{"malformed yaml", "enrichments: [\n", []string{"malformed YAML"}},
		{"syntax error", fmt.Sprintf(base, "e1", "public.venue", "seat_count", `"SELEC id FROM venue"`),
			[]string{"enrichment e1", "sql does not prepare", "syntax error"}},
		{"missing table", fmt.Sprintf(base, "e2", "public.nope", "x", `"SELECT 1"`), []string{"enrichment e2", "public.nope does not exist"}},
		{"no stamp", fmt.Sprintf(base, "e3", "nostamp", "x", `"SELECT id, x FROM nostamp WHERE id = ANY($1)"`),
			[]string{"enrichment e3", "no materialized_at column"}},
		{"no primary key", fmt.Sprintf(base, "e4", "nopk", "x", `"SELECT id, x FROM nopk WHERE id = ANY($1)"`),
			[]string{"enrichment e4", "no primary key"}},
		{"missing column", fmt.Sprintf(base, "e5", "public.venue", "seat_cnt", `"`+venueSQL+`"`),
			[]string{"enrichment e5", `column "seat_cnt" does not exist`}},
		{"wrong output", fmt.Sprintf(base, "e6", "public.venue", "auditorium_count", `"`+venueSQL+`"`),
			[]string{"enrichment e6", `returns column "seat_count"`, `does not return listed column "auditorium_count"`}},
		{"wrong type", fmt.Sprintf(base, "e7", "public.venue", "seat_count", `"SELECT v.id, now() AS seat_count FROM venue v WHERE v.id = ANY($1)"`),
			[]string{"enrichment e7", "cannot be written", "seat_count"}},
		{"two owners", fmt.Sprintf(base, "e8", "public.venue", "seat_count", `"`+venueSQL+`"`) +
			fmt.Sprintf(base, "e9", "public.venue", "seat_count", `"`+venueSQL+`"`),
			[]string{"enrichment e9", `"seat_count" of public.venue is already owned by enrichment e8`}},
		{"hostile name", fmt.Sprintf(base, "e10", `'public."we""ird; DROP TABLE venue; --"'`, "x",
			`'SELECT id, x FROM "we""ird; DROP TABLE venue; --" WHERE id = ANY($1)'`+"\n    depends_on:\n      - table: public.\"no such\"\n        columns: [id]"),
			[]string{"enrichment e10", `depends_on table public."no such" does not exist`}},
		{"dependency column", fmt.Sprintf(base, "e11", "public.venue", "seat_count", `"`+venueSQL+`"`) +
			"    depends_on:\n      - table: public.event\n        columns: [venue]\n",
			[]string{"enrichment e11", `depends_on public.event: column "venue" does not exist`}},
		{"duplicate keys", fmt.Sprintf(base, "e13", "public.venue", "seat_count",
			`"SELECT v.id, 1::bigint AS seat_count FROM venue v JOIN event e ON e.venue_id = v.id WHERE v.id = ANY($1)"`) +
			"    depends_on:\n      - table: public.event\n        columns: [venue_id]\n",
			[]string{"enrichment e13", "fails on existing rows of public.venue", "returned a key more than once"}},
		{"uncovered table", fmt.Sprintf(base, "e15", "public.venue", "seat_count",
			`"SELECT v.id, count(e.id) AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id WHERE v.id = ANY($1) GROUP BY v.id"`),
			[]string{"enrichment e15", "its sql reads public.event (id, venue_id), which no depends_on entry covers",
				"add to depends_on {table: public.event, columns: [<its columns that hold public.venue's key>]}"}},
		{"runtime error", fmt.Sprintf(base, "e14", "public.venue", "seat_count",
			`"SELECT v.id, (1 / (v.id - 5))::bigint AS seat_count FROM venue v WHERE v.id = ANY($1)"`),
			[]string{"enrichment e14", "fails on existing rows", "division by zero"}},
		{"key param type", fmt.Sprintf(base, "e12", "public.venue", "seat_count", `"SELECT v.id, 1::bigint AS seat_count FROM venue v WHERE v.id::text = ANY($1)"`),
			[]string{"enrichment e12", "$1 is used as text[]", "bigint[]"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := c.yaml
			if !strings.HasPrefix(body, "enrichm") {
				body = "enrichments:\n" + body
			}
			r := matcol(t, []string{"MATCOL_DATABASE_URL=" + dsn}, "apply", "-c", writeConfig(t, body))
			require.NotZero(t, r.code)
			for _, w := range c.want {
				require.Contains(t, r.stderr, w)
			}
			var registered bool
			require.NoError(t, conn.QueryRow(context.Background(), `SELECT to_regclass('matcol.enrichment') IS NOT NULL`).Scan(&registered))
			require.False(t, registered, "a rejected apply must write nothing")
			var venues int
			require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM venue`).Scan(&venues))
			require.Equal(t, 100, venues)
		})
	}
}

func TestApplyExplainWritesNothing(t *testing.T) {
	dsn := cinemaDB(t)
	env := []string{"MATCOL_DATABASE_URL=" + dsn, "MATCOL_STATUS_LISTEN="}
	r := matcol(t, env, "apply", "--explain", "-c", writeConfig(t, demo.Config))
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, `enrichment venue_cinema: public.venue (cinema_name)
  reads:
    public.cinema: id, name
    public.venue: cinema_id, id
  made stale by:
    inserts into public.venue
    updates of public.venue changing cinema_id, id
    public.cinema: keys mapped from id by sql reading public.venue (cinema_id, id); changes to id, name
`)
	conn := pgtest.Connect(t, dsn)
	var installed bool
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT to_regclass('matcol.enrichment') IS NOT NULL`).Scan(&installed))
	require.False(t, installed, "--explain must write nothing")
}

// --explain of a changed config must not take the plan lock: running daemons' batches hold it
// shared, and an exclusive wait would stall them (or fail after the lock timeout).
func TestApplyExplainTakesNoPlanLock(t *testing.T) {
	dsn := cinemaDB(t)
	env := []string{"MATCOL_DATABASE_URL=" + dsn, "MATCOL_STATUS_LISTEN="}
	r := matcol(t, env, "apply", "-c", writeConfig(t, demo.Config))
	require.Zero(t, r.code, r.stderr)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	var before int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT version FROM matcol.registry_version`).Scan(&before))
	// A batch in progress.
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SELECT pg_advisory_xact_lock_shared($1)`, registry.LockPlan)
	require.NoError(t, err)

	changed := strings.Replace(demo.Config, "c.name AS cinema_name", "upper(c.name) AS cinema_name", 1)
	require.NotEqual(t, demo.Config, changed)
	began := time.Now()
	r = matcol(t, env, "apply", "--explain", "-c", writeConfig(t, changed))
	require.Zero(t, r.code, r.stderr)
	require.Less(t, time.Since(began), 8*time.Second, "--explain waited for the plan lock")
	require.Contains(t, r.stdout, "enrichment venue_cinema: public.venue (cinema_name)")
	require.NoError(t, tx.Rollback(ctx))
	var after int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT version FROM matcol.registry_version`).Scan(&after))
	require.Equal(t, before, after)
}

// verify tells drift from work in flight: a row whose key waits in the queue is not compared,
// and a value that differs while an invalidation of its table is queued (a drain has yet to map
// it) is compared again once that invalidation is applied.
func TestVerifyLooksPastQueuedInvalidations(t *testing.T) {
	dsn := cinemaDB(t)
	env := []string{"MATCOL_DATABASE_URL=" + dsn, "MATCOL_STATUS_LISTEN="}
	cfg := writeConfig(t, demo.Config)
	require.Zero(t, matcol(t, env, "install", "-c", cfg).code)
	require.Zero(t, matcol(t, env, "apply", "-c", cfg).code)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	cmd := exec.Command(binary, "run", "-c", cfg)
	cmd.Env = append(os.Environ(), env...)
	require.NoError(t, cmd.Start())
	require.Eventually(t, func() bool {
		var n int
		_ = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM venue WHERE materialized_at IS NULL) + (SELECT count(*) FROM matcol.pending)`).Scan(&n)
		return n == 0
	}, 30*time.Second, 100*time.Millisecond)
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, cmd.Wait())

	// The daemon is gone: a direct invalidation waits in the queue, its row stamped.
	pgtest.Exec(t, conn, `UPDATE event SET seat_count = seat_count + 1000 WHERE venue_id = 42`)
	r := matcol(t, env, "verify", "-c", cfg, "--all", "--rate", "0")
	require.Zero(t, r.code, r.stdout+r.stderr)
	require.Contains(t, r.stdout, "0 values differ")
	r = matcol(t, env, "verify", "-c", cfg, "--all", "--rate", "0", "--include-stale")
	require.Equal(t, 1, r.code, "--include-stale compares the queued row: %s", r.stdout)
	require.Contains(t, r.stdout, "venue_counts public.venue key (42) column seat_count")

	// A mapped invalidation names no row until a drain maps it. verify finds the drift, waits,
	// and compares again after the drain (played here by the test) made the rows stale.
	var cinema int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT cinema_id FROM venue WHERE id = 42`).Scan(&cinema))
	pgtest.Exec(t, conn, `UPDATE cinema SET name = name || ' (renamed)' WHERE id = $1`, cinema)
	verified := make(chan result, 1)
	go func() { verified <- matcol(t, env, "verify", "-c", cfg, "--all", "--rate", "0", "--settle", "20s") }()
	time.Sleep(3 * time.Second)
	pgtest.Exec(t, conn, `BEGIN;
		UPDATE venue SET materialized_at = NULL WHERE cinema_id = `+fmt.Sprint(cinema)+`;
		DELETE FROM matcol.pending WHERE dependency_id IS NOT NULL;
		COMMIT`)
	r = <-verified
	require.Zero(t, r.code, r.stdout+r.stderr)
	require.Contains(t, r.stderr, "once the invalidations queued for their tables had been applied: 0 still differ")

	r = matcol(t, env, "verify", "-c", cfg, "--settle", "-1s")
	require.NotZero(t, r.code)
	require.Contains(t, r.stderr, "--settle -1s: give 0 or a positive duration")

	// Nobody drains: after --settle, what differs is drift, and verify says what was still queued.
	pgtest.Exec(t, conn, `UPDATE cinema SET name = name || ' again' WHERE id = $1`, cinema)
	pgtest.Exec(t, conn, `UPDATE venue SET materialized_at = now() WHERE cinema_id = $1 AND id <> 42`, cinema)
	r = matcol(t, env, "verify", "-c", cfg, "--all", "--rate", "0", "--settle", "1s")
	require.Equal(t, 1, r.code, r.stdout+r.stderr)
	require.Contains(t, r.stdout, "column cinema_name")
	require.Contains(t, r.stderr, "invalidations of their tables still queued after 1s")
}
