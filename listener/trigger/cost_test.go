package trigger_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/registry"
)

const costSchema = `
CREATE TABLE acct (id bigint PRIMARY KEY, bal bigint NOT NULL DEFAULT 0, note text, n bigint, materialized_at timestamptz);
CREATE TABLE acct_read (LIKE acct INCLUDING ALL);
CREATE TABLE acct_bare (LIKE acct INCLUDING ALL);
CREATE TABLE hist (aid bigint NOT NULL, delta int NOT NULL);
CREATE TABLE hist_bare (LIKE hist INCLUDING ALL);
INSERT INTO acct (id, materialized_at) SELECT g, now() FROM generate_series(1, 100000) g;
INSERT INTO acct_read SELECT * FROM acct;
INSERT INTO acct_bare SELECT * FROM acct;
`

// BenchmarkWriteCost times what matcol's triggers add to single-row application statements: each
// case runs its statement 1,000 times in a server-side loop, on a table with matcol's triggers
// and on one without, and reports µs per statement.
//
//	go test ./listener/trigger -run XXX -bench WriteCost -benchtime 20x
func BenchmarkWriteCost(b *testing.B) {
	conn := pgtest.Connect(b, pgtest.NewDB(b))
	pgtest.Exec(b, conn, costSchema)
	table := func(name string) pgident.Table { return pgident.Table{Schema: "public", Name: name} }
	apply(b, conn, []registry.Enrichment{
		{Name: "acct_n", Target: table("acct"), Columns: []string{"n"},
			SQL:       `SELECT a.id, count(h.aid)::bigint AS n FROM acct a LEFT JOIN hist h ON h.aid = a.id WHERE a.id = ANY($1) GROUP BY a.id`,
			DependsOn: []registry.Dependency{{Source: table("hist"), Columns: []string{"aid"}}}},
		// Reads bal: an UPDATE of acct_read meets the watched-columns trigger.
		{Name: "acct_read_n", Target: table("acct_read"), Columns: []string{"n"},
			SQL: `SELECT a.id, a.bal AS n FROM acct_read a WHERE a.id = ANY($1)`},
	})
	ctx := context.Background()
	for _, c := range []struct{ name, stmt string }{
		{"insert source row/bare", `INSERT INTO hist_bare VALUES (1 + (i * 7919) % 99999, 1)`},
		{"insert source row/matcol", `INSERT INTO hist VALUES (1 + (i * 7919) % 99999, 1)`},
		{"update target, column nothing reads/bare", `UPDATE acct_bare SET bal = bal + 1 WHERE id = 1 + (i * 7919) % 99999`},
		{"update target, column nothing reads/matcol key trigger", `UPDATE acct SET bal = bal + 1 WHERE id = 1 + (i * 7919) % 99999`},
		{"update target, column nothing reads/matcol watched-columns trigger", `UPDATE acct_read SET note = 'x' WHERE id = 1 + (i * 7919) % 99999`},
	} {
		b.Run(c.name, func(b *testing.B) {
			var spent time.Duration
			for range b.N {
				start := time.Now()
				pgtest.Exec(b, conn, fmt.Sprintf(`DO $$ BEGIN FOR i IN 1..1000 LOOP %s; END LOOP; END $$`, c.stmt))
				spent += time.Since(start)
				if _, err := conn.Exec(ctx, `TRUNCATE matcol.pending`); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(spent.Microseconds())/float64(b.N*1000), "µs/stmt")
		})
	}
}
