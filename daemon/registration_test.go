package daemon_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/pgtest"
)

// SQL registration next to a template that apply registered: register_enrichment and
// unregister_enrichment keep the template's instance targets and their queued invalidations,
// as apply does.
func TestSQLRegistrationKeepsTemplateInstances(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		pgtest.Exec(t, conn, tenantDDL(fmt.Sprintf("tenant_%03d", i), i))
	}
	pgtest.Exec(t, conn, `CREATE TABLE extra (id int PRIMARY KEY, x int, materialized_at timestamptz)`)
	_, err := daemon.Apply(ctx, loadConfig(t, dsn, templateYAML), testLogger(t))
	require.NoError(t, err)

	// No daemon runs: these invalidations stay queued.
	pgtest.Exec(t, conn, `INSERT INTO tenant_000.item_detail (item_id, amount) VALUES (1, 5);
		INSERT INTO tenant_001.item_detail (item_id, amount) VALUES (2, 5)`)
	count := func(sql string) (n int) {
		t.Helper()
		require.NoError(t, conn.QueryRow(ctx, sql).Scan(&n))
		return n
	}
	instances := `SELECT count(*) FROM matcol.target WHERE schema_name LIKE 'tenant\_%'`
	queued := `SELECT count(*) FROM matcol.pending p JOIN matcol.target t ON t.id = p.target_id WHERE t.schema_name LIKE 'tenant\_%'`
	require.Equal(t, 3, count(instances))
	q := count(queued)
	require.Positive(t, q)

	var res string
	require.NoError(t, conn.QueryRow(ctx, `SELECT matcol.register_enrichment('extra_x', 'extra', ARRAY['x'],
		'SELECT id, 1 AS x FROM extra WHERE id = ANY($1)')`).Scan(&res))
	require.Equal(t, "added", res)
	require.Equal(t, 3, count(instances), "register_enrichment must keep the template's instances")
	require.Equal(t, q, count(queued), "and their queued invalidations")

	pgtest.Exec(t, conn, `DROP SCHEMA tenant_002 CASCADE`)
	var gone bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT matcol.unregister_enrichment('extra_x')`).Scan(&gone))
	require.True(t, gone)
	require.Equal(t, 2, count(instances), "the instance whose table was dropped goes; the others stay")
	require.Equal(t, q, count(queued))
	require.Zero(t, count(`SELECT count(*) FROM matcol.target WHERE table_name = 'extra'`))
}
