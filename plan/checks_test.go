package plan_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/registry"
)

const venueSeatsSQL = `SELECT v.id, sum(e.seat_count)::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id
	WHERE v.id = ANY($1) GROUP BY v.id`

func seats(deps ...registry.Dependency) registry.Enrichment {
	return registry.Enrichment{Name: "venue_seats", Target: table("public", "venue"), Columns: []string{"seat_count"},
		SQL: venueSeatsSQL, DependsOn: deps}
}

func sourceNames(p *plan.Plan) []string {
	var out []string
	for _, s := range p.Sources {
		out = append(out, s.Table.String())
	}
	return out
}

func TestApplyChecksWhatTheSQLReads(t *testing.T) {
	b := setup(t, `
CREATE MATERIALIZED VIEW venue_city AS SELECT v.id, c.city FROM venue v JOIN cinema c ON c.id = v.cinema_id;
CREATE TABLE item (id int PRIMARY KEY, total bigint, lines int, materialized_at timestamptz);
CREATE TABLE line (id int PRIMARY KEY, item_id int REFERENCES item, amount bigint, batch_id int);
`)

	t.Run("an uncovered table fails, naming it and the entry to add", func(t *testing.T) {
		_, err := b.build(t, seats())
		require.EqualError(t, err, "enrichment venue_seats: its sql reads public.event (seat_count, venue_id), which no depends_on entry "+
			"covers, so a change there would leave rows of public.venue stale; add to depends_on {table: public.event, columns: [venue_id]}, "+
			"or {table: public.event, static: true} if it never changes")
	})

	t.Run("a static entry covers a table and gets no trigger", func(t *testing.T) {
		p := b.mustBuild(t, seats(registry.Dependency{Source: table("", "event"), Static: true}))
		require.Empty(t, p.Sources, "a static table is no source")
		deps := p.Targets[0].Enrichments[0].Deps()
		require.Len(t, deps, 1)
		require.True(t, deps[0].Static)
	})

	t.Run("a materialized view needs static", func(t *testing.T) {
		def := seats(registry.Dependency{Source: table("", "event"), Columns: []string{"venue_id"}})
		def.SQL = `SELECT v.id, (SELECT count(*) FROM venue_city c WHERE c.id = v.id)::bigint AS seat_count FROM venue v WHERE v.id = ANY($1)`
		_, err := b.build(t, def)
		require.ErrorContains(t, err, "enrichment venue_seats: its sql reads public.venue_city (id), which no depends_on entry covers")
		require.ErrorContains(t, err, "a materialized view never fires triggers: add to depends_on {table: public.venue_city, static: true}")

		def.DependsOn = append(def.DependsOn, registry.Dependency{Source: table("", "venue_city"), Columns: []string{"id"}})
		_, err = b.build(t, def)
		require.EqualError(t, err, "enrichment venue_seats: depends_on public.venue_city is a materialized view, which never fires triggers; "+
			"mark it static: true (with no columns), and set expires_after if it changes")

		def.DependsOn[1] = registry.Dependency{Source: table("", "venue_city"), Static: true}
		p := b.mustBuild(t, def)
		require.Equal(t, []string{"public.event"}, sourceNames(p))
	})

	t.Run("a table only the mapping sql reads must be covered too", func(t *testing.T) {
		def := seats(registry.Dependency{Source: table("", "event"), Columns: []string{"venue_id"}},
			registry.Dependency{Source: table("", "line"), Columns: []string{"batch_id"},
				SQL: "SELECT e.venue_id FROM event e JOIN cinema c ON c.id = e.auditorium_id WHERE e.id = ANY($1)"})
		_, err := b.build(t, def)
		require.ErrorContains(t, err, "enrichment venue_seats: depends_on public.line: its sql reads public.cinema (id), which no depends_on entry covers")
		def.DependsOn = append(def.DependsOn, registry.Dependency{Source: table("", "cinema"), Static: true})
		b.mustBuild(t, def)
	})

	itemDef := func(dep registry.Dependency) registry.Enrichment {
		return registry.Enrichment{Name: "item_totals", Target: table("", "item"), Columns: []string{"total"},
			SQL: `SELECT i.id, sum(l.amount)::bigint AS total FROM item i LEFT JOIN line l ON l.item_id = i.id
				WHERE i.id = ANY($1) GROUP BY i.id`,
			DependsOn: []registry.Dependency{dep}}
	}

	t.Run("mapping sql that looks its own source up by key fails", func(t *testing.T) {
		_, err := b.build(t, itemDef(registry.Dependency{Source: table("", "line"), Columns: []string{"id"},
			SQL: "SELECT item_id FROM line WHERE id = ANY($1)"}))
		require.EqualError(t, err, `enrichment item_totals: depends_on public.line: its sql looks the changed rows of public.line up by `+
			`their key (id) when the change is processed, after it: a deleted row, or one moved to another row of public.item, is no longer `+
			`found there, and the row it belonged to stays stale; list the column that holds the key of public.item instead, with no sql, `+
			`so that each change brings its old and new values: {table: public.line, columns: [item_id]}`)
	})

	t.Run("other mapping sql that reads its own source warns", func(t *testing.T) {
		p := b.mustBuild(t, itemDef(registry.Dependency{Source: table("", "line"), Columns: []string{"batch_id", "item_id"},
			SQL: "SELECT DISTINCT item_id FROM line WHERE batch_id = ANY($1) OR item_id = ANY($2)"}))
		require.Contains(t, strings.Join(p.Warnings, "\n"), "enrichment item_totals: depends_on public.line: its sql reads public.line itself when the change is processed")
	})

	t.Run("a column computed on the same table is refused", func(t *testing.T) {
		lines := registry.Enrichment{Name: "item_lines", Target: table("", "item"), Columns: []string{"lines"},
			SQL:       `SELECT i.id, (SELECT count(*) FROM line l WHERE l.item_id = i.id AND i.total > 0)::int AS lines FROM item i WHERE i.id = ANY($1)`,
			DependsOn: []registry.Dependency{{Source: table("", "line"), Columns: []string{"item_id"}}}}
		_, err := b.build(t, itemDef(registry.Dependency{Source: table("", "line"), Columns: []string{"item_id"}}), lines)
		require.EqualError(t, err, `enrichment item_lines: its sql reads column "total" of public.item, which enrichment item_totals computes: `+
			`a table's enrichments are written in one statement, so it would see the value from before; compute them in one enrichment`)

		own := itemDef(registry.Dependency{Source: table("", "line"), Columns: []string{"item_id"}})
		own.SQL = `SELECT i.id, coalesce(i.total, 0) + 1 AS total FROM item i WHERE i.id = ANY($1)`
		_, err = b.build(t, own)
		require.ErrorContains(t, err, `enrichment item_totals: its sql reads column "total" of public.item, its own output`)
	})

	t.Run("a chain across tables is fine, a cycle is refused", func(t *testing.T) {
		chained := registry.Enrichment{Name: "cinema_seats", Target: table("", "cinema_total"), Columns: []string{"seats"},
			SQL:       `SELECT c.id, (SELECT sum(v.seat_count) FROM venue v WHERE v.cinema_id = c.id)::bigint AS seats FROM cinema_total c WHERE c.id = ANY($1)`,
			DependsOn: []registry.Dependency{{Source: table("", "venue"), Columns: []string{"cinema_id"}}}}
		exec(t, b.conn, `CREATE TABLE cinema_total (id int PRIMARY KEY, seats bigint, materialized_at timestamptz)`)
		p := b.mustBuild(t, seats(registry.Dependency{Source: table("", "event"), Columns: []string{"venue_id"}}), chained)
		all, watch := p.Sources[1].Watch()
		require.Equal(t, "public.venue", p.Sources[1].Table.String())
		require.False(t, all)
		require.Equal(t, []string{"cinema_id", "seat_count"}, watch, "matcol's write of seat_count invalidates cinema_seats")

		// venue_seats now also reads cinema_total.seats: venue_seats → cinema_seats → venue_seats.
		back := seats(registry.Dependency{Source: table("", "event"), Columns: []string{"venue_id"}},
			registry.Dependency{Source: table("", "cinema_total"), Columns: []string{"id"}, SQL: "SELECT id FROM venue WHERE cinema_id = ANY($1)"})
		back.SQL = `SELECT v.id, (SELECT sum(e.seat_count) FROM event e WHERE e.venue_id = v.id)::bigint
			+ coalesce((SELECT t.seats FROM cinema_total t WHERE t.id = v.cinema_id), 0) AS seat_count FROM venue v WHERE v.id = ANY($1)`
		_, err := b.build(t, back, chained)
		require.EqualError(t, err, `enrichments read each other's output in a cycle, cinema_seats → venue_seats → cinema_seats `+
			`(cinema_seats reads public.venue.seat_count, which venue_seats computes; venue_seats reads public.cinema_total.seats, `+
			`which cinema_seats computes): each write would invalidate the next forever; break the cycle`)
	})
}

