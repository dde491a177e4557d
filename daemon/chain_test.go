package daemon_test

import (
	"testing"
	"time"

	"github.com/matcol/matcol/internal/pgtest"
)

const chainSchema = `
CREATE TABLE cinema (id bigint PRIMARY KEY, total_seats bigint, materialized_at timestamptz);
CREATE TABLE venue (id bigint PRIMARY KEY, cinema_id bigint NOT NULL, seat_count bigint, materialized_at timestamptz);
CREATE TABLE seat (id bigserial PRIMARY KEY, venue_id bigint NOT NULL);
CREATE INDEX ON venue (cinema_id);
CREATE INDEX ON seat (venue_id);
INSERT INTO cinema (id) SELECT generate_series(1, 10);
INSERT INTO venue (id, cinema_id) SELECT g, 1 + g % 10 FROM generate_series(1, 100) g;
INSERT INTO seat (venue_id) SELECT 1 + g % 100 FROM generate_series(1, 2000) g;
`

// cinema.total_seats reads venue.seat_count, itself an enrichment's output.
const chainConfig = `
enrichments:
  - name: venue_seats
    table: public.venue
    columns: [seat_count]
    sql: SELECT v.id, (SELECT count(*) FROM seat s WHERE s.venue_id = v.id) AS seat_count FROM venue v WHERE v.id = ANY($1)
    depends_on: [{table: public.seat, columns: [venue_id]}]
  - name: cinema_total
    table: public.cinema
    columns: [total_seats]
    sql: SELECT c.id, (SELECT sum(v.seat_count) FROM venue v WHERE v.cinema_id = c.id)::bigint AS total_seats FROM cinema c WHERE c.id = ANY($1)
    depends_on: [{table: public.venue, columns: [cinema_id]}]
`

// matcol's own write of a column another enrichment reads invalidates that reader: after seats
// are inserted, every venue and then every cinema ends exact.
func TestChainedEnrichments(t *testing.T) {
	for _, mode := range []string{"trigger", "logical"} {
		t.Run(mode, func(t *testing.T) {
			dsn := pgtest.NewDB(t)
			conn := pgtest.Connect(t, dsn)
			pgtest.Exec(t, conn, chainSchema)
			cfg := configFor(t, dsn, mode, chainConfig)
			startDaemon(t, cfg)
			waitExactTables(t, dsn, []string{"venue", "cinema"}, 30*time.Second)
			for _, step := range []string{
				`INSERT INTO seat (venue_id) SELECT 1 + g % 37 FROM generate_series(1, 300) g`,
				`DELETE FROM seat WHERE venue_id = 5`,
				`UPDATE venue SET cinema_id = 3 WHERE id = 15`,
			} {
				pgtest.Exec(t, conn, step)
				waitExactTables(t, dsn, []string{"venue", "cinema"}, 20*time.Second)
			}
		})
	}
}
