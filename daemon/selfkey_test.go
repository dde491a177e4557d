package daemon_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
)

const keyOnlySchema = `
CREATE TABLE acct (id bigint PRIMARY KEY, note text, total bigint, materialized_at timestamptz);
CREATE INDEX ON acct (id) WHERE materialized_at IS NULL;
CREATE TABLE hist (id bigserial PRIMARY KEY, acct_id bigint NOT NULL, delta int NOT NULL);
CREATE INDEX ON hist (acct_id);
INSERT INTO acct (id) SELECT generate_series(1, 100);
INSERT INTO hist (acct_id, delta) SELECT 1 + g % 100, g FROM generate_series(1, 1000) g;
`

// The enrichment reads acct only through its key.
const keyOnlyConfig = `
enrichments:
  - name: acct_total
    table: public.acct
    columns: [total]
    sql: SELECT a.id, sum(h.delta)::bigint AS total FROM acct a LEFT JOIN hist h ON h.acct_id = a.id WHERE a.id = ANY($1) GROUP BY a.id
    depends_on: [{table: public.hist, columns: [acct_id]}]
`

// When an enrichment reads its target only through the key, only a key change makes a row stale
// through its own UPDATE. No mode puts a BEFORE UPDATE row trigger on the target, which would make
// PostgreSQL lock and log every row the application updates: logical mode reads key changes from
// the stream (the old key comes with the UPDATE exactly when the key changed), trigger mode from
// an AFTER UPDATE row trigger that queues the new key. Both end exact.
func TestKeyOnlyTargetUpdates(t *testing.T) {
	for _, mode := range []string{"trigger", "logical"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			dsn := pgtest.NewDB(t)
			conn := pgtest.Connect(t, dsn)
			pgtest.Exec(t, conn, keyOnlySchema)
			startDaemon(t, configFor(t, dsn, mode, keyOnlyConfig))
			waitExactTables(t, dsn, []string{"acct"}, 30*time.Second)

			var before, after int
			require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE tgtype & 2 <> 0), count(*) FILTER (WHERE tgtype & 2 = 0)
				FROM pg_trigger WHERE tgrelid = 'acct'::regclass AND NOT tgisinternal AND tgtype & 16 <> 0 AND tgtype & 1 <> 0`).Scan(&before, &after))
			require.Zero(t, before, "no BEFORE UPDATE row trigger on the target")
			if mode == "logical" {
				require.Zero(t, after, "logical mode reads key changes from the stream")
			} else {
				require.Equal(t, 1, after, "trigger mode queues key changes from an AFTER UPDATE row trigger")
			}

			var stamped time.Time
			require.NoError(t, conn.QueryRow(ctx, `SELECT materialized_at FROM acct WHERE id = 5`).Scan(&stamped))
			pgtest.Exec(t, conn, `UPDATE acct SET note = 'not read' WHERE id = 5`)
			pgtest.Exec(t, conn, `UPDATE acct SET id = 1000 WHERE id = 7`)
			pgtest.Exec(t, conn, `UPDATE acct SET id = id + 2000, note = 'moved' WHERE id IN (8, 9)`)
			waitExactTables(t, dsn, []string{"acct"}, 30*time.Second)

			var total *int64
			require.NoError(t, conn.QueryRow(ctx, `SELECT total FROM acct WHERE id = 1000`).Scan(&total))
			require.Nil(t, total, "the moved row has no history under its new key")
			var again time.Time
			require.NoError(t, conn.QueryRow(ctx, `SELECT materialized_at FROM acct WHERE id = 5`).Scan(&again))
			require.Equal(t, stamped, again, "an UPDATE of a column nothing reads leaves the row alone")
		})
	}
}

// With self: false nothing of a target's own row is watched, and its UPDATEs meet no trigger at
// all: a BEFORE UPDATE trigger whose WHEN is always false still makes PostgreSQL lock and log
// each updated row, and the statement trigger after it only ever answered that row trigger.
func TestSelfOffTargetHasNoUpdateTrigger(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	pgtest.Exec(t, conn, keyOnlySchema)
	startDaemon(t, configFor(t, dsn, "trigger", strings.Replace(keyOnlyConfig, "    columns: [total]\n", "    columns: [total]\n    self: false\n", 1)))
	waitExactTables(t, dsn, []string{"acct"}, 30*time.Second)
	var updateTriggers, insertTriggers int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE tgtype & 16 <> 0), count(*) FILTER (WHERE tgtype & 4 <> 0)
		FROM pg_trigger WHERE tgrelid = 'acct'::regclass AND NOT tgisinternal`).Scan(&updateTriggers, &insertTriggers))
	require.Zero(t, updateTriggers)
	require.Equal(t, 2, insertTriggers, "new rows still arrive stale, and are announced")
	pgtest.Exec(t, conn, `INSERT INTO acct (id, materialized_at) VALUES (500, now())`)
	waitExactTables(t, dsn, []string{"acct"}, 30*time.Second)
}

// A partitioned target read only through its key keeps the BEFORE UPDATE trigger: an UPDATE that
// moves a row to another partition fires no AFTER UPDATE row trigger, and the moved row must
// still be recomputed at once, not at the next sweep. In logical mode the stream shows the move
// as a delete and an insert.
func TestPartitionedKeyOnlyTargetRowMoves(t *testing.T) {
	for _, mode := range []string{"trigger", "logical"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			dsn := pgtest.NewDB(t)
			conn := pgtest.Connect(t, dsn)
			pgtest.Exec(t, conn, strings.Replace(keyOnlySchema,
				"CREATE TABLE acct (id bigint PRIMARY KEY, note text, total bigint, materialized_at timestamptz);",
				`CREATE TABLE acct (id bigint PRIMARY KEY, note text, total bigint, materialized_at timestamptz) PARTITION BY RANGE (id);
				CREATE TABLE acct_low PARTITION OF acct FOR VALUES FROM (MINVALUE) TO (500);
				CREATE TABLE acct_high PARTITION OF acct FOR VALUES FROM (500) TO (MAXVALUE);`, 1))
			cfg := configFor(t, dsn, mode, keyOnlyConfig)
			cfg.Materializer.SweepInterval = time.Hour
			startDaemon(t, cfg)
			waitExactTables(t, dsn, []string{"acct"}, 30*time.Second)

			pgtest.Exec(t, conn, `UPDATE acct SET id = 1007 WHERE id = 7`)
			waitExactTables(t, dsn, []string{"acct"}, 15*time.Second)
			var total *int64
			require.NoError(t, conn.QueryRow(ctx, `SELECT total FROM acct WHERE id = 1007`).Scan(&total))
			require.Nil(t, total, "the moved row has no history under its new key")
		})
	}
}
