package plan

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/registry"
)

// TestMeasureReads times the read analysis: MATCOL_MEASURE=1 enables it, MATCOL_MEASURE_TENANTS
// sets the number of template instances (1,000 by default). The figures are in
// docs/configuration.md.
func TestMeasureReads(t *testing.T) {
	if os.Getenv("MATCOL_MEASURE") == "" {
		t.Skip("set MATCOL_MEASURE=1 to time the read analysis")
	}
	tenants := 1000
	if s := os.Getenv("MATCOL_MEASURE_TENANTS"); s != "" {
		var err error
		tenants, err = strconv.Atoi(s)
		require.NoError(t, err)
	}
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	_, err := registry.Install(ctx, conn)
	require.NoError(t, err)
	for i := 0; i < tenants; i += 250 {
		var ddl strings.Builder
		for j := i; j < min(i+250, tenants); j++ {
			fmt.Fprintf(&ddl, `CREATE SCHEMA t%05[1]d;
CREATE TABLE t%05[1]d.item (id int PRIMARY KEY, label text, total bigint, n int, materialized_at timestamptz);
CREATE INDEX ON t%05[1]d.item (id) WHERE materialized_at IS NULL;
CREATE TABLE t%05[1]d.item_detail (id serial PRIMARY KEY, item_id int NOT NULL, amount bigint NOT NULL);
CREATE VIEW t%05[1]d.big_detail AS SELECT * FROM t%05[1]d.item_detail WHERE amount > 100;
`, j)
		}
		pgtest.Exec(t, conn, ddl.String())
	}
	plain := `SELECT i.id, sum(d.amount) AS total, count(d.id)::int AS n
		FROM item i LEFT JOIN item_detail d ON d.item_id = i.id WHERE i.id = ANY($1) GROUP BY i.id`
	viaView := `SELECT i.id, sum(d.amount) AS total, count(d)::int AS n
		FROM item i LEFT JOIN big_detail d ON d.item_id = i.id WHERE i.id = ANY($1) GROUP BY i.id`

	// One statement, analyzed again and again on one connection.
	for _, c := range []struct{ name, sql string }{{"a join", plain}, {"a join through a view, whole row", viaView}} {
		tx, err := conn.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `SET LOCAL search_path TO t00000`)
		require.NoError(t, err)
		b := &builder{ctx: ctx, conn: tx, types: map[uint32]string{}}
		sd, err := tx.Conn().PgConn().Prepare(ctx, "", c.sql, nil)
		require.NoError(t, err)
		const n = 500
		cpu := backendCPU(t, tx)
		start := time.Now()
		for range n {
			a, problem, err := b.analyze(c.sql, sd.ParamOIDs, len(sd.Fields))
			require.NoError(t, err)
			require.Empty(t, problem)
			require.Len(t, a.reads, 2)
		}
		t.Logf("analysis of %s: %s wall, %s server CPU per statement (mean of %d)", c.name,
			(time.Since(start) / n).Round(time.Microsecond), (cpu() / n).Round(time.Microsecond), n)
		require.NoError(t, tx.Rollback(ctx))
	}

	// A template over every schema: the first build analyzes each instance, the second finds
	// them in the validated cache.
	def := registry.Enrichment{Name: "item_totals", Target: pgident.Table{Schema: "t*", Name: "item"}, Template: true,
		Columns: []string{"total", "n"}, SQL: plain,
		DependsOn: []registry.Dependency{{Source: pgident.Table{Name: "item_detail"}, Columns: []string{"item_id"}}}}
	// On one connection, so that its backend's CPU is all of the server's work.
	build := func(pass string) {
		tx, err := conn.Begin(ctx)
		require.NoError(t, err)
		cpu := backendCPU(t, tx)
		start := time.Now()
		p, err := Build(ctx, tx, []registry.Enrichment{def})
		require.NoError(t, err)
		require.Len(t, p.Targets, tenants)
		t.Logf("%s of %d instances: %s wall, %s server CPU", pass, tenants, time.Since(start).Round(time.Millisecond),
			cpu().Round(time.Millisecond))
		require.NoError(t, tx.Commit(ctx), "keeps the target ids, part of what the cache knows an instance by")
	}
	build("first build (alike tenants share one analysis)")
	build("second build (cached)")

	// A function in every tenant schema: each instance gets an analysis of its own.
	for i := 0; i < tenants; i += 250 {
		var ddl strings.Builder
		for j := i; j < min(i+250, tenants); j++ {
			fmt.Fprintf(&ddl, "CREATE FUNCTION t%05[1]d.f() RETURNS int LANGUAGE sql AS 'SELECT 1';\n", j)
		}
		pgtest.Exec(t, conn, ddl.String())
	}
	def.SQL += " -- again"
	build("first build (one analysis per tenant)")
}

// backendCPU returns a function that tells the CPU time the connection's backend used since.
func backendCPU(t *testing.T, tx pgx.Tx) func() time.Duration {
	var pid int
	require.NoError(t, tx.QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&pid))
	read := func() time.Duration {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		require.NoError(t, err, "the server must run on this machine")
		// Fields after the command name, which is in parentheses: utime and stime are the 14th
		// and 15th fields, in clock ticks (100 a second on Linux).
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		u, _ := strconv.Atoi(f[11])
		s, _ := strconv.Atoi(f[12])
		return time.Duration(u+s) * 10 * time.Millisecond
	}
	before := read()
	return func() time.Duration { return read() - before }
}