func exec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	_, err := conn.Exec(context.Background(), sql)
	require.NoError(t, err)
}

func TestTemplateReadsInTheirOwnSchema(t *testing.T) {
	var ddl strings.Builder
	for _, s := range []string{"t1", "t2", "t3"} {
		fmt.Fprintf(&ddl, `CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.item (id int PRIMARY KEY, total bigint, materialized_at timestamptz);
CREATE TABLE %[1]s.line (id int PRIMARY KEY, item_id int, amount bigint);
CREATE FUNCTION %[1]s.cents(bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS 'SELECT $1 * 100';
`, s)
	}
	// t3's line is a view over a table the template does not list.
	ddl.WriteString(`DROP TABLE t3.line; CREATE TABLE t3.raw_line (id int PRIMARY KEY, item_id int, amount bigint);
CREATE VIEW t3.line AS SELECT * FROM t3.raw_line;`)
	b := setup(t, ddl.String())
	def := registry.Enrichment{Name: "item_totals", Target: table("t*", "item"), Template: true, Columns: []string{"total"},
		SQL: `SELECT i.id, cents(sum(l.amount)::bigint) AS total FROM item i LEFT JOIN line l ON l.item_id = i.id
			WHERE i.id = ANY($1) GROUP BY i.id`,
		DependsOn: []registry.Dependency{{Source: table("", "line"), Columns: []string{"item_id"}}}}

	for _, pass := range []string{"first", "cached"} {
		t.Run(pass, func(t *testing.T) {
			p := b.mustBuild(t, def)
			require.Len(t, p.Targets, 2)
			for i, schema := range []string{"t1", "t2"} {
				e := p.Targets[i].Enrichments[0]
				require.Equal(t, map[string][]string{schema + ".item": {"id"}, schema + ".line": {"amount", "item_id"}}, reads(e.Reads))
				require.Equal(t, []string{schema + ".cents(bigint)"}, e.Calls)
			}
			require.Len(t, p.Skipped, 1)
			require.Contains(t, p.Skipped[0], "enrichment item_totals on t3.item: depends_on t3.line is a view")
			// One line for the template, not one per schema.
			require.Contains(t, p.Warnings, "enrichment item_totals on t1.item: its sql calls t1.cents(bigint), whose body matcol cannot see: "+
				"list in depends_on any table it reads (and the same in 1 more schemas matching t*)")
			require.Contains(t, p.Warnings, `table t1.item has no index on stale rows; create one: CREATE INDEX CONCURRENTLY ON "t1"."item" ("id") `+
				"WHERE materialized_at IS NULL (and the same in 1 more schemas matching t*)")
			require.Len(t, p.Warnings, 2, "one line per template and kind, not one per schema")
		})
	}
}

