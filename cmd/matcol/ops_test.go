package main_test

import (
	"bytes"
	"context"
	"encoding/json"
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
)

func TestHelpListsEveryCommand(t *testing.T) {
	r := matcol(t, nil, "--help")
	require.Zero(t, r.code, r.stderr)
	_, commands, ok := strings.Cut(r.stdout, "Available Commands:")
	require.True(t, ok, r.stdout)
	for _, c := range []string{"install", "apply", "run", "verify", "demo", "version", "completion"} {
		require.Regexp(t, `(?m)^  `+c+` +\S`, commands, "--help must list %s with its description", c)
	}
}

func TestCompletion(t *testing.T) {
	for shell, marker := range map[string]string{
		"bash": "# bash completion V2 for matcol",
		"zsh":  "#compdef matcol",
		"fish": "complete -c matcol",
	} {
		t.Run(shell, func(t *testing.T) {
			r := matcol(t, nil, "completion", shell)
			require.Zero(t, r.code, r.stderr)
			require.Contains(t, r.stdout, marker)
		})
	}
}

// Release builds stamp version, commit and date with -ldflags, as the Makefile and the
// Dockerfile do.
func TestVersionFromLdflags(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "matcol")
	out, err := exec.Command("go", "build", "-o", bin, "-ldflags",
		"-X main.version=v1.2.3 -X main.commit=0123abc -X main.date=2026-01-02T03:04:05Z", ".").CombinedOutput()
	require.NoError(t, err, string(out))
	got, err := exec.Command(bin, "version").Output()
	require.NoError(t, err)
	require.Contains(t, string(got), "matcol v1.2.3\n")
	require.Contains(t, string(got), "commit: 0123abc\n")
	require.Contains(t, string(got), "built: 2026-01-02T03:04:05Z\n")
}

// runBriefly runs `matcol run` against a closed port, where it logs a warning and retries, and
// stops it with SIGTERM after a moment. wrap, when set, runs it under another program.
func runBriefly(t *testing.T, wrap []string, args ...string) string {
	t.Helper()
	cfg := writeConfig(t, "database_url: postgres://matcol@127.0.0.1:1/app?connect_timeout=1\nstatus:\n  listen: \"\"\n")
	argv := append([]string{binary, "run", "-c", cfg}, args...)
	if wrap != nil {
		argv = append(wrap, strings.Join(argv, " "), "/dev/null")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	cmd.Env = append(os.Environ(), "MATCOL_LOG_FORMAT=", "MATCOL_LOG_LEVEL=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	_ = cmd.Run() // ends by our SIGTERM
	return out.String()
}

func TestLogsAreJSONWhenStderrIsNotATerminal(t *testing.T) {
	out := runBriefly(t, nil)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.NotEmpty(t, lines[0], "run logs while it retries")
	var warned bool
	for _, l := range lines {
		var entry map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &entry), "not a JSON line: %q", l)
		require.Contains(t, entry, "@timestamp")
		if entry["@level"] == "warn" && entry["@message"] == "database unreachable; retrying" {
			warned = true
		}
	}
	require.True(t, warned, out)
}

func TestLogsAreTextOnATerminal(t *testing.T) {
	if _, err := exec.LookPath("script"); err != nil {
		t.Skip("script(1) is needed to give matcol a terminal")
	}
	// script runs the command on a pseudo-terminal and copies what it writes.
	out := runBriefly(t, []string{"script", "-qefc"})
	require.Contains(t, out, "[WARN]  matcol: database unreachable; retrying")
	require.NotContains(t, out, `"@message"`)
}

func TestLogLevel(t *testing.T) {
	out := runBriefly(t, nil, "--log-level", "error")
	require.NotContains(t, out, "database unreachable", "--log-level error hides warnings")
	out = runBriefly(t, nil, "--log-level", "debug", "--log-format", "text")
	require.Contains(t, out, "[WARN]  matcol: database unreachable")
	r := matcol(t, nil, "run", "--log-level", "loud", "--database-url", "postgres://127.0.0.1:1/x")
	require.NotZero(t, r.code)
	require.Contains(t, r.stderr, `log_level: "loud" is not one of trace, debug, info, warn, error`)
}

