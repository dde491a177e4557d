package materializer_test

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/registry"
)

// A batch computing a parent row must not block the application's inserts of its children: their
// foreign-key check takes FOR KEY SHARE on the parent, which FOR UPDATE would conflict with.
func TestClaimLeavesForeignKeyChecksAlone(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, `
		CREATE TABLE parent (id bigint PRIMARY KEY, children bigint, materialized_at timestamptz);
		CREATE TABLE child (id bigint PRIMARY KEY, parent_id bigint NOT NULL REFERENCES parent);
		INSERT INTO parent (id) VALUES (1);
		CREATE TABLE slow (on_ boolean);
		CREATE FUNCTION test_pause() RETURNS boolean LANGUAGE plpgsql AS $$
		BEGIN IF EXISTS (SELECT FROM slow) THEN PERFORM pg_sleep(3); END IF; RETURN true; END $$;`)
	_, err := registry.Install(ctx, conn)
	require.NoError(t, err)
	applyDefs(t, conn, []registry.Enrichment{{Name: "parent_children", Target: tableName("public", "parent"),
		Columns: []string{"children"}, Self: new(true),
		// Slow once the test says so: the batch then holds its claim for 3 s.
		SQL: `SELECT p.id, (SELECT count(*) FROM child c WHERE c.parent_id = p.id) AS children
			FROM parent p WHERE p.id = ANY($1) AND test_pause()`,
		DependsOn: []registry.Dependency{{Source: tableName("public", "child"), Columns: []string{"parent_id"}}}}})
	pool, err := dial.Pool(ctx, dsn, "test", dial.PoolOptions{MaxConns: 4})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	p, _, err := daemon.LoadPlan(ctx, pool)
	require.NoError(t, err)
	m := materializer.New(pool, p, materializer.Config{Workers: 1}, hclog.NewNullLogger())

	pgtest.Exec(t, conn, `INSERT INTO slow VALUES (true)`)
	done := make(chan error, 1)
	go func() { _, err := m.MaterializeAll(ctx); done <- err }()
	require.Eventually(t, func() bool {
		var n int
		_ = conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'`).Scan(&n)
		return n > 0
	}, 10*time.Second, 10*time.Millisecond, "the batch never started computing")

	app := pgtest.Connect(t, dsn)
	pgtest.Exec(t, app, `SET lock_timeout = '400ms'`)
	start := time.Now()
	_, err = app.Exec(ctx, `INSERT INTO child VALUES (1, 1)`)
	require.NoError(t, err, "the child insert must not wait for the batch")
	require.Less(t, time.Since(start), time.Second)
	require.NoError(t, <-done)
}
