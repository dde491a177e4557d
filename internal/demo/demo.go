// Package demo holds the cinema example: its schema, its enrichments, seed data and a write load.
package demo

import (
	"context"
	_ "embed"
	"fmt"
	"math/rand/v2"

	"github.com/jackc/pgx/v5"
)

//go:embed schema.sql
var Schema string

//go:embed config.yaml
var Config string

// Seed loads cinemas, venues, events and seat snapshots. scale 1 is 10 cinemas, 100 venues,
// 2,000 events and 1,000 snapshots of 50 seats.
func Seed(ctx context.Context, conn *pgx.Conn, scale int) error {
	var err error
	for _, stmt := range []string{
		`INSERT INTO cinema SELECT g, 'Cinema ' || g FROM generate_series(1, 10 * $1::int) g`,
		`INSERT INTO venue (id, cinema_id, name) SELECT g, 1 + g % (10 * $1::int), 'Venue ' || g FROM generate_series(1, 100 * $1::int) g`,
		`INSERT INTO event SELECT g, 1 + g % (100 * $1::int), g % 7, 50 + g % 200, now() - (g % 60) * interval '1 day'
		  FROM generate_series(1, 2000 * $1::int) g`,
		`INSERT INTO event_seat_state_change (id, event_id) SELECT g, 1 + g % (2000 * $1::int) FROM generate_series(1, 1000 * $1::int) g`,
		`INSERT INTO seat_state SELECT c, s, (ARRAY['SOLD','RESERVED','EMPTY'])[1 + (c * 7 + s) % 3]
		  FROM generate_series(1, 1000 * $1::int) c, generate_series(1, 50) s`,
	} {
		if _, err = conn.Exec(ctx, stmt, scale); err != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("seed demo data: %w", err)
	}
	return nil
}

// Write makes one random change of the kinds the demo shows: events added, moved between venues
// and deleted, seats sold, cinemas renamed.
func Write(ctx context.Context, conn *pgx.Conn, scale int, r *rand.Rand) error {
	venues, events, changes := 100*scale, 2000*scale, 1000*scale
	var err error
	switch r.IntN(6) {
	case 0:
		_, err = conn.Exec(ctx, `INSERT INTO event (id, venue_id, auditorium_id, seat_count, start_time)
			VALUES ((SELECT coalesce(max(id), 0) + 1 FROM event), $1, $2, $3, now())
			ON CONFLICT (id) DO NOTHING`, 1+r.IntN(venues), r.IntN(7), 50+r.IntN(200))
	case 1:
		_, err = conn.Exec(ctx, `UPDATE event SET venue_id = $1 WHERE id = $2`, 1+r.IntN(venues), 1+r.IntN(events))
	case 2:
		_, err = conn.Exec(ctx, `DELETE FROM event WHERE id = $1`, 1+r.IntN(events))
	case 3:
		_, err = conn.Exec(ctx, `UPDATE seat_state SET state = $1 WHERE change_id = $2 AND seat_id = $3`,
			[]string{"SOLD", "RESERVED", "EMPTY"}[r.IntN(3)], 1+r.IntN(changes), 1+r.IntN(50))
	case 4:
		_, err = conn.Exec(ctx, `UPDATE cinema SET name = 'Cinema ' || $1::text WHERE id = $2`, fmt.Sprint(r.IntN(1000)), 1+r.IntN(10*scale))
	case 5:
		_, err = conn.Exec(ctx, `UPDATE event SET seat_count = seat_count + 1 WHERE id = $1`, 1+r.IntN(events))
	}
	return err
}
