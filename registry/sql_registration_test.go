package registry_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/demo"
	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/registry"
)

// The YAML side of the comparison: every field an enrichment can carry, including non-defaults.
const registrationYAML = `
enrichments:
  - name: venue_counts
    table: venue
    columns: [auditorium_count, seat_count]
    sql: |
      SELECT v.id, count(DISTINCT e.auditorium_id)::int AS auditorium_count, sum(e.seat_count)::bigint AS seat_count
      FROM venue v LEFT JOIN event e ON e.venue_id = v.id
      WHERE v.id = ANY($1) GROUP BY v.id
    expires_after: 1d
    batch_size: 200
    statement_timeout: 45s
    lock_timeout: 2
    work_mem: 64MB
    depends_on:
      - table: public.event
        columns: [venue_id]
  - name: venue_cinema
    table: public.venue
    columns: [cinema_name]
    sql: SELECT v.id, c.name AS cinema_name FROM venue v JOIN cinema c ON c.id = v.cinema_id WHERE v.id = ANY($1)
    self: true
    depends_on:
      - table: public.cinema
        columns: [id]
        sql: SELECT id FROM public.venue WHERE cinema_id = ANY($1)
  - name: seat_counts
    table: public.event_seat_state_change
    columns: [sold_count, reserved_count, empty_count]
    self: false
    sql: |
      SELECT c.id,
             count(*) FILTER (WHERE s.state = 'SOLD')::int AS sold_count,
             count(*) FILTER (WHERE s.state = 'RESERVED')::int AS reserved_count,
             count(*) FILTER (WHERE s.state = 'EMPTY')::int AS empty_count
      FROM event_seat_state_change c LEFT JOIN seat_state s ON s.change_id = c.id
      WHERE c.id = ANY($1) GROUP BY c.id
    depends_on:
      - table: public.seat_state
        columns: [change_id]
      - table: public.cinema
        static: true
`

// The same three enrichments, registered in SQL as a team would in its migrations. In name order,
// as apply writes them, so that even the ids match.
const registrationSQL = `
SELECT matcol.register_enrichment(
    name => 'seat_counts', target => 'public.event_seat_state_change',
    columns => ARRAY['sold_count', 'reserved_count', 'empty_count'],
    sql => $q$SELECT c.id,
       count(*) FILTER (WHERE s.state = 'SOLD')::int AS sold_count,
       count(*) FILTER (WHERE s.state = 'RESERVED')::int AS reserved_count,
       count(*) FILTER (WHERE s.state = 'EMPTY')::int AS empty_count
FROM event_seat_state_change c LEFT JOIN seat_state s ON s.change_id = c.id
WHERE c.id = ANY($1) GROUP BY c.id
$q$,
    depends_on => '[{"table": "public.seat_state", "columns": ["change_id"]}, {"table": "cinema", "static": true}]',
    self => false);
SELECT matcol.register_enrichment('venue_cinema', 'public.venue', ARRAY['cinema_name'],
    'SELECT v.id, c.name AS cinema_name FROM venue v JOIN cinema c ON c.id = v.cinema_id WHERE v.id = ANY($1)',
    '[{"table": "public.cinema", "columns": ["id"], "sql": "SELECT id FROM public.venue WHERE cinema_id = ANY($1)"}]',
    self => true);
SELECT matcol.register_enrichment(
    name => 'venue_counts', target => 'venue',
    columns => ARRAY['auditorium_count', 'seat_count'],
    sql => $q$SELECT v.id, count(DISTINCT e.auditorium_id)::int AS auditorium_count, sum(e.seat_count)::bigint AS seat_count
FROM venue v LEFT JOIN event e ON e.venue_id = v.id
WHERE v.id = ANY($1) GROUP BY v.id
$q$,
    depends_on => '[{"table": "public.event", "columns": ["venue_id"]}]',
    expires_after => '1 day',
    settings => '{"batch_size": 200, "statement_timeout": "45s", "lock_timeout": 2, "work_mem": "64MB"}');
`

func demoDB(t *testing.T) (string, *pgx.Conn) {
	t.Helper()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, demo.Schema)
	return dsn, conn
}

func applyYAML(t *testing.T, dsn, body string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "matcol.yaml")
	require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
	cfg, err := config.Load(path, nil)
	require.NoError(t, err)
	cfg.DatabaseURL = dsn
	require.NoError(t, cfg.Validate())
	_, err = daemon.Apply(context.Background(), cfg, hclog.NewNullLogger())
	require.NoError(t, err)
}

func load(t *testing.T, conn *pgx.Conn) []registry.Enrichment {
	t.Helper()
	got, err := registry.Load(context.Background(), conn)
	require.NoError(t, err)
	return got
}

func register(t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var res string
	require.NoError(t, conn.QueryRow(context.Background(), sql, args...).Scan(&res))
	return res
}

