package daemon_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/verify"
)

// tenantDDL creates one tenant: item (the target) and item_detail (its source). Each tenant's
// amounts carry its own number, so a batch that read another tenant's rows shows in the totals.
func tenantDDL(schema string, n int) string {
	s := pgx.Identifier{schema}.Sanitize()
	return fmt.Sprintf(`CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.item (id int PRIMARY KEY, label text, total bigint, n int, materialized_at timestamptz);
CREATE INDEX ON %[1]s.item (id) WHERE materialized_at IS NULL;
CREATE TABLE %[1]s.item_detail (id serial PRIMARY KEY, item_id int NOT NULL, amount bigint NOT NULL);
CREATE INDEX ON %[1]s.item_detail (item_id);
INSERT INTO %[1]s.item (id, label) SELECT g, 'i' || g FROM generate_series(1, 5) g;
INSERT INTO %[1]s.item_detail (item_id, amount) SELECT 1 + g %% 5, %[2]d * 1000 + g FROM generate_series(1, 10) g;
`, s, n)
}

const templateYAML = `
materializer:
  workers: 2
  rescan_interval: 2s
enrichments:
  - name: item_totals
    table: '*.item'
    columns: [total, n]
    sql: |
      SELECT i.id, sum(d.amount) AS total, count(d.id)::int AS n
      FROM item i LEFT JOIN item_detail d ON d.item_id = i.id
      WHERE i.id = ANY($1) GROUP BY i.id
    depends_on:
      - table: item_detail
        columns: [item_id]
`

// wrongTotals counts item rows, over every tenant, whose total is not their own tenant's sum.
func wrongTotals(t *testing.T, conn *pgx.Conn) int {
	t.Helper()
	var n int
	require.NoError(t, conn.QueryRow(context.Background(), `
		SELECT coalesce(sum((xpath('/row/c/text()', query_to_xml(format(
			'SELECT count(*) AS c FROM %1$I.item i WHERE i.materialized_at IS NULL
			   OR i.total IS DISTINCT FROM (SELECT sum(amount) FROM %1$I.item_detail d WHERE d.item_id = i.id)
			   OR i.n <> (SELECT count(*) FROM %1$I.item_detail d WHERE d.item_id = i.id)', n.nspname),
			false, true, '')))[1]::text::int), 0)
		FROM pg_namespace n WHERE n.nspname <> 'broken' AND EXISTS (SELECT 1 FROM pg_class c WHERE c.relnamespace = n.oid AND c.relname = 'item')
		  AND EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
		              WHERE c.relnamespace = n.oid AND c.relname = 'item' AND a.attname = 'materialized_at')`).Scan(&n))
	return n
}