func TestSelfWatch(t *testing.T) {
	b := setup(t, "")
	sql := `SELECT v.id, length(v.name)::bigint AS seat_count FROM venue v WHERE v.id = ANY($1)`
	def := registry.Enrichment{Name: "venue_seats", Target: table("", "venue"), Columns: []string{"seat_count"}, SQL: sql}
	cases := []struct {
		name string
		self *bool
		all  bool
		cols []string
	}{
		{"unset: the columns it reads, and the key", nil, false, []string{"id", "name"}},
		{"true: every column but matcol's", new(true), true, []string{"cinema_id", "id", "name"}},
		{"false: none", new(false), false, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := def
			d.Self = c.self
			p := b.mustBuild(t, d)
			all, cols := p.Targets[0].SelfWatch()
			require.Equal(t, c.all, all)
			require.Equal(t, c.cols, cols)
		})
	}
	t.Run("a whole-row read watches every column", func(t *testing.T) {
		d := def
		d.SQL = `SELECT v.id, length(v::text)::bigint AS seat_count FROM venue v WHERE v.id = ANY($1)`
		_, err := b.build(t, d)
		require.ErrorContains(t, err, `its sql reads column "seat_count" of public.venue, its own output (a whole-row reference reads every column)`)
	})
}

// Instances of one shape share one analysis, moved to their own schema; an instance whose
// tables differ gets its own.
func TestTemplateInstancesShareReads(t *testing.T) {
	var ddl strings.Builder
	for _, s := range []string{"s1", "s2", "s3", "s4"} {
		fmt.Fprintf(&ddl, `CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.item (id int PRIMARY KEY, total bigint, materialized_at timestamptz);
CREATE TABLE %[1]s.line (id int PRIMARY KEY, item_id int, amount bigint);
`, s)
	}
	ddl.WriteString(`ALTER TABLE s3.line ADD COLUMN note text;
CREATE FUNCTION s4.anything() RETURNS int LANGUAGE sql AS 'SELECT 1';`)
	b := setup(t, ddl.String())
	def := registry.Enrichment{Name: "item_lines", Target: table("s*", "item"), Template: true, Columns: []string{"total"},
		SQL: `SELECT i.id, count(l)::bigint AS total FROM item i LEFT JOIN line l ON l.item_id = i.id
			WHERE i.id = ANY($1) GROUP BY i.id`,
		DependsOn: []registry.Dependency{{Source: table("", "line"), Columns: []string{"item_id"}}}}
	p := b.mustBuild(t, def)
	require.Len(t, p.Targets, 4)
	for i, schema := range []string{"s1", "s2", "s3", "s4"} {
		e := p.Targets[i].Enrichments[0]
		line := []string{"*", "amount", "id", "item_id"}
		if schema == "s3" {
			line = []string{"*", "amount", "id", "item_id", "note"}
		}
		require.Equal(t, map[string][]string{schema + ".item": {"id"}, schema + ".line": line}, reads(e.Reads), schema)
		require.Equal(t, []string{"id"}, must(e.SelfWatch()), "%s: the key, the only item column read", schema)
		for _, r := range e.Reads {
			var oid uint32
			require.NotZero(t, r.OID)
			require.NoError(t, b.conn.QueryRow(context.Background(), `SELECT $1::regclass::oid`, r.Table.Sanitize()).Scan(&oid))
			require.Equal(t, oid, r.OID, "%s reads its own %s", schema, r.Table)
		}
	}
	require.Contains(t, p.Explain(), "enrichment item_lines: s1.item (total)\n  template s*.item, in 4 schemas; shown for s1\n")
}

