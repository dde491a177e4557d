package main_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/demo"
	"github.com/matcol/matcol/internal/pgtest"
)

// leastPrivilege creates a matcol role with exactly the trigger-mode grants of docs/security.md
// for the demo's tables, and an application role that may only write them. It returns the DSN
// of each.
func leastPrivilege(t *testing.T, dsn string) (matcolDSN, appDSN string) {
	t.Helper()
	ctx := context.Background()
	su := pgtest.Connect(t, dsn)
	var db string
	require.NoError(t, su.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	suffix := strings.TrimPrefix(db, "matcol_test_")
	owner, app := "mc_"+suffix, "ap_"+suffix
	pgtest.Exec(t, su, fmt.Sprintf(`CREATE ROLE %s LOGIN; CREATE ROLE %s LOGIN`, owner, app))
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), fmt.Sprintf(`DROP OWNED BY %s, %s CASCADE`, owner, app))
		_, _ = c.Exec(context.Background(), fmt.Sprintf(`DROP ROLE IF EXISTS %s, %s`, owner, app))
	})
	pgtest.Exec(t, su, fmt.Sprintf(`
		GRANT CREATE ON DATABASE %[3]s TO %[1]s;
		GRANT USAGE ON SCHEMA public TO %[1]s;
		GRANT SELECT, TRIGGER ON cinema, venue, event, event_seat_state_change, seat_state TO %[1]s;
		GRANT UPDATE ON venue, event_seat_state_change TO %[1]s;
		GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %[2]s;`, owner, app, db))
	as := func(role string) string { return strings.Replace(dsn, "://"+userOf(t, dsn)+"@", "://"+role+"@", 1) }
	return as(owner), as(app)
}

// sessions returns how many sessions have been opened to the database so far, or -1 before
// PostgreSQL 14, which does not count them.
func sessions(t *testing.T, conn *pgx.Conn) int64 {
	t.Helper()
	var n int64
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT CASE WHEN current_setting('server_version_num')::int < 140000
		THEN -1 ELSE (SELECT sessions FROM pg_stat_database WHERE datname = current_database()) END`).Scan(&n))
	return n
}

// The daemon, run as a role with exactly the grants docs/security.md lists for trigger mode
// (which can read neither pg_backend_memory_contexts nor replicas' lag), keeps its connections
// under a write load instead of opening new ones, and the rows end exact.
func TestLeastPrivilegeDaemonKeepsItsConnections(t *testing.T) {
	ctx := context.Background()
	dsn := cinemaDB(t)
	matcolDSN, appDSN := leastPrivilege(t, dsn)
	env := []string{"MATCOL_DATABASE_URL=" + matcolDSN, "MATCOL_STATUS_LISTEN=", "MATCOL_LOG_FORMAT=json"}
	cfg := writeConfig(t, demo.Config+"status:\n  listen: \"\"\n")
	r := matcol(t, env, "install")
	require.Zero(t, r.code, r.stderr)
	r = matcol(t, env, "apply", "-c", cfg)
	require.Zero(t, r.code, r.stderr)

	cmd := exec.Command(binary, "run", "-c", cfg)
	cmd.Env = append(os.Environ(), env...)
	var logs lockedBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
	}()
	su := pgtest.Connect(t, dsn)
	fresh := func() bool {
		var n int
		_ = su.QueryRow(ctx, `SELECT (SELECT count(*) FROM venue WHERE materialized_at IS NULL)
			+ (SELECT count(*) FROM event_seat_state_change WHERE materialized_at IS NULL)
			+ (SELECT count(*) FROM matcol.pending)`).Scan(&n)
		return n == 0
	}
	require.Eventually(t, fresh, 60*time.Second, 100*time.Millisecond, tail(logs.String()))
	time.Sleep(2 * time.Second) // past the start's connections

	// A small write load from the application role: a few statements a second on every table.
	app := pgtest.Connect(t, appDSN)
	// Stopping ends the loop between statements: a statement whose context is cancelled returns
	// at once, but its backend may still commit it after the check for freshness below.
	loadCtx, stopLoad := context.WithCancel(ctx)
	loaded := make(chan int)
	go func() {
		writes := 0
		for i := 0; loadCtx.Err() == nil; i++ {
			for _, sql := range []string{
				`UPDATE event SET seat_count = seat_count + 1 WHERE id = (SELECT id FROM event ORDER BY random() LIMIT 1)`,
				`UPDATE seat_state SET state = CASE state WHEN 'SOLD' THEN 'EMPTY' ELSE 'SOLD' END
					WHERE ctid = (SELECT ctid FROM seat_state ORDER BY random() LIMIT 1)`,
				`UPDATE cinema SET name = name || '.' WHERE id = (SELECT id FROM cinema ORDER BY random() LIMIT 1)`,
			} {
				if _, err := app.Exec(ctx, sql); err == nil {
					writes++
				}
			}
			select {
			case <-loadCtx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		loaded <- writes
	}()

	// Backends opened by matcol in 30 s: counted by the server where it can (PostgreSQL 14+),
	// else sampled from pg_stat_activity every 20 ms.
	window := 30 * time.Second
	before := sessions(t, su)
	var from time.Time
	require.NoError(t, su.QueryRow(ctx, `SELECT now()`).Scan(&from))
	seen := map[string]string{} // pid and start → application_name
	for end := time.Now().Add(window); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		rows, err := su.Query(ctx, `SELECT pid::text || ' ' || backend_start::text, application_name FROM pg_stat_activity
			WHERE datname = current_database() AND application_name LIKE 'matcol%' AND backend_start >= $1`, from)
		require.NoError(t, err)
		for rows.Next() {
			var id, app string
			require.NoError(t, rows.Scan(&id, &app))
			seen[id] = app
		}
		require.NoError(t, rows.Err())
	}
	opened := int64(len(seen))
	if before >= 0 {
		require.NoError(t, su.QueryRow(ctx, `SELECT pg_stat_clear_snapshot()`).Scan(nil))
		opened = sessions(t, su) - before
	}
	apps := map[string]int{}
	for _, app := range seen {
		apps[app]++
	}
	stopLoad()
	writes := <-loaded
	t.Logf("%d writes; %d backends opened in %s (seen in pg_stat_activity: %v)", writes, opened, window, apps)
	require.Positive(t, writes)
	require.Less(t, opened, int64(30), "matcol must keep its connections, not open new ones\n%s", tail(logs.String()))

	require.Eventually(t, fresh, 60*time.Second, 100*time.Millisecond, tail(logs.String()))
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, cmd.Wait())
	stopped = true
	r = matcol(t, env, "verify", "-c", cfg, "--all")
	require.Zero(t, r.code, r.stdout+r.stderr)

	// What the role cannot read is said once, with the grant that enables it.
	out := logs.String()
	require.Equal(t, 1, strings.Count(out, "cannot read pg_backend_memory_contexts"), out)
	require.Contains(t, out, "pg_read_all_stats")
}

// tail is the end of a long log, for a failure message.
func tail(s string) string {
	if len(s) > 4000 {
		return "…" + s[len(s)-4000:]
	}
	return s
}
