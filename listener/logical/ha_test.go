package logical_test

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
)

// Two instances: exactly one holds the slot; when it dies the other takes over within 10 s, and
// nothing written around the handover is lost.
func TestLeaderFailover(t *testing.T) {
	b := setup(t)
	a := startDaemon(t, b, "a")
	c := startDaemon(t, b, "b")
	deadline := time.Now().Add(20 * time.Second)
	for !(a.d.Logical.Stats().Leader || c.d.Logical.Stats().Leader) {
		require.True(t, time.Now().Before(deadline), "no leader")
		time.Sleep(50 * time.Millisecond)
	}
	leader, follower := a, c
	if c.d.Logical.Stats().Leader {
		leader, follower = c, a
	}
	waitFresh(t, b.conn, leader.d.Mat.Plan(), 60*time.Second)
	require.False(t, follower.d.Logical.Stats().Leader, "both instances lead")

	stopLoad := make(chan struct{})
	wait := load(t, b.dsn, 2, stopLoad)
	time.Sleep(time.Second)
	killed := time.Now()
	leader.stop(t)
	for !follower.d.Logical.Stats().Leader {
		require.True(t, time.Since(killed) < 10*time.Second, "no handover within 10s")
		time.Sleep(50 * time.Millisecond)
	}
	waitSlot(t, b.conn, b.slot, 10*time.Second-time.Since(killed))
	t.Logf("handover took %s", time.Since(killed).Round(time.Millisecond))
	time.Sleep(time.Second)
	close(stopLoad)
	require.Greater(t, wait(), 10)
	waitFresh(t, b.conn, follower.d.Mat.Plan(), 60*time.Second)
}

const selfSourceConfig = `
invalidation:
  mode: trigger
materializer:
  workers: 2
enrichments:
  - name: child_weight
    table: public.node
    columns: [child_weight]
    sql: |
      SELECT n.id, (SELECT coalesce(sum(c.weight), 0) FROM node c WHERE c.parent_id = n.id)::int AS child_weight
      FROM node n WHERE n.id = ANY($1)
    depends_on:
      - table: public.node
        columns: [parent_id]
`

// Invariant 3: matcol's own writes to a table that is both a target and a source never
// invalidate. The parent links form cycles, so a feedback loop would never settle.
func TestOwnWritesDoNotInvalidate(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, `CREATE TABLE node (id bigint PRIMARY KEY, parent_id bigint, weight int NOT NULL DEFAULT 1,
		child_weight int, materialized_at timestamptz)`)
	pgtest.Exec(t, conn, `INSERT INTO node (id, parent_id) SELECT g, 1 + g % 50 FROM generate_series(1, 500) g`)
	b := setupDB(t, dsn, conn, selfSourceConfig)
	r := startDaemon(t, b, "matcol")
	p := r.d.Mat.Plan()
	waitStreaming(t, r, 20*time.Second) // after the first-start resync is queued
	waitFresh(t, conn, p, 60*time.Second)

	stamp := func() (s string) {
		require.NoError(t, conn.QueryRow(context.Background(), `SELECT max(materialized_at)::text FROM node`).Scan(&s))
		return s
	}
	before := stamp()
	time.Sleep(3 * time.Second)
	require.Equal(t, before, stamp(), "matcol keeps rewriting rows: its own writes invalidate")

	pgtest.Exec(t, conn, `UPDATE node SET weight = 5 WHERE id = 7`)
	pgtest.Exec(t, conn, `UPDATE node SET parent_id = 3 WHERE id = 9`)
	waitFresh(t, conn, p, 20*time.Second)
	var w int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT child_weight FROM node WHERE id = 8`).Scan(&w))
	require.Equal(t, 14, w) // children of 8: 7 (weight 5) and 57, 107, …, 457 (9 of weight 1)
}

// A single transaction of 1,000,000 source rows: entries are flushed in chunks, so the daemon's
// memory stays bounded, and every affected row ends fresh.
func TestLargeTransaction(t *testing.T) {
	if testing.Short() {
		t.Skip("large")
	}
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, `CREATE TABLE item (id bigint PRIMARY KEY, lines int, materialized_at timestamptz)`)
	pgtest.Exec(t, conn, `CREATE TABLE line (id bigint PRIMARY KEY, item_id bigint NOT NULL)`)
	pgtest.Exec(t, conn, `CREATE INDEX ON line (item_id)`)
	pgtest.Exec(t, conn, `INSERT INTO item (id) SELECT generate_series(1, 1000)`)
	b := setupDB(t, dsn, conn, `
invalidation:
  mode: trigger
materializer:
  workers: 2
enrichments:
  - name: lines
    table: public.item
    columns: [lines]
    sql: SELECT i.id, (SELECT count(*) FROM line l WHERE l.item_id = i.id)::int AS lines FROM item i WHERE i.id = ANY($1)
    depends_on:
      - table: public.line
        columns: [item_id]
`)
	r := startDaemon(t, b, "matcol")
	p := r.d.Mat.Plan()
	waitStreaming(t, r, 20*time.Second)
	waitFresh(t, conn, p, 60*time.Second)

	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		var ms runtime.MemStats
		for {
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	}()
	started := time.Now()
	pgtest.Exec(t, conn, `INSERT INTO line SELECT g, 1 + g % 1000 FROM generate_series(1, 1000000) g`)
	waitFresh(t, conn, p, 300*time.Second)
	close(done)
	t.Logf("1,000,000-row transaction fresh after %s; peak Go heap in use %d MB", time.Since(started).Round(time.Second), peak.Load()>>20)
	require.Less(t, peak.Load(), uint64(200<<20))
	var lines int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT lines FROM item WHERE id = 1`).Scan(&lines))
	require.Equal(t, 1000, lines)
}
