package materializer_test

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/registry"
)

// A row whose input changes every 10 ms is recomputed at most once per min_interval, and the last
// change still lands without a new one to announce it. Without min_interval the same load
// recomputes it far more often, which is what makes the bound mean something.
func TestMinIntervalDebouncesHotRow(t *testing.T) {
	const hot = 2500 * time.Millisecond
	for _, tc := range []struct {
		name     string
		interval time.Duration
	}{{"min_interval 700ms", 700 * time.Millisecond}, {"no min_interval", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t)
			ctx := context.Background()
			runCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			defs := []registry.Enrichment{{Name: "venue_seats", Target: tableName("public", "venue"), Columns: []string{"seat_count"},
				SQL: venueSQL, Self: new(true), Settings: registry.Settings{MinInterval: tc.interval},
				DependsOn: []registry.Dependency{{Source: tableName("public", "event"), Columns: []string{"venue_id"}}}}}
			applyDefs(t, b.conn, defs)
			p := reload(t, b)
			b.catchUp(t)
			_, err := b.conn.Exec(ctx, `CREATE TABLE stamps (at timestamptz NOT NULL);
				CREATE FUNCTION log_stamp() RETURNS trigger LANGUAGE plpgsql AS
				  $$BEGIN INSERT INTO stamps VALUES (NEW.materialized_at); RETURN NULL; END$$;
				CREATE TRIGGER log_stamp AFTER UPDATE ON venue FOR EACH ROW
				  WHEN (NEW.id = 1 AND NEW.materialized_at IS NOT NULL) EXECUTE FUNCTION log_stamp()`)
			require.NoError(t, err)

			// The sweep never runs during the test: only the wake for held rows can finish the job.
			m := materializer.New(b.pool, p, materializer.Config{Workers: 2, PollInterval: 20 * time.Millisecond,
				SweepInterval: time.Hour}, hclog.NewNullLogger())
			done := make(chan error, 1)
			go func() { done <- m.Run(runCtx) }()
			start := time.Now()
			for i := 0; time.Since(start) < hot; i++ {
				_, err := b.conn.Exec(ctx, `UPDATE event SET seats = $1 WHERE id = 1`, 100+i)
				require.NoError(t, err)
				time.Sleep(10 * time.Millisecond)
			}
			var want int64
			require.NoError(t, b.conn.QueryRow(ctx, `SELECT seats FROM event WHERE id = 1`).Scan(&want))
			last := time.Now()
			require.Eventually(t, func() bool {
				var got *int64
				var fresh bool
				_ = b.conn.QueryRow(ctx, `SELECT seat_count, materialized_at IS NOT NULL FROM venue WHERE id = 1`).Scan(&got, &fresh)
				return fresh && got != nil && *got == want
			}, tc.interval+3*time.Second, 20*time.Millisecond, "the last change must land without a sweep")
			t.Logf("fresh %s after the last write", time.Since(last).Round(time.Millisecond))
			cancel()
			require.NoError(t, <-done)
			require.Empty(t, b.drift(t))

			var n int
			var minGap *float64
			require.NoError(t, b.conn.QueryRow(ctx, `SELECT count(*), min(gap) FROM (
				SELECT extract(epoch FROM at - lag(at) OVER (ORDER BY at))::float8 AS gap FROM stamps) s`).Scan(&n, &minGap))
			t.Logf("%d recomputations of the hot row in %s; shortest gap %.3fs; %d throttled", n, hot, *minGap, m.Stats.Throttled.Load())
			bound := int(hot/700/time.Millisecond) + 2
			if tc.interval == 0 {
				require.Greater(t, n, bound, "without min_interval the hot row is recomputed more often than the bound")
				return
			}
			require.LessOrEqual(t, n, bound)
			require.GreaterOrEqual(t, *minGap, tc.interval.Seconds(), "two recomputations closer than min_interval")
		})
	}
}