func TestSQLRegistrationMatchesApply(t *testing.T) {
	ctx := context.Background()
	yamlDSN, yamlConn := demoDB(t)
	applyYAML(t, yamlDSN, registrationYAML)

	_, sqlConn := demoDB(t)
	_, err := registry.Install(ctx, sqlConn)
	require.NoError(t, err)
	pgtest.Exec(t, sqlConn, registrationSQL)

	want := load(t, yamlConn)
	require.Len(t, want, 3)
	require.Equal(t, want, load(t, sqlConn), "SQL registration must store what apply stores")
	// self is tri-state both ways: unset, true, false.
	require.Nil(t, want[2].Self, "venue_counts leaves self unset")
	require.Equal(t, new(true), want[1].Self, "venue_cinema says self: true")
	require.Equal(t, new(false), want[0].Self, "seat_counts says self: false")
	require.Equal(t, registry.Dependency{ID: want[0].DependsOn[1].ID, Source: pgident.Table{Schema: "public", Name: "cinema"},
		Columns: []string{}, Static: true}, want[0].DependsOn[1])

	// The daemon accepts what SQL registered: the plan builds and validates.
	_, _, err = daemon.LoadPlan(ctx, sqlConn)
	require.NoError(t, err)

	// Registering the same thing again changes nothing.
	require.Equal(t, "unchanged", register(t, sqlConn, `SELECT matcol.register_enrichment('venue_cinema', 'public.venue',
		ARRAY['cinema_name'], 'SELECT v.id, c.name AS cinema_name FROM venue v JOIN cinema c ON c.id = v.cinema_id WHERE v.id = ANY($1)',
		'[{"table": "public.cinema", "columns": ["id"], "sql": "SELECT id FROM public.venue WHERE cinema_id = ANY($1)"}]', self => true)`))

	t.Run("update keeps unchanged dependency ids", func(t *testing.T) {
		before := load(t, sqlConn)
		// venue_counts gains a dependency on cinema and keeps the one on event.
		require.Equal(t, "updated", register(t, sqlConn, `SELECT matcol.register_enrichment(
			name => 'venue_counts', target => 'venue', columns => ARRAY['auditorium_count', 'seat_count'],
			sql => $1, expires_after => '1 day',
			settings => '{"batch_size": 200, "statement_timeout": "45s", "lock_timeout": 2, "work_mem": "64MB"}',
			depends_on => '[{"table": "public.event", "columns": ["venue_id"]},
			                {"table": "cinema", "columns": ["id"], "sql": "SELECT id FROM public.venue WHERE cinema_id = ANY($1)"}]')`,
			before[2].SQL))
		after := load(t, sqlConn)
		require.Equal(t, "venue_counts", after[2].Name)
		require.Len(t, after[2].DependsOn, 2)
		require.Equal(t, before[2].DependsOn[0], after[2].DependsOn[0])

		applyYAML(t, yamlDSN, strings.Replace(registrationYAML, "        columns: [venue_id]\n", `        columns: [venue_id]
      - table: cinema
        columns: [id]
        sql: SELECT id FROM public.venue WHERE cinema_id = ANY($1)
`, 1))
		// The new dependency's id differs: apply upserted every dependency again, using up ids.
		require.Equal(t, withoutDepIDs(load(t, yamlConn)[2]), withoutDepIDs(after[2]))
	})

	t.Run("a removed dependency turns its queued entries into whole-target ones", func(t *testing.T) {
		before := load(t, sqlConn)
		dep := before[2].DependsOn[1]
		pgtest.Exec(t, sqlConn, `INSERT INTO matcol.pending (target_id, dependency_id, vals) VALUES ($1, $2, '[[1]]')`,
			before[2].TargetID, dep.ID)
		require.Equal(t, "updated", register(t, sqlConn, `SELECT matcol.register_enrichment(
			name => 'venue_counts', target => 'venue', columns => ARRAY['auditorium_count', 'seat_count'],
			sql => $1, expires_after => '1 day',
			settings => '{"batch_size": 200, "statement_timeout": "45s", "lock_timeout": 2, "work_mem": "64MB"}',
			depends_on => '[{"table": "public.event", "columns": ["venue_id"]}]')`, before[2].SQL))
		var dependency *int
		var vals *string
		require.NoError(t, sqlConn.QueryRow(ctx, `SELECT dependency_id, vals::text FROM matcol.pending`).Scan(&dependency, &vals))
		require.Nil(t, dependency)
		require.Nil(t, vals)
	})

	t.Run("unregister matches removal from the YAML", func(t *testing.T) {
		var existed bool
		require.NoError(t, sqlConn.QueryRow(ctx, `SELECT matcol.unregister_enrichment('seat_counts')`).Scan(&existed))
		require.True(t, existed)
		require.NoError(t, sqlConn.QueryRow(ctx, `SELECT matcol.unregister_enrichment('seat_counts')`).Scan(&existed))
		require.False(t, existed)
		var targets int
		require.NoError(t, sqlConn.QueryRow(ctx, `SELECT count(*) FROM matcol.target`).Scan(&targets))
		require.Equal(t, 1, targets, "a target without enrichments is removed")
		got := load(t, sqlConn)
		require.Len(t, got, 2)
		require.Equal(t, []string{"venue_cinema", "venue_counts"}, []string{got[0].Name, got[1].Name})
	})
}

