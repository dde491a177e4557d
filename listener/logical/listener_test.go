package logical_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
)

// A key change invalidates the old and the new target; a delete and a TRUNCATE reach theirs.
func TestKeyChangeOldAndNewTargets(t *testing.T) {
	b := setup(t)
	r := startDaemon(t, b, "matcol")
	p := r.d.Mat.Plan()
	waitFresh(t, b.conn, p, 60*time.Second)
	ctx := context.Background()

	var oldVenue, oldCount, newCount int
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT venue_id FROM event WHERE id = 1`).Scan(&oldVenue))
	newVenue := oldVenue%100 + 1
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT auditorium_count FROM venue WHERE id = $1`, oldVenue).Scan(&oldCount))
	pgtest.Exec(t, b.conn, `UPDATE event SET venue_id = $1 WHERE id = 1`, newVenue)
	pgtest.Exec(t, b.conn, `UPDATE cinema SET name = 'Renamed' WHERE id = 3`)
	pgtest.Exec(t, b.conn, `UPDATE seat_state SET state = 'SOLD' WHERE change_id = 5`)
	pgtest.Exec(t, b.conn, `DELETE FROM event WHERE venue_id = 7`)
	waitFresh(t, b.conn, p, 20*time.Second)

	var name string
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT cinema_name FROM venue WHERE cinema_id = 3 LIMIT 1`).Scan(&name))
	require.Equal(t, "Renamed", name)
	var sold int
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT sold_count FROM event_seat_state_change WHERE id = 5`).Scan(&sold))
	require.Equal(t, 50, sold)
	var seats *int64
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT seat_count FROM venue WHERE id = 7`).Scan(&seats))
	require.Nil(t, seats, "venue 7 lost all its events")
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT auditorium_count FROM venue WHERE id = $1`, newVenue).Scan(&newCount))

	pgtest.Exec(t, b.conn, `TRUNCATE seat_state`)
	waitFresh(t, b.conn, p, 20*time.Second)
	require.NoError(t, b.conn.QueryRow(ctx, `SELECT sold_count FROM event_seat_state_change WHERE id = 5`).Scan(&sold))
	require.Equal(t, 0, sold)

	// DDL on a source does not stop the stream.
	pgtest.Exec(t, b.conn, `ALTER TABLE event ADD COLUMN note text`)
	pgtest.Exec(t, b.conn, `UPDATE event SET note = 'x', seat_count = seat_count + 100 WHERE id = 2`)
	pgtest.Exec(t, b.conn, `ALTER TABLE event DROP COLUMN note`)
	pgtest.Exec(t, b.conn, `UPDATE event SET seat_count = seat_count + 100 WHERE id = 3`)
	waitFresh(t, b.conn, p, 20*time.Second)

	// A new target row arrives stale and is materialized through the stream's marker.
	pgtest.Exec(t, b.conn, `INSERT INTO venue (id, cinema_id, name) VALUES (100001, 1, 'New')`)
	waitFresh(t, b.conn, p, 20*time.Second)
	require.True(t, r.d.Logical.Stats().Leader)
}