func must(all bool, cols []string) []string {
	if all {
		return append([]string{"*"}, cols...)
	}
	return cols
}

// A tenant that defines a function named like a built-in, which its schema's search_path makes
// the template's SQL call instead, would run its code with matcol's rights: that schema is
// skipped, naming the function; the other tenants go on.
func TestTemplateSkipsTenantShadowingBuiltins(t *testing.T) {
	var ddl strings.Builder
	for _, s := range []string{"t1", "t2"} {
		fmt.Fprintf(&ddl, `CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.item (id int PRIMARY KEY, label varchar, total bigint, materialized_at timestamptz);
`, s)
	}
	ddl.WriteString(`CREATE FUNCTION t2.lower(varchar) RETURNS text LANGUAGE sql AS 'SELECT ''owned''';`)
	b := setup(t, ddl.String())
	def := registry.Enrichment{Name: "item_label", Target: table("t*", "item"), Template: true, Columns: []string{"total"},
		SQL: `SELECT i.id, length(lower(i.label))::bigint AS total FROM item i WHERE i.id = ANY($1)`}
	p := b.mustBuild(t, def)
	require.Len(t, p.Targets, 1)
	require.Equal(t, "t1", p.Targets[0].Table.Schema)
	require.Len(t, p.Skipped, 1)
	require.Contains(t, p.Skipped[0], "enrichment item_label on t2.item: its sql resolves to t2.lower(character varying), which schema t2 itself defines in place of the built-in lower")
}

// The sample writes rows (and rolls them back): one the application holds must not fail apply.
func TestSampleSkipsRowsTheApplicationHolds(t *testing.T) {
	b := setup(t, `INSERT INTO venue (id, name) VALUES (1, 'a'), (2, 'b')`)
	ctx := context.Background()
	other := pgtest.Connect(t, b.dsn)
	tx2, err := other.Begin(ctx)
	require.NoError(t, err)
	defer tx2.Rollback(ctx)
	_, err = tx2.Exec(ctx, `SELECT * FROM venue WHERE id = 1 FOR UPDATE`)
	require.NoError(t, err)

	tx, err := b.conn.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	_, err = tx.Exec(ctx, `SET LOCAL lock_timeout = '200ms'`)
	require.NoError(t, err)
	p, err := plan.Build(ctx, tx, []registry.Enrichment{seats(registry.Dependency{Source: table("", "event"), Columns: []string{"venue_id"}})})
	require.NoError(t, err)
	require.NoError(t, plan.Sample(ctx, tx, p, 100))
	require.Contains(t, strings.Join(p.Warnings, "\n"), "enrichment venue_seats: not sampled on rows of public.venue, which the application held")
}
