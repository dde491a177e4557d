package status_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/status"
)

// series returns the samples of one metric in a /metrics body, by their label text.
func series(body, name string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		i := strings.LastIndexByte(rest, ' ')
		v, err := strconv.ParseFloat(rest[i+1:], 64)
		if err == nil {
			out[rest[:i]] = v
		}
	}
	return out
}

func sum(m map[string]float64) float64 {
	var s float64
	for _, v := range m {
		s += v
	}
	return s
}

const twoTables = schema + `
CREATE TABLE customer (id int PRIMARY KEY, orders int, materialized_at timestamptz);
INSERT INTO customer (id) SELECT generate_series(1, 300);
`

const twoTablesYAML = yaml + `
  - name: customer_orders
    table: customer
    columns: [orders]
    sql: SELECT c.id, (c.id % 7) AS orders FROM customer c WHERE c.id = ANY($1)
`

func startWith(t *testing.T, dsn, body string) (*config.Config, func()) {
	t.Helper()
	f := t.TempDir() + "/m.yaml"
	require.NoError(t, os.WriteFile(f, []byte(body), 0o600))
	cfg, err := config.Load(f, nil)
	require.NoError(t, err)
	cfg.DatabaseURL = dsn
	cfg.Status.Listen = freePort(t)
	cfg.Materializer.SweepInterval = time.Second
	require.NoError(t, cfg.Validate())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, cfg, hclog.NewNullLogger(), "v9.9.9") }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(20 * time.Second):
				t.Error("daemon did not stop within 20s")
			}
		})
	}
	t.Cleanup(stop)
	return cfg, stop
}

// matcol_rows_materialized_total counts every table's rows, not the last table's.
func TestRowsMaterializedSumsTables(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, twoTables)
	cfg, _ := startWith(t, dsn, twoTablesYAML)
	base := "http://" + cfg.Status.Listen
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, conn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM orders WHERE materialized_at IS NULL)
			+ (SELECT count(*) FROM customer WHERE materialized_at IS NULL)`).Scan(&n))
		return n == 0
	}, 60*time.Second, 100*time.Millisecond)
	require.Eventually(t, func() bool {
		_, body := get(t, base+"/metrics")
		return sum(series(body, "matcol_rows_materialized_total")) == 500
	}, 10*time.Second, 200*time.Millisecond)
	_, body := get(t, base+"/metrics")
	require.Greater(t, sum(series(body, "matcol_last_batch_seconds")), 0.0)
	require.Equal(t, 1.0, series(body, "matcol_build_info")[`{go_version="`+runtimeVersion(body)+`",version="v9.9.9"}`])

	// /status has each table's own figures.
	_, js := get(t, base+"/status")
	var rep status.Report
	require.NoError(t, json.Unmarshal([]byte(js), &rep))
	got := map[string]int64{}
	for _, e := range rep.Enrichments {
		require.NotNil(t, e.RowsMaterializedTotal)
		require.NotNil(t, e.RowsPerSecond)
		got[e.Table] = *e.RowsMaterializedTotal
	}
	require.Equal(t, map[string]int64{"public.orders": 200, "public.customer": 300}, got)
	require.NotNil(t, rep.Daemon)
	require.NotNil(t, rep.Daemon.Leader)
	require.True(t, *rep.Daemon.Leader)
}

func runtimeVersion(body string) string {
	_, after, _ := strings.Cut(body, `matcol_build_info{go_version="`)
	v, _, _ := strings.Cut(after, `"`)
	return v
}

// Two instances read the same figures from the database; only one exports them, so that sums
// over instances count them once, and another takes over when it stops.
func TestOneInstanceExportsDatabaseFigures(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, twoTables)
	cfgA, stopA := startWith(t, dsn, twoTablesYAML)
	cfgB, _ := startWith(t, dsn, twoTablesYAML)
	urls := []string{"http://" + cfgA.Status.Listen + "/metrics", "http://" + cfgB.Status.Listen + "/metrics"}
	leaders := func() (int, []string) {
		n, bodies := 0, make([]string, len(urls))
		for i, u := range urls {
			code, body := get(t, u)
			if code != 200 {
				continue
			}
			bodies[i] = body
			if series(body, "matcol_leader")[""] == 1 {
				n++
			}
		}
		return n, bodies
	}
	// Both running (a starting instance reads nothing yet), one of them the reporter.
	require.Eventually(t, func() bool {
		n, bodies := leaders()
		for _, b := range bodies {
			if series(b, "matcol_status_up")[""] != 1 {
				return false
			}
		}
		return n == 1
	}, 30*time.Second, 200*time.Millisecond)
	_, bodies := leaders()
	exporters := 0
	for _, b := range bodies {
		stale := series(b, "matcol_stale_rows")
		if series(b, "matcol_leader")[""] == 1 {
			require.Len(t, stale, 2, "the reporter exports every enrichment")
			exporters++
		} else {
			require.Empty(t, stale, "only the reporter exports database figures")
			require.Equal(t, 1.0, series(b, "matcol_status_up")[""])
			require.Contains(t, b, "matcol_rows_materialized_total ")
		}
	}
	require.Equal(t, 1, exporters)

	// Stop A; B is, or becomes, the reporter.
	stopA()
	urls = urls[1:]
	require.Eventually(t, func() bool { n, _ := leaders(); return n == 1 }, 40*time.Second, 200*time.Millisecond)
	_, bodies = leaders()
	require.Len(t, series(bodies[0], "matcol_stale_rows"), 2)
}

// In logical mode listener.lag_seconds is filled in from the slot's walsender, and exported;
// listener.holding and matcol_decoding_holds_total say whether decoding is held (it is not: the
// application here is never saturated).
func TestListenerLagInLogicalMode(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, schema)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	slot := "matcol_s_" + hex.EncodeToString(b)
	t.Cleanup(func() { pgtest.DropSlot(dsn, slot) }) // after the daemon stops: a database with a slot cannot be dropped
	cfg, _ := startWith(t, dsn, "invalidation:\n  mode: logical\n  slot: "+slot+"\n  publication: "+slot+
		"\n  fix_replica_identity: true\n"+yaml)
	base := "http://" + cfg.Status.Listen
	var lag *float64
	var holding *bool
	require.Eventually(t, func() bool {
		pgtest.Exec(t, conn, `INSERT INTO line (order_id, cents) VALUES (3, 1)`)
		code, body := get(t, base+"/status")
		var rep status.Report
		if code != 200 || json.Unmarshal([]byte(body), &rep) != nil {
			return false
		}
		lag, holding = rep.Listener.LagSeconds, rep.Listener.Holding
		return rep.Listener.Streaming != nil && *rep.Listener.Streaming && lag != nil
	}, 60*time.Second, 250*time.Millisecond)
	require.GreaterOrEqual(t, *lag, 0.0)
	require.Less(t, *lag, 60.0)
	require.NotNil(t, holding)
	require.False(t, *holding)
	_, body := get(t, base+"/metrics")
	require.Equal(t, map[string]float64{"": 0}, series(body, "matcol_decoding_holds_total"), body)
	require.Len(t, series(body, "matcol_listener_lag_seconds"), 1, body)
	require.Contains(t, series(body, "matcol_listener_lag_seconds"), `{slot="`+slot+`"}`)
}
