package daemon_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
)

// Small changes one after another are computed on one backend, the one whose caches and mapped
// shared memory the previous batch warmed, although the drainer and the throttle's checks query
// all along. Sharing one pool with them, each batch got whichever connection their last query
// had left on top; and while the cache guard measured connections on release, pgxpool returned
// them in a goroutine, so a batch soon after another often found its connection still out.
func TestSmallChangesLandOnOneBackend(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, `
		CREATE TABLE venue (id bigint PRIMARY KEY, seat_count bigint, materialized_at timestamptz);
		CREATE TABLE event (id bigint PRIMARY KEY, venue_id bigint, seats int);
		INSERT INTO venue (id) SELECT generate_series(1, 20);
		INSERT INTO event SELECT g, g, 10 FROM generate_series(1, 20) g;
		CREATE TABLE batch_backend (n serial, pid int);
		CREATE FUNCTION note_batch() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
		  INSERT INTO batch_backend (pid) VALUES (pg_backend_pid());
		  RETURN NULL;
		END $$;
		CREATE TRIGGER note_batch AFTER UPDATE ON venue FOR EACH ROW
		  WHEN (current_setting('matcol.own_write', true) = 'on') EXECUTE FUNCTION note_batch();`)
	cfg := loadConfig(t, dsn, `
enrichments:
  - name: venue_seats
    table: public.venue
    columns: [seat_count]
    sql: "SELECT v.id, sum(e.seats)::bigint AS seat_count FROM venue v LEFT JOIN event e ON e.venue_id = v.id WHERE v.id = ANY($1) GROUP BY v.id"
    depends_on:
      - table: public.event
        columns: [venue_id]
`)
	d := startDaemon(t, cfg)
	waitFresh(t, conn, d, 30*time.Second)
	pgtest.Exec(t, conn, `TRUNCATE batch_backend`)

	const changes = 8
	for i := 1; i <= changes; i++ {
		_, err := conn.Exec(ctx, `UPDATE event SET seats = seats + 1 WHERE id = $1`, i)
		require.NoError(t, err)
		waitFresh(t, conn, d, 10*time.Second)
		time.Sleep(150 * time.Millisecond) // the drainer and the checks query in between
	}
	rows, err := conn.Query(ctx, `SELECT pid FROM batch_backend ORDER BY n`)
	require.NoError(t, err)
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	require.NoError(t, err)
	require.Len(t, pids, changes, "one row written per change")
	for i := 2; i < len(pids); i++ {
		require.Equal(t, pids[i-1], pids[i], "every batch after the first on the backend of the one before: %v", pids)
	}
}
