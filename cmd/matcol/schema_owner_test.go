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

// The setup docs/security.md offers instead of CREATE on the database: schema matcol created for
// the role. install, apply and run must then never ask for CREATE on the database. A role with
// neither is told both ways out.
func TestOwnedSchemaWithoutCreateOnDatabase(t *testing.T) {
	ctx := context.Background()
	dsn := cinemaDB(t)
	su := pgtest.Connect(t, dsn)
	var db string
	require.NoError(t, su.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	suffix := strings.TrimPrefix(db, "matcol_test_")
	owner, bare := "owner_"+suffix, "bare_"+suffix
	pgtest.Exec(t, su, fmt.Sprintf(`CREATE ROLE %s LOGIN; CREATE ROLE %s LOGIN`, owner, bare))
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			return
		}
		_, _ = c.Exec(context.Background(), fmt.Sprintf(`DROP OWNED BY %s, %s CASCADE`, owner, bare))
		_ = c.Close(context.Background())
		_, _ = su.Exec(context.Background(), fmt.Sprintf(`DROP ROLE IF EXISTS %s, %s`, owner, bare))
	})
	pgtest.Exec(t, su, fmt.Sprintf(`
		REVOKE CREATE ON DATABASE %[3]s FROM PUBLIC;
		CREATE SCHEMA matcol AUTHORIZATION %[1]s;
		GRANT USAGE ON SCHEMA public TO %[1]s, %[2]s;
		GRANT SELECT, TRIGGER ON cinema, venue, event, event_seat_state_change, seat_state TO %[1]s;
		GRANT UPDATE ON venue, event_seat_state_change TO %[1]s;`, owner, bare, db))
	var canCreate bool
	require.NoError(t, su.QueryRow(ctx, `SELECT has_database_privilege($1, current_database(), 'CREATE')`, owner).Scan(&canCreate))
	require.False(t, canCreate)

	as := func(role string) string { return strings.Replace(dsn, "://"+userOf(t, dsn)+"@", "://"+role+"@", 1) }
	env := []string{"MATCOL_DATABASE_URL=" + as(owner), "MATCOL_STATUS_LISTEN="}
	cfg := writeConfig(t, demo.Config)
	r := matcol(t, env, "install")
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "schema matcol is at version")
	r = matcol(t, env, "install") // and again, once the schema is at the latest version
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
	require.Eventually(t, func() bool {
		var n int
		_ = su.QueryRow(ctx, `SELECT (SELECT count(*) FROM venue WHERE materialized_at IS NULL)
			+ (SELECT count(*) FROM event_seat_state_change WHERE materialized_at IS NULL)
			+ (SELECT count(*) FROM matcol.pending)`).Scan(&n)
		return n == 0
	}, 60*time.Second, 200*time.Millisecond)

	// A role with neither the schema nor CREATE on the database learns both ways out. It needs
	// a database of its own: here schema matcol exists.
	dsn2 := pgtest.NewDB(t)
	su2 := pgtest.Connect(t, dsn2)
	var db2 string
	require.NoError(t, su2.QueryRow(ctx, `SELECT current_database()`).Scan(&db2))
	pgtest.Exec(t, su2, fmt.Sprintf(`REVOKE CREATE ON DATABASE %s FROM PUBLIC`, db2))
	r = matcol(t, []string{"MATCOL_DATABASE_URL=" + strings.Replace(dsn2, "://"+userOf(t, dsn2)+"@", "://"+bare+"@", 1)}, "install")
	require.NotZero(t, r.code)
	require.Contains(t, r.stderr, "permission denied for database")
	require.Contains(t, r.stderr, "CREATE SCHEMA matcol AUTHORIZATION "+bare)
}
