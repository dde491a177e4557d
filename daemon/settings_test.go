package daemon_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/pgtest"
)

const probeSchema = `
CREATE TABLE probe (id int PRIMARY KEY, a text, st text, lt text, wm text, rpc text, materialized_at timestamptz);
INSERT INTO probe (id) SELECT generate_series(1, 50);
`

// probeConfig registers two enrichments of one table; the second reads the settings its batch
// runs with. extraA and extraB are more keys of each.
func probeConfig(extraA, extraB string) string {
	return `
enrichments:
  - name: a_first
    table: probe
    columns: [a]
    sql: SELECT id, 'x' AS a FROM probe WHERE id = ANY($1)
` + extraA + `
  - name: b_second
    table: probe
    columns: [st, lt, wm, rpc]
    sql: |
      SELECT id, current_setting('statement_timeout') AS st, current_setting('lock_timeout') AS lt,
             current_setting('work_mem') AS wm, current_setting('random_page_cost') AS rpc
      FROM probe WHERE id = ANY($1)
` + extraB
}

// A batch runs every enrichment of its table in one statement, with settings that serve them
// all: the longest timeouts, the largest work_mem and every enrichment's further settings, not
// just the first enrichment's.
func TestBatchSettingsServeEveryEnrichment(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, probeSchema)
	cfg := loadConfig(t, dsn, probeConfig(`
    statement_timeout: 10s
    lock_timeout: 2s
    work_mem: 4MB
    batch_size: 1000
`, `
    statement_timeout: 45
    work_mem: 8MB
    batch_size: 7
    settings: {random_page_cost: "2"}
`))
	d := startDaemon(t, cfg)
	// Not waitFresh: verify computes outside a batch, so with other settings.
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM probe WHERE materialized_at IS NULL`).Scan(&n))
		return n == 0
	}, 60*time.Second, 100*time.Millisecond)
	var st, lt, wm, rpc string
	require.NoError(t, conn.QueryRow(context.Background(),
		`SELECT DISTINCT st, lt, wm, rpc FROM probe`).Scan(&st, &lt, &wm, &rpc))
	require.Equal(t, []string{"45s", "2s", "8MB", "2"}, []string{st, lt, wm, rpc})
	require.Equal(t, 7, d.Mat.Plan().Targets[0].BatchSettings().BatchSize)
}

// Two enrichments of a table that set one setting differently cannot share a batch: apply
// refuses them, naming both; so it does a work_mem that is not a size.
func TestConflictingSettingsAreRefused(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, probeSchema)
	cfg := loadConfig(t, dsn, probeConfig(`
    settings: {random_page_cost: "3", jit: "off"}
`, `
    work_mem: lots
    settings: {random_page_cost: "2", jit: "off"}
`))
	_, err := daemon.Apply(context.Background(), cfg, hclog.NewNullLogger())
	require.Error(t, err)
	msg := err.Error()
	require.Contains(t, msg, `enrichments a_first and b_second of public.probe set random_page_cost differently ("3" and "2")`)
	require.Contains(t, msg, `enrichment b_second: work_mem "lots" is not a size such as 64MB`)
	require.False(t, strings.Contains(msg, "jit"), "equal values do not conflict")
}
