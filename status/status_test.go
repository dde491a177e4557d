package status_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/status"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

const schema = `
CREATE TABLE orders (id bigint PRIMARY KEY, total bigint, materialized_at timestamptz);
CREATE INDEX ON orders (id) WHERE materialized_at IS NULL;
CREATE TABLE line (id bigserial PRIMARY KEY, order_id bigint NOT NULL, cents bigint NOT NULL);
INSERT INTO orders (id) SELECT generate_series(1, 200);
INSERT INTO line (order_id, cents) SELECT 1 + g % 200, g FROM generate_series(1, 1000) g;
`

const yaml = `
enrichments:
  - name: order_total
    table: orders
    columns: [total]
    sql: SELECT o.id, (SELECT sum(cents) FROM line l WHERE l.order_id = o.id)::bigint AS total FROM orders o WHERE o.id = ANY($1)
    depends_on: [{table: line, columns: [order_id]}]
`

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

func cfgFor(t *testing.T, dsn string) *config.Config {
	f := t.TempDir() + "/m.yaml"
	require.NoError(t, os.WriteFile(f, []byte(yaml), 0o600))
	cfg, err := config.Load(f, nil)
	require.NoError(t, err)
	cfg.DatabaseURL = dsn
	cfg.Status.Listen = freePort(t)
	cfg.Materializer.SweepInterval = time.Second
	require.NoError(t, cfg.Validate())
	return cfg
}

func collect(t *testing.T, dsn string) *status.Report {
	t.Helper()
	conn := pgtest.Connect(t, dsn)
	p, _, err := daemon.LoadPlan(context.Background(), conn)
	require.NoError(t, err)
	r, err := status.Collect(context.Background(), conn, p, status.Options{Mode: "trigger"})
	require.NoError(t, err)
	return r
}

func get(t *testing.T, url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// With no daemon running, the figures come from the database and the age survives.
func TestStatusWithoutDaemonThenCaughtUp(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, schema)
	cfg := cfgFor(t, dsn)

	// Run once to catch up, then stop.
	dctx, stop := context.WithCancel(ctx)
	d, err := daemon.Start(dctx, cfg, hclog.NewNullLogger())
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- d.Wait(dctx) }()
	require.Eventually(t, func() bool {
		r := collect(t, dsn)
		return r.Enrichments[0].StaleRows == 0
	}, 30*time.Second, 100*time.Millisecond)
	stop()
	require.NoError(t, <-done)

	// 50 orders invalidated through their lines, 2 s ago, with no daemon to apply them.
	pgtest.Exec(t, conn, `UPDATE line SET cents = cents + 1 WHERE order_id <= 50`)
	time.Sleep(2 * time.Second)
	r := collect(t, dsn)
	e := r.Enrichments[0]
	require.Equal(t, int64(50), e.StaleRows)
	require.True(t, e.StaleRowsExact)
	require.GreaterOrEqual(t, e.OldestPendingSeconds, 1.9)

	// Rows marked stale directly count too, with the older age kept.
	pgtest.Exec(t, conn, `UPDATE orders SET materialized_at = NULL WHERE id > 190`)
	r = collect(t, dsn)
	require.Equal(t, int64(60), r.Enrichments[0].StaleRows)
	require.GreaterOrEqual(t, r.Enrichments[0].OldestPendingSeconds, 1.9)

	// The daemon comes back: it catches up, /status says 0 and age 0, /metrics has freshness.
	d2ctx, stop2 := context.WithCancel(ctx)
	defer stop2()
	d2, err := daemon.Start(d2ctx, cfg, hclog.NewNullLogger())
	require.NoError(t, err)
	go func() { _ = d2.Wait(d2ctx) }()
	base := "http://" + cfg.Status.Listen
	require.Eventually(t, func() bool {
		code, body := get(t, base+"/status")
		if code != 200 {
			return false
		}
		var rep status.Report
		require.NoError(t, json.Unmarshal([]byte(body), &rep))
		e := rep.Enrichments[0]
		return e.StaleRows == 0 && e.OldestPendingSeconds == 0 && rep.Daemon != nil
	}, 30*time.Second, 200*time.Millisecond)
	pgtest.Exec(t, conn, `INSERT INTO line (order_id, cents) VALUES (7, 1)`)
	require.Eventually(t, func() bool {
		_, body := get(t, base+"/metrics")
		return strings.Contains(body, "matcol_freshness_seconds_count") && !strings.Contains(body, "matcol_freshness_seconds_count 0")
	}, 20*time.Second, 200*time.Millisecond)
	_, body := get(t, base+"/metrics")
	require.NotContains(t, body, "matcol_freshness_seconds_count 0\n")
	require.Contains(t, body, `matcol_stale_rows{enrichment="order_total",table="public.orders"} 0`)
	require.Contains(t, body, `matcol_oldest_pending_seconds{enrichment="order_total",table="public.orders"} 0`)
	code, _ := get(t, base+"/healthz")
	require.Equal(t, 200, code)
}

// /readyz follows the database; a token guards /status and /metrics but not the probes.
func TestReadyzAndToken(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, schema)
	cfg := cfgFor(t, dsn)
	cfg.Status.Token = "s3cret"
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	d, err := daemon.Start(ctx, cfg, hclog.NewNullLogger())
	require.NoError(t, err)
	go func() { _ = d.Wait(ctx) }()
	base := "http://" + cfg.Status.Listen
	require.Eventually(t, func() bool { c, _ := get(t, base+"/readyz"); return c == 200 }, 20*time.Second, 100*time.Millisecond)
	code, _ := get(t, base+"/status")
	require.Equal(t, 401, code)
	req, _ := http.NewRequest("GET", base+"/status", nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)

	cl := pgtest.Cluster(t)
	if cl == nil {
		t.Skip("needs the test cluster to stop PostgreSQL")
	}
	require.NoError(t, cl.StopServer(context.Background(), "fast"))
	require.Eventually(t, func() bool { c, _ := get(t, base+"/readyz"); return c == 503 }, 20*time.Second, 100*time.Millisecond)
	code, _ = get(t, base+"/healthz")
	require.Equal(t, 200, code, "healthz answers while the process lives")
	require.NoError(t, cl.StartServer(context.Background()))
	require.Eventually(t, func() bool { c, _ := get(t, base+"/readyz"); return c == 200 }, 60*time.Second, 200*time.Millisecond,
		fmt.Sprintf("readyz must recover after PostgreSQL is back"))
}