func TestSQLRegistrationRejects(t *testing.T) {
	_, conn := demoDB(t)
	_, err := registry.Install(context.Background(), conn)
	require.NoError(t, err)
	cases := []struct {
		name, sql, want string
	}{
		{"missing table", `SELECT matcol.register_enrichment('e', 'nosuch', ARRAY['x'], 'SELECT 1')`, `relation "nosuch" does not exist`},
		{"a view", `CREATE VIEW v AS SELECT 1 AS id; SELECT matcol.register_enrichment('e', 'v', ARRAY['x'], 'SELECT 1')`, "target public.v is not a table"},
		{"no columns", `SELECT matcol.register_enrichment('e', 'venue', '{}', 'SELECT 1')`, "columns lists no column"},
		{"stamp column", `SELECT matcol.register_enrichment('e', 'venue', ARRAY['materialized_at'], 'SELECT 1')`, "matcol's own stamp"},
		{"empty sql", `SELECT matcol.register_enrichment('e', 'venue', ARRAY['seat_count'], ' ')`, "sql is required"},
		{"bad dependency", `SELECT matcol.register_enrichment('e', 'venue', ARRAY['seat_count'], 'SELECT 1', '[{"table": "nosuch", "columns": ["id"]}]')`,
			"depends_on table nosuch does not exist"},
		{"unknown setting", `SELECT matcol.register_enrichment('e', 'venue', ARRAY['seat_count'], 'SELECT 1', settings => '{"batchsize": 1}')`,
			"unknown setting batchsize"},
		{"static with columns", `SELECT matcol.register_enrichment('e', 'venue', ARRAY['seat_count'], 'SELECT 1', '[{"table": "event", "static": true, "columns": ["id"]}]')`,
			"a static table takes no columns and no sql"},
		{"static not a boolean", `SELECT matcol.register_enrichment('e', 'venue', ARRAY['seat_count'], 'SELECT 1', '[{"table": "event", "static": "yes"}]')`,
			"static must be true or false"},
		{"a materialized view, not static", `CREATE MATERIALIZED VIEW mv AS SELECT 1 AS id;
			SELECT matcol.register_enrichment('e', 'venue', ARRAY['seat_count'], 'SELECT 1', '[{"table": "mv", "columns": ["id"]}]')`,
			"depends_on table public.mv is not a table"},
		{"negative expiry", `SELECT matcol.register_enrichment('e', 'venue', ARRAY['seat_count'], 'SELECT 1', expires_after => '-1 hour')`,
			"expires_after must not be negative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := conn.Exec(context.Background(), c.sql)
			require.ErrorContains(t, err, c.want)
		})
	}
	var n int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM matcol.enrichment`).Scan(&n))
	require.Zero(t, n)
}

func withoutDepIDs(e registry.Enrichment) registry.Enrichment {
	deps := append([]registry.Dependency(nil), e.DependsOn...)
	for i := range deps {
		deps[i].ID = 0
	}
	e.DependsOn = deps
	return e
}

// A migration role with the grants docs/security.md lists can register; without EXECUTE it
// cannot, since registering chooses SQL that matcol's role will run.
func TestSQLRegistrationPrivileges(t *testing.T) {
	ctx := context.Background()
	dsn, su := demoDB(t)
	_, err := registry.Install(ctx, su)
	require.NoError(t, err)
	var db, user string
	require.NoError(t, su.QueryRow(ctx, `SELECT current_database(), current_user`).Scan(&db, &user))
	role := "migrator_" + strings.TrimPrefix(db, "matcol_test_")
	pgtest.Exec(t, su, `CREATE ROLE `+role+` LOGIN`)
	t.Cleanup(func() {
		_, _ = su.Exec(context.Background(), `DROP OWNED BY `+role+`; DROP ROLE `+role)
	})
	conn := pgtest.Connect(t, strings.Replace(dsn, "://"+user+"@", "://"+role+"@", 1))
	registerVenue := `SELECT matcol.register_enrichment('venue_cinema', 'public.venue', ARRAY['cinema_name'],
		'SELECT v.id, c.name AS cinema_name FROM venue v JOIN cinema c ON c.id = v.cinema_id WHERE v.id = ANY($1)',
		'[{"table": "public.cinema", "columns": ["id"], "sql": "SELECT id FROM public.venue WHERE cinema_id = ANY($1)"}]')`

	pgtest.Exec(t, su, `GRANT USAGE ON SCHEMA matcol TO `+role)
	_, err = conn.Exec(ctx, registerVenue)
	require.ErrorContains(t, err, "permission denied for function register_enrichment")

	pgtest.Exec(t, su, `GRANT EXECUTE ON FUNCTION matcol.register_enrichment(text, regclass, text[], text, jsonb, interval, boolean, jsonb),
		matcol.unregister_enrichment(text) TO `+role+`;
		GRANT SELECT, INSERT, UPDATE, DELETE ON matcol.target, matcol.enrichment, matcol.dependency, matcol.pending TO `+role)
	require.Equal(t, "added", register(t, conn, registerVenue))
	var existed bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT matcol.unregister_enrichment('venue_cinema')`).Scan(&existed))
	require.True(t, existed)
}
