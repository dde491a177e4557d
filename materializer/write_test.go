package materializer_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/listener/trigger"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/registry"
)

// matcol's own writes pass the self trigger's WHEN without calling its function, in batches and
// in backfills; the application's writes still call it, and a change to an input goes stale.
func TestOwnWritesSkipSelfFunction(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	pgtest.Exec(t, b.conn, `ALTER TABLE venue ADD COLUMN name text;
		CREATE TABLE self_calls (op text, id bigint)`)
	// The same rule as the generated function, plus a record of each call.
	pgtest.Exec(t, b.conn, fmt.Sprintf(`CREATE OR REPLACE FUNCTION matcol.%s() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO public.self_calls VALUES (TG_OP, NEW.id);
			IF TG_OP = 'UPDATE' AND OLD.name IS NOT DISTINCT FROM NEW.name THEN RETURN NEW; END IF;
			NEW.materialized_at := NULL;
			RETURN NEW;
		END $$`, pgx.Identifier{trigger.SelfFunction(b.plan.Targets[0])}.Sanitize()))
	calls := func() int {
		var n int
		require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*) FROM self_calls`).Scan(&n))
		return n
	}

	b.catchUp(t)
	require.Zero(t, calls(), "a batch's write must not call the self function")

	spec := materializer.BackfillSpec{Target: b.plan.Targets[0], Enrichments: b.plan.Targets[0].Enrichments}
	bf := b.openBackfill(t, spec)
	require.NoError(t, bf.Run(ctx, nil))
	require.Zero(t, calls(), "a backfill's write must not call the self function")

	pgtest.Exec(t, b.conn, `UPDATE venue SET name = 'hall' WHERE id = 1`)
	require.Equal(t, 1, calls())
	var stale bool
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT materialized_at IS NULL FROM venue WHERE id = 1`).Scan(&stale))
	require.True(t, stale, "the application's change to an input makes the row stale")

	// A session that sets the setting itself is still checked inside triggers (depth > 0).
	pgtest.Exec(t, b.conn, `CREATE TABLE rename (id bigint, name text);
		CREATE FUNCTION rename_venue() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN UPDATE venue SET name = NEW.name WHERE id = NEW.id; RETURN NULL; END $$;
		CREATE TRIGGER rename AFTER INSERT ON rename FOR EACH ROW EXECUTE FUNCTION rename_venue()`)
	b.catchUp(t)
	pgtest.Exec(t, b.conn, `BEGIN; SET LOCAL matcol.own_write = 'on'; INSERT INTO rename VALUES (2, 'annex'); COMMIT`)
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT materialized_at IS NULL FROM venue WHERE id = 2`).Scan(&stale))
	require.True(t, stale, "a write fired by another trigger is checked")
}

// An enrichment that returns a key twice fails that row alone: it is quarantined with a message
// naming the enrichment and the key, and written nowhere, while the other rows become fresh.
func TestDuplicateKeyIsQuarantined(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	defs := []registry.Enrichment{{Name: "venue_seats", Target: tableName("public", "venue"), Columns: []string{"seat_count"}, Self: new(true),
		SQL:       venueSQL + ` UNION ALL SELECT 2, 99 WHERE 2 = ANY($1)`,
		DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}}}
	applyDefs(t, b.conn, defs)
	reload(t, b)
	b.catchUp(t)

	var key []string
	var msg string
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT key, error FROM matcol.failure`).Scan(&key, &msg))
	require.Equal(t, []string{"2"}, key)
	require.Contains(t, msg, "enrichment venue_seats returned a key more than once: (2)")
	var fresh1, fresh2 bool
	var seats2 *int64
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT
		(SELECT materialized_at IS NOT NULL FROM venue WHERE id = 1),
		(SELECT materialized_at IS NOT NULL FROM venue WHERE id = 2),
		(SELECT seat_count FROM venue WHERE id = 2)`).Scan(&fresh1, &fresh2, &seats2))
	require.True(t, fresh1)
	require.False(t, fresh2, "the failed row is never stamped fresh")
	require.Nil(t, seats2, "neither value of the duplicated key is written")
}
