package plan_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/registry"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const readsSchema = `
CREATE TABLE venue (id int PRIMARY KEY, cinema_id int, name text, seat_count bigint, materialized_at timestamptz);
CREATE TABLE event (id int PRIMARY KEY, venue_id int REFERENCES venue, auditorium_id int, seat_count int,
                    start_time timestamptz, note text);
CREATE TABLE cinema (id int PRIMARY KEY, name text, city text);
CREATE SCHEMA "Ünï ""q""";
CREATE TABLE "Ünï ""q"""."Line item" ("Item Id" int, "Qty" int, "prix €" numeric, id int PRIMARY KEY);
`

type bundle struct {
	conn *pgx.Conn
	dsn  string
}

func setup(t *testing.T, ddl string) bundle {
	t.Helper()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	_, err := registry.Install(context.Background(), conn)
	require.NoError(t, err)
	pgtest.Exec(t, conn, readsSchema+ddl)
	return bundle{conn: conn, dsn: dsn}
}

// build builds a plan of defs inside a transaction that is rolled back.
func (b bundle) build(t *testing.T, defs ...registry.Enrichment) (*plan.Plan, error) {
	t.Helper()
	ctx := context.Background()
	tx, err := b.conn.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	return plan.Build(ctx, tx, defs)
}

func (b bundle) mustBuild(t *testing.T, defs ...registry.Enrichment) *plan.Plan {
	t.Helper()
	p, err := b.build(t, defs...)
	require.NoError(t, err)
	return p
}

func table(schema, name string) pgident.Table { return pgident.Table{Schema: schema, Name: name} }

// venueDef is an enrichment of venue.seat_count with sql, covering event and cinema.
func venueDef(sql string) registry.Enrichment {
	return registry.Enrichment{Name: "venue_seats", Target: table("public", "venue"), Columns: []string{"seat_count"}, SQL: sql,
		DependsOn: []registry.Dependency{
			{Source: table("public", "event"), Columns: []string{"venue_id"}},
			{Source: table("public", "cinema"), Columns: []string{"id"}, SQL: "SELECT id FROM venue WHERE cinema_id = ANY($1)"},
			{Source: table(`Ünï "q"`, "Line item"), Columns: []string{"Item Id"}},
		}}
}

// reads maps table name to its read, "*" standing for a whole-row read.
func reads(rs []plan.Read) map[string][]string {
	out := map[string][]string{}
	for _, r := range rs {
		cols := r.Columns
		if r.All {
			cols = append([]string{"*"}, cols...)
		}
		if cols == nil {
			cols = []string{}
		}
		out[r.Table.String()] = cols
	}
	return out
}

func TestReadsFollowTheStatement(t *testing.T) {
	b := setup(t, `