func waitNoneWrong(t *testing.T, conn *pgx.Conn, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	n := -1
	for time.Since(start) < within {
		if n = wrongTotals(t, conn); n == 0 {
			return time.Since(start)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("after %s, %d rows are stale or wrong", within, n)
	return 0
}

const oddSchema = `Tenant "Q" ü 7`

func TestTemplateOverManySchemas(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	const tenants = 200
	var ddl strings.Builder
	for i := 0; i < tenants; i++ {
		ddl.WriteString(tenantDDL(fmt.Sprintf("tenant_%03d", i), i))
	}
	ddl.WriteString(tenantDDL(oddSchema, 777))
	pgtest.Exec(t, conn, ddl.String())
	// Not matched: item without materialized_at. Skipped: item without the column total.
	pgtest.Exec(t, conn, `CREATE SCHEMA plain; CREATE TABLE plain.item (id int PRIMARY KEY);
		CREATE SCHEMA broken; CREATE TABLE broken.item (id int PRIMARY KEY, n int, materialized_at timestamptz);
		CREATE TABLE broken.item_detail (id int PRIMARY KEY, item_id int, amount bigint)`)

	cfg := loadConfig(t, dsn, templateYAML)
	rep, err := daemon.Apply(ctx, cfg, testLogger(t))
	require.NoError(t, err)
	require.Len(t, rep.Plan.Targets, tenants+1, "every tenant but plain and broken")
	require.Len(t, rep.Plan.Skipped, 1)
	require.Contains(t, rep.Plan.Skipped[0], `enrichment item_totals on broken.item: column "total" does not exist`)
	require.True(t, rep.DDLTrigger, "the tests run as a superuser")
	for _, tg := range rep.Plan.Targets {
		require.NotEqual(t, "plain", tg.Table.Schema)
	}

	d := startDaemon(t, cfg)
	waitNoneWrong(t, conn, 60*time.Second)
	drift, checked, err := verify.Run(ctx, conn, d.Mat.Plan(), verify.Options{})
	require.NoError(t, err)
	require.Empty(t, drift)
	require.Equal(t, (tenants+1)*5, checked)

	// Writes spread over the tenants, through the dependency and on the targets themselves.
	for i := 0; i < tenants; i += 7 {
		s := pgx.Identifier{fmt.Sprintf("tenant_%03d", i)}.Sanitize()
		pgtest.Exec(t, conn, fmt.Sprintf(`INSERT INTO %[1]s.item_detail (item_id, amount) VALUES (2, %[2]d);
			UPDATE %[1]s.item_detail SET item_id = 3 WHERE id = 1; INSERT INTO %[1]s.item (id) VALUES (6)`, s, i*1000+500))
	}
	pgtest.Exec(t, conn, `UPDATE `+pgx.Identifier{oddSchema}.Sanitize()+`.item_detail SET amount = amount + 1`)
	waitNoneWrong(t, conn, 30*time.Second)

	// A tenant created while the daemon runs is picked up (the event trigger wakes the rescan).
	start := time.Now()
	pgtest.Exec(t, conn, tenantDDL("tenant_new", 999))
	waitNoneWrong(t, conn, 30*time.Second)
	t.Logf("new tenant fresh after %s", time.Since(start).Round(time.Millisecond))

	// A tenant dropped while the daemon runs, with invalidations queued, stops nobody.
	pgtest.Exec(t, conn, `SELECT pg_notify('unused', ''); UPDATE tenant_001.item_detail SET amount = amount + 1;
		DROP SCHEMA tenant_001 CASCADE; UPDATE tenant_002.item_detail SET amount = amount + 1`)
	waitNoneWrong(t, conn, 30*time.Second)
	require.Eventually(t, func() bool {
		for _, tg := range d.Mat.Plan().Targets {
			if tg.Table.Schema == "tenant_001" {
				return false
			}
		}
		return true
	}, 30*time.Second, 100*time.Millisecond, "the dropped tenant leaves the plan")
}

// Two tenants run the same statement text on one connection, with pgx's statement cache: the
// cached plan must follow search_path, or one tenant would read the other's rows.
func TestCachedStatementFollowsSearchPath(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, tenantDDL("a", 1)+tenantDDL(oddSchema, 2))
	const q = `SELECT sum(amount) FROM item_detail WHERE item_id = ANY($1)`
	sums := map[string]int64{}
	for round := 0; round < 8; round++ { // past the custom-plan rounds, onto a generic plan
		for _, s := range []string{"a", oddSchema} {
			var sum int64
			require.NoError(t, pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `SELECT set_config('search_path', $1, true)`, pgx.Identifier{s}.Sanitize()); err != nil {
					return err
				}
				return tx.QueryRow(ctx, q, []int32{1, 2, 3, 4, 5}).Scan(&sum)
			}))
			if round == 0 {
				sums[s] = sum
			}
			require.Equal(t, sums[s], sum, "tenant %s, round %d", s, round)
		}
	}
	require.Equal(t, int64(1000*10+55), sums["a"])
	require.Equal(t, int64(2000*10+55), sums[oddSchema])
}

// One tenant's flood of stale rows gets one batch per turn; the other tenants' changes land
// long before it is through.
func TestTenantFloodDoesNotStarveOthers(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	const tenants = 20
	var ddl strings.Builder
	for i := 0; i < tenants; i++ {
		ddl.WriteString(tenantDDL(fmt.Sprintf("tenant_%03d", i), i))
	}
	pgtest.Exec(t, conn, ddl.String())
	cfg := loadConfig(t, dsn, templateYAML)
	cfg.Materializer.Workers = 1
	cfg.Materializer.BatchSize = 200
	d := startDaemon(t, cfg)
	waitNoneWrong(t, conn, 30*time.Second)
	_ = d

	var batch strings.Builder
	batch.WriteString(`INSERT INTO tenant_000.item (id) SELECT g FROM generate_series(100, 200099) g;`)
	for i := 1; i < tenants; i++ {
		fmt.Fprintf(&batch, `INSERT INTO tenant_%03d.item_detail (item_id, amount) VALUES (1, 7);`, i)
	}
	pgtest.Exec(t, conn, batch.String())
	others := func() (stale int) {
		for i := 1; i < tenants; i++ {
			var n int
			require.NoError(t, conn.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM tenant_%03d.item i WHERE materialized_at IS NULL
				OR total IS DISTINCT FROM (SELECT sum(amount) FROM tenant_%03d.item_detail WHERE item_id = i.id)`, i, i)).Scan(&n))
			stale += n
		}
		return stale
	}
	deadline := time.Now().Add(60 * time.Second)
	for others() > 0 {
		require.True(t, time.Now().Before(deadline), "the other tenants were not fresh within 60s")
		time.Sleep(100 * time.Millisecond)
	}
	var flood int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM tenant_000.item WHERE materialized_at IS NULL`).Scan(&flood))
	t.Logf("the other tenants were fresh while tenant_000 still had %d of 200000 stale rows", flood)
	require.Greater(t, flood, 50000, "the flooded tenant must not have gone first")
	waitNoneWrong(t, conn, 120*time.Second)
}
