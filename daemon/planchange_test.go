package daemon_test

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/verify"
)

const noteSchema = `
CREATE TABLE orders (id bigint PRIMARY KEY, code text NOT NULL, total bigint, note text, materialized_at timestamptz);
CREATE INDEX ON orders (id) WHERE materialized_at IS NULL;
CREATE TABLE line (id bigserial PRIMARY KEY, order_id bigint NOT NULL, cents bigint NOT NULL);
CREATE INDEX ON line (order_id);
CREATE TABLE order_note (id bigserial PRIMARY KEY, order_code text NOT NULL, body text NOT NULL);
INSERT INTO orders (id, code) SELECT g, 'o' || g FROM generate_series(1, 200) g;
INSERT INTO line (order_id, cents) SELECT 1 + g % 200, g FROM generate_series(1, 600) g;
`

func totalConfig(factor string) string {
	return `
enrichments:
  - name: order_total
    table: public.orders
    columns: [total]
    sql: SELECT o.id, ((SELECT sum(cents) FROM line l WHERE l.order_id = o.id) * ` + factor + `)::bigint AS total FROM orders o WHERE o.id = ANY($1)
    depends_on: [{table: public.line, columns: [order_id]}]
`
}

const noteEnrichment = `
  - name: order_notes
    table: public.orders
    columns: [note]
    sql: SELECT o.id, (SELECT string_agg(n.body, ',' ORDER BY n.id) FROM order_note n WHERE n.order_code = o.code) AS note FROM orders o WHERE o.id = ANY($1)
    depends_on: [{table: public.order_note, columns: [order_code], sql: "SELECT id FROM orders WHERE code = ANY($1)"}]
`

// configFor loads yaml for mode, with a slot of its own in logical mode, and a rescan so rare
// that only a registry change can make the daemon reload.
func configFor(t *testing.T, dsn, mode, yaml string) *config.Config {
	t.Helper()
	cfg := loadConfig(t, dsn, yaml)
	cfg.Materializer.RescanInterval = time.Hour
	if mode == "logical" {
		b := make([]byte, 4)
		_, _ = crand.Read(b)
		slot := "matcol_t_" + hex.EncodeToString(b)
		cfg.Invalidation.Mode, cfg.Invalidation.Slot, cfg.Invalidation.Publication = "logical", slot, slot
		cfg.Invalidation.FixReplicaIdentity = true
		t.Cleanup(func() { pgtest.DropSlot(dsn, slot) })
	}
	return cfg
}

// waitExact polls until nothing is stale or queued and the stored values equal a fresh
// computation with the plan registered now, not the daemon's.
func waitExact(t *testing.T, dsn string, within time.Duration) {
	t.Helper()
	waitExactTables(t, dsn, []string{"orders"}, within)
}

// waitExactTables is waitExact for these target tables.
func waitExactTables(t *testing.T, dsn string, tables []string, within time.Duration) {
	t.Helper()
	ctx := context.Background()
	conn := pgtest.Connect(t, dsn)
	var drift []verify.Drift
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		busy := false
		for _, tbl := range append([]string{"matcol.pending"}, tables...) {
			var n bool
			where := ""
			if tbl != "matcol.pending" {
				where = " WHERE materialized_at IS NULL"
			}
			require.NoError(t, conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM `+tbl+where+`)`).Scan(&n))
			busy = busy || n
		}
		if busy {
			continue
		}
		var err error
		drift, _, err = verify.Run(ctx, conn, loadPlan(t, dsn), verify.Options{IncludeStale: true})
		require.NoError(t, err)
		if len(drift) == 0 {
			return
		}
	}
	for _, d := range first(drift, 5) {
		t.Logf("drift %s %v %s: stored %v, fresh %v", d.Table, d.Key, d.Column, deref(d.Stored), deref(d.Fresh))
	}
	t.Fatalf("not exact after %s: %d rows drift", within, len(drift))
}

// apply writes the registry as yaml says, as `matcol apply` does while the daemon runs.
func apply(t *testing.T, cfg *config.Config, dsn, yaml string) {
	t.Helper()
	next := loadConfig(t, dsn, yaml)
	next.Invalidation = cfg.Invalidation
	_, err := daemon.Apply(context.Background(), next, hclog.NewNullLogger())
	require.NoError(t, err)
}

// After apply changes an enrichment's SQL and a backfill recomputes its column, as
// docs/operations.md says, the running daemon computes every later change with the new SQL:
// it does not wait for its next rescan.
func TestApplyChangesSQLWhileRunning(t *testing.T) {
	for _, mode := range []string{"trigger", "logical"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			dsn := pgtest.NewDB(t)
			conn := pgtest.Connect(t, dsn)
			pgtest.Exec(t, conn, noteSchema)
			cfg := configFor(t, dsn, mode, totalConfig("1"))
			startDaemon(t, cfg)
			waitExact(t, dsn, 30*time.Second)

			apply(t, cfg, dsn, totalConfig("2"))
			p := loadPlan(t, dsn)
			spec := materializer.BackfillSpec{Target: p.Targets[0], Enrichments: p.Targets[0].Enrichments}
			bconn := pgtest.Connect(t, dsn)
			b, err := materializer.OpenBackfill(ctx, bconn, spec, true, hclog.NewNullLogger())
			require.NoError(t, err)
			require.NoError(t, b.Run(ctx, nil))
			pgtest.Exec(t, conn, `UPDATE line SET cents = cents + 1 WHERE order_id <= 50`)
			waitExact(t, dsn, 20*time.Second)
		})
	}
}

// A dependency added by apply while the daemon runs invalidates from the first write after
// apply returns: the daemon must neither drop its queued entries (trigger mode) nor the decoded
// changes of its table (logical mode) because its plan does not know them yet.
func TestApplyAddsDependencyWhileRunning(t *testing.T) {
	for _, mode := range []string{"trigger", "logical"} {
		t.Run(mode, func(t *testing.T) {
			dsn := pgtest.NewDB(t)
			conn := pgtest.Connect(t, dsn)
			pgtest.Exec(t, conn, noteSchema)
			cfg := configFor(t, dsn, mode, totalConfig("1"))
			startDaemon(t, cfg)
			waitExact(t, dsn, 30*time.Second)

			apply(t, cfg, dsn, totalConfig("1")+noteEnrichment)
			pgtest.Exec(t, conn, `INSERT INTO order_note (order_code, body) SELECT 'o' || g, 'note ' || g FROM generate_series(1, 20) g`)
			waitExact(t, dsn, 20*time.Second)
			var notes int
			require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(note) FROM orders`).Scan(&notes))
			require.Equal(t, 20, notes)
		})
	}
}

func deref(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}
