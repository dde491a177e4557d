package plan_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/registry"
)

func TestExplain(t *testing.T) {
	b := setup(t, `CREATE TABLE currency (code text PRIMARY KEY, rate numeric);
ALTER TABLE cinema ADD COLUMN materialized_at timestamptz, ADD COLUMN seats bigint, ADD COLUMN "Venue Count" int;
CREATE INDEX ON venue (id) WHERE materialized_at IS NULL;
CREATE INDEX ON cinema (id) WHERE materialized_at IS NULL;`)
	defs := []registry.Enrichment{
		{Name: "venue_seats", Target: table("", "venue"), Columns: []string{"seat_count"}, ExpiresAfter: 24 * time.Hour,
			SQL: `SELECT v.id, (sum(e.seat_count) * (SELECT rate FROM currency WHERE code = 'x'))::bigint AS seat_count
				FROM venue v LEFT JOIN event e ON e.venue_id = v.id AND e.start_time > now()
				WHERE v.id = ANY($1) GROUP BY v.id`,
			DependsOn: []registry.Dependency{
				{Source: table("", "event"), Columns: []string{"venue_id"}},
				{Source: table("", "currency"), Static: true},
			}},
		{Name: "cinema_seats", Target: table("", "cinema"), Columns: []string{"seats", "Venue Count"}, Self: new(false),
			SQL: `SELECT c.id, sum(v.seat_count)::bigint AS seats, count(v)::int AS "Venue Count"
				FROM cinema c LEFT JOIN venue v ON v.cinema_id = c.id WHERE c.id = ANY($1) GROUP BY c.id`,
			DependsOn: []registry.Dependency{
				{Source: table("", "venue"), Columns: []string{"id"}, SQL: "SELECT cinema_id FROM venue WHERE id = ANY($1)"},
			}},
	}
	// The mapping sql reads venue, its own source, by key: refused. With the key-carrying
	// column itself, the explanation follows.
	_, err := b.build(t, defs...)
	require.ErrorContains(t, err, "its sql looks the changed rows of public.venue up by their key")
	defs[1].DependsOn[0] = registry.Dependency{Source: table("", "venue"), Columns: []string{"cinema_id"}}
	p := b.mustBuild(t, defs...)
	require.Equal(t, `enrichment cinema_seats: public.cinema (seats, "Venue Count")
  reads:
    public.cinema: id
    public.venue: every column (a whole-row read)
  made stale by:
    inserts into public.cinema
    updates of public.cinema: none (self: false)
    public.venue: keys in cinema_id; changes to every column (a whole-row read)

enrichment venue_seats: public.venue (seat_count)
  reads:
    public.currency: code, rate
    public.event: seat_count, start_time, venue_id
    public.venue: id
  made stale by:
    inserts into public.venue
    updates of public.venue changing id
    public.event: keys in venue_id; changes to seat_count, start_time, venue_id
    public.currency: nothing, static (no trigger)
    age: expires_after 24h
`, p.Explain())
}
