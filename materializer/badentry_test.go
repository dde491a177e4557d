package materializer_test

import (
	"context"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/registry"
)

// A queued value that cannot be a key (text 'abc' for an int key) is set aside; the other
// invalidations taken with it land, and the queue empties.
func TestBadQueueEntryStaysLocal(t *testing.T) {
	for _, path := range []string{"drainer", "workers"} {
		t.Run(path, func(t *testing.T) { testBadQueueEntry(t, path == "drainer") })
	}
}

func testBadQueueEntry(t *testing.T, drainer bool) {
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, `
		CREATE TABLE account (id int PRIMARY KEY, tags int, materialized_at timestamptz);
		CREATE TABLE tag (id serial PRIMARY KEY, account_ref text NOT NULL);
		INSERT INTO account (id) SELECT generate_series(1, 40);`)
	_, err := registry.Install(ctx, conn)
	require.NoError(t, err)
	applyDefs(t, conn, []registry.Enrichment{{Name: "account_tags", Target: tableName("public", "account"),
		Columns: []string{"tags"}, Self: new(true),
		SQL: `SELECT a.id, (SELECT count(*) FROM tag g WHERE g.account_ref = a.id::text)::int AS tags
			FROM account a WHERE a.id = ANY($1)`,
		DependsOn: []registry.Dependency{{Source: tableName("public", "tag"), Columns: []string{"account_ref"}}}}})
	pool, err := dial.Pool(ctx, dsn, "test", dial.PoolOptions{MaxConns: 4})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	p, _, err := daemon.LoadPlan(ctx, pool)
	require.NoError(t, err)
	m := materializer.New(pool, p, materializer.Config{Workers: 1}, hclog.NewNullLogger())
	if drainer {
		m.DirectToDrainer()
	}
	_, err = m.MaterializeAll(ctx)
	require.NoError(t, err)

	// 30 good values around one bad one, all queued before the next drain.
	pgtest.Exec(t, conn, `INSERT INTO tag (account_ref) SELECT g::text FROM generate_series(1, 15) g`)
	pgtest.Exec(t, conn, `INSERT INTO tag (account_ref) VALUES ('abc')`)
	pgtest.Exec(t, conn, `INSERT INTO tag (account_ref) SELECT g::text FROM generate_series(16, 30) g`)
	if !drainer {
		// A worker's batch of queued keys fails on the bad one and hands the table's keys to the
		// drainer, which isolates it.
		_, err := m.Drain(ctx)
		require.NoError(t, err)
		_, err = m.MaterializeAll(ctx)
		require.NoError(t, err)
	}
	res, err := m.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, res.Dropped)
	var stale, pending int
	require.NoError(t, conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM account WHERE materialized_at IS NULL),
		(SELECT count(*) FROM matcol.pending WHERE vals <> '[]')`).Scan(&stale, &pending))
	require.Equal(t, 30, stale, "every good invalidation lands")
	require.Zero(t, pending, "nothing is left to be retaken forever")
	_, err = m.MaterializeAll(ctx)
	require.NoError(t, err)
	var tags int
	require.NoError(t, conn.QueryRow(ctx, `SELECT sum(tags) FROM account`).Scan(&tags))
	require.Equal(t, 30, tags)
}