CREATE VIEW upcoming AS SELECT e.venue_id, e.seat_count FROM event e WHERE e.start_time > now();
CREATE VIEW upcoming_rows AS SELECT u.venue_id, x FROM upcoming u JOIN event x ON x.venue_id = u.venue_id;
CREATE MATERIALIZED VIEW city_venues AS SELECT v.id, c.city FROM venue v JOIN cinema c ON c.id = v.cinema_id;
`)
	cases := []struct {
		name, sql string
		want      map[string][]string
	}{
		{"join", `SELECT v.id, sum(e.seat_count)::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id
			WHERE v.id = ANY($1) GROUP BY v.id`,
			map[string][]string{"public.venue": {"id"}, "public.event": {"seat_count", "venue_id"}}},
		{"subqueries and a CTE", `WITH c AS (SELECT id, name FROM cinema)
			SELECT v.id, (SELECT count(*) FROM event e WHERE e.venue_id = v.id AND EXISTS (SELECT 1 FROM c WHERE c.name = e.note))::bigint AS seat_count
			FROM venue v WHERE v.id = ANY($1)`,
			map[string][]string{"public.venue": {"id"}, "public.event": {"note", "venue_id"}, "public.cinema": {"id", "name"}}},
		{"a table read for its rows only", `SELECT v.id, (SELECT count(*) FROM cinema)::bigint AS seat_count FROM venue v WHERE v.id = ANY($1)`,
			map[string][]string{"public.venue": {"id"}, "public.cinema": {}}},
		{"keys from the parameter alone", `SELECT k AS id, (SELECT sum(seat_count) FROM event WHERE venue_id = k)::bigint AS seat_count FROM unnest($1::int[]) k`,
			map[string][]string{"public.event": {"seat_count", "venue_id"}}},
		{"a whole-row reference beside a column", `SELECT v.id, count(e)::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id
			WHERE v.id = ANY($1) GROUP BY v.id`,
			map[string][]string{"public.venue": {"id"}, "public.event": {"*", "auditorium_id", "id", "note", "seat_count", "start_time", "venue_id"}}},
		{"a view, to its table", `SELECT v.id, (SELECT sum(u.seat_count) FROM upcoming u WHERE u.venue_id = v.id)::bigint AS seat_count FROM venue v WHERE v.id = ANY($1)`,
			map[string][]string{"public.venue": {"id"}, "public.event": {"seat_count", "start_time", "venue_id"}}},
		{"a view over a view with a whole row", `SELECT v.id, (SELECT count(*) FROM upcoming_rows u WHERE u.venue_id = v.id)::bigint AS seat_count FROM venue v WHERE v.id = ANY($1)`,
			map[string][]string{"public.venue": {"id"}, "public.event": {"*", "auditorium_id", "id", "note", "seat_count", "start_time", "venue_id"}}},
		{"quoted and unicode names", `SELECT v.id, (SELECT sum(l."prix €")::bigint FROM "Ünï ""q"""."Line item" l WHERE l."Item Id" = v.id) AS seat_count
			FROM venue v WHERE v.id = ANY($1)`,
			map[string][]string{"public.venue": {"id"}, `"Ünï ""q"""."Line item"`: {"Item Id", "prix €"}}},
		{"a parameter in a string is left alone", `SELECT v.id, length('$1')::bigint AS seat_count FROM venue v WHERE v.id = ANY($1) AND v.name <> '$2'`,
			map[string][]string{"public.venue": {"id", "name"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := b.mustBuild(t, venueDef(c.sql))
			require.Equal(t, c.want, reads(p.Targets[0].Enrichments[0].Reads))
		})
	}

	t.Run("a materialized view is read as itself", func(t *testing.T) {
		def := venueDef(`SELECT v.id, (SELECT count(*) FROM city_venues c WHERE c.id = v.id AND c.city = 'x')::bigint AS seat_count
			FROM venue v WHERE v.id = ANY($1)`)
		def.DependsOn = append(def.DependsOn, registry.Dependency{Source: table("public", "city_venues"), Static: true})
		p := b.mustBuild(t, def)
		rs := p.Targets[0].Enrichments[0].Reads
		require.Equal(t, map[string][]string{"public.venue": {"id"}, "public.city_venues": {"city", "id"}}, reads(rs))
		require.False(t, rs[0].Triggers(), "a materialized view fires no trigger")
	})

	t.Run("mapping sql", func(t *testing.T) {
		p := b.mustBuild(t, venueDef(`SELECT v.id, v.cinema_id::bigint AS seat_count FROM venue v WHERE v.id = ANY($1)`))
		deps := p.Targets[0].Enrichments[0].Deps()
		require.Nil(t, deps[0].Reads, "a direct dependency has no sql")
		require.Equal(t, map[string][]string{"public.venue": {"cinema_id", "id"}}, reads(deps[1].Reads))
	})

	t.Run("functions outside pg_catalog are named", func(t *testing.T) {
		pgtest.Exec(t, b.conn, `CREATE FUNCTION seats_of(int) RETURNS bigint LANGUAGE sql STABLE AS 'SELECT sum(seat_count) FROM event WHERE venue_id = $1'`)
		p := b.mustBuild(t, venueDef(`SELECT v.id, seats_of(v.id) AS seat_count FROM venue v WHERE v.id = ANY($1)`))
		require.Equal(t, []string{"public.seats_of(integer)"}, p.Targets[0].Enrichments[0].Calls)
		require.Contains(t, p.Warnings, "enrichment venue_seats: its sql calls public.seats_of(integer), whose body matcol cannot see: list in depends_on any table it reads")
	})

	t.Run("no residue", func(t *testing.T) {
		var n int
		require.NoError(t, b.conn.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_class WHERE relname = 'matcol_reads'`).Scan(&n))
		require.Zero(t, n)
	})
}
