package materializer_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/registry"
)

// The sweep removes failure records of deleted rows and of targets gone from the registry, and
// min_interval holds of such targets or past their time, even where no enrichment uses
// min_interval any more. The records of rows that still exist stay.
func TestSweepRemovesLeftovers(t *testing.T) {
	b := setupOn(t, pgtest.NewDB(t), materializer.Config{Workers: 1, SweepInterval: 100 * time.Millisecond})
	ctx := context.Background()
	pgtest.Exec(t, b.conn, `CREATE TABLE "Odd ""T""" ("K a" text, "k B" int, v int, materialized_at timestamptz,
			PRIMARY KEY ("K a", "k B"));
		INSERT INTO "Odd ""T""" VALUES ('x y', 1, 0, now()), ('é''z', 2, 0, now())`)
	applyDefs(t, b.conn, []registry.Enrichment{
		{Name: "venue_seats", Target: tableName("public", "venue"), Columns: []string{"seat_count"}, SQL: venueSQL, Self: new(true),
			DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}},
		{Name: "odd", Target: tableName("public", `Odd "T"`), Columns: []string{"v"}, Self: new(true),
			SQL: `SELECT "K a", "k B", 1 AS v FROM "Odd ""T""" WHERE ("K a", "k B") IN (SELECT * FROM unnest($1::text[], $2::int[]))`},
	})
	reload(t, b)
	b.catchUp(t)
	pgtest.Exec(t, b.conn, `
		INSERT INTO matcol.failure (target_id, key, error, next_attempt_at)
		SELECT t.id, k.key, 'boom', now() + interval '1 hour'
		FROM matcol.target t, (VALUES ('{1}'::text[]), ('{999}')) k(key) WHERE t.table_name = 'venue';
		INSERT INTO matcol.failure (target_id, key, error, next_attempt_at)
		SELECT t.id, k.key, 'boom', now() + interval '1 hour'
		FROM matcol.target t, (VALUES ('{x y,1}'::text[]), ('{é''z,2}'), ('{x y,2}')) k(key) WHERE t.table_name = 'Odd "T"';
		INSERT INTO matcol.failure (target_id, key, error, next_attempt_at) VALUES (424242, '{1}', 'boom', now());
		INSERT INTO matcol.debounce (target_id, key, not_before)
		SELECT id, '{1}', now() - interval '1 second' FROM matcol.target WHERE table_name = 'venue';
		INSERT INTO matcol.debounce (target_id, key, not_before) VALUES (424242, '{1}', now() + interval '1 hour')`)

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.mat.Run(runCtx) }()
	defer func() { stop(); <-done }()
	left := func() (failures []string, holds int) {
		rows, err := b.conn.Query(ctx, `SELECT t.table_name || ' ' || f.key::text FROM matcol.failure f
			JOIN matcol.target t ON t.id = f.target_id ORDER BY 1`)
		require.NoError(t, err)
		for rows.Next() {
			var s string
			require.NoError(t, rows.Scan(&s))
			failures = append(failures, s)
		}
		require.NoError(t, rows.Err())
		var orphans int
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM matcol.debounce) +
			(SELECT count(*) FROM matcol.failure WHERE target_id = 424242)`).Scan(&orphans))
		return failures, orphans
	}
	require.Eventually(t, func() bool {
		f, n := left()
		return len(f) == 3 && n == 0
	}, 10*time.Second, 50*time.Millisecond)
	f, _ := left()
	require.Equal(t, []string{`Odd "T" {"x y",1}`, `Odd "T" {é'z,2}`, "venue {1}"}, f)
}