// With registration: sql, apply and run keep what SQL registered; with the default (yaml), the
// YAML is the whole truth and apply removes it. docs/operations.md warns about exactly this.
func TestSQLRegistrationSurvivesApply(t *testing.T) {
	dsn := cinemaDB(t)
	env := []string{"MATCOL_DATABASE_URL=" + dsn}
	r := matcol(t, env, "install")
	require.Zero(t, r.code, r.stderr)
	conn := pgtest.Connect(t, dsn)
	var res string
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT matcol.register_enrichment('venue_cinema', 'venue',
		ARRAY['cinema_name'], 'SELECT v.id, c.name AS cinema_name FROM venue v JOIN cinema c ON c.id = v.cinema_id WHERE v.id = ANY($1)',
		'[{"table": "cinema", "columns": ["id"], "sql": "SELECT id FROM public.venue WHERE cinema_id = ANY($1)"}]')`).Scan(&res))
	require.Equal(t, "added", res)

	r = matcol(t, env, "apply", "-c", writeConfig(t, "registration: sql\n"))
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "created trigger matcol_inv_upd")
	require.Contains(t, r.stdout, "1 enrichments on 1 tables are registered")

	r = matcol(t, env, "apply", "-c", writeConfig(t, "registration: sql\nenrichments:\n  - name: x\n    table: venue\n    columns: [x]\n    sql: SELECT 1\n"))
	require.NotZero(t, r.code)
	require.Contains(t, r.stderr, "enrichments: must be empty with registration: sql")

	r = matcol(t, env, "apply", "-c", writeConfig(t, "enrichments: []\n"))
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "removed enrichment venue_cinema")
}

// The grants docs/security.md lists are enough for trigger mode, and application roles need
// nothing on schema matcol. Dropping a trigger needs ownership, as the doc says.
func TestLeastPrivilegeRoles(t *testing.T) {
	ctx := context.Background()
	dsn := cinemaDB(t)
	su := pgtest.Connect(t, dsn)
	var db string
	require.NoError(t, su.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	suffix := strings.TrimPrefix(db, "matcol_test_")
	owner, app := "matcol_"+suffix, "app_"+suffix
	pgtest.Exec(t, su, fmt.Sprintf(`CREATE ROLE %s LOGIN; CREATE ROLE %s LOGIN`, owner, app))
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			return
		}
		_, _ = c.Exec(context.Background(), fmt.Sprintf(`DROP OWNED BY %s, %s CASCADE`, owner, app))
		_ = c.Close(context.Background())
		_, _ = su.Exec(context.Background(), fmt.Sprintf(`DROP ROLE IF EXISTS %s, %s`, owner, app))
	})
	// Exactly the grants of docs/security.md, for the demo's tables.
	pgtest.Exec(t, su, fmt.Sprintf(`
		GRANT CREATE ON DATABASE %[3]s TO %[1]s;
		GRANT USAGE ON SCHEMA public TO %[1]s;
		GRANT SELECT, TRIGGER ON cinema, venue, event, event_seat_state_change, seat_state TO %[1]s;
		GRANT UPDATE ON venue, event_seat_state_change TO %[1]s;
		GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %[2]s;`, owner, app, db))
	as := func(role string) string { return strings.Replace(dsn, "://"+userOf(t, dsn)+"@", "://"+role+"@", 1) }
	env := []string{"MATCOL_DATABASE_URL=" + as(owner), "MATCOL_STATUS_LISTEN="}
	cfg := writeConfig(t, demo.Config)

	r := matcol(t, env, "install")
	require.Zero(t, r.code, r.stderr)
	r = matcol(t, env, "apply", "-c", cfg)
	require.Zero(t, r.code, r.stderr)

	cmd := exec.Command(binary, "run", "-c", cfg)
	cmd.Env = append(os.Environ(), env...)
	require.NoError(t, cmd.Start())
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	stale := func() bool {
		var n int
		_ = su.QueryRow(ctx, `SELECT (SELECT count(*) FROM venue WHERE materialized_at IS NULL)
			+ (SELECT count(*) FROM event_seat_state_change WHERE materialized_at IS NULL)
			+ (SELECT count(*) FROM matcol.pending)`).Scan(&n)
		return n == 0
	}
	require.Eventually(t, stale, 30*time.Second, 100*time.Millisecond)

	// The application role writes through every kind of matcol trigger with no grant of its own:
	// the triggers run as the writer and queue through SECURITY DEFINER functions that PUBLIC
	// may call, and the registry's tables stay closed to it.
	appConn := pgtest.Connect(t, as(app))
	pgtest.Exec(t, appConn, `UPDATE event SET seat_count = seat_count + 1 WHERE id = (SELECT min(id) FROM event)`)
	pgtest.Exec(t, appConn, `UPDATE cinema SET name = name || '!' WHERE id = (SELECT min(id) FROM cinema)`)
	pgtest.Exec(t, appConn, `UPDATE venue SET name = name || '!' WHERE id = (SELECT min(id) FROM venue)`)
	pgtest.Exec(t, appConn, `DELETE FROM seat_state WHERE ctid = (SELECT min(ctid) FROM seat_state)`)
	_, err := appConn.Exec(ctx, `SELECT count(*) FROM matcol.pending`)
	require.ErrorContains(t, err, "permission denied for table pending")
	require.Eventually(t, stale, 30*time.Second, 100*time.Millisecond)
	r = matcol(t, env, "verify", "-c", cfg, "--all")
	require.Zero(t, r.code, r.stdout+r.stderr)

	// Removing cinema's only dependency drops its triggers, which needs ownership of cinema.
	start := strings.Index(demo.Config, "  - name: venue_cinema")
	end := strings.Index(demo.Config, "  - name: seat_counts")
	smaller := writeConfig(t, demo.Config[:start]+demo.Config[end:])
	r = matcol(t, env, "apply", "-c", smaller)
	require.NotZero(t, r.code)
	require.Contains(t, r.stderr, "must be owner of relation cinema")
	pgtest.Exec(t, su, fmt.Sprintf(`ALTER TABLE cinema OWNER TO %s`, owner))
	r = matcol(t, env, "apply", "-c", smaller)
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "removed enrichment venue_cinema")
	// venue is now read only through its key, whose trigger is another kind: the old one stays,
	// said so, until its owner applies, and venue's rows stay exact meanwhile.
	require.Contains(t, r.stdout, "kept trigger matcol_self_")
	pgtest.Exec(t, appConn, `UPDATE venue SET id = id + 100000 WHERE id = (SELECT min(id) FROM venue)`)
	require.Eventually(t, stale, 30*time.Second, 100*time.Millisecond)
	r = matcol(t, env, "verify", "-c", smaller, "--all")
	require.Zero(t, r.code, r.stdout+r.stderr)
}

func userOf(t *testing.T, dsn string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	return cfg.User
}
