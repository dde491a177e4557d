package refresh_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/refresh"
)

func syncViews(t *testing.T, b *bundle, views ...config.Matview) (refresh.Changes, error) {
	t.Helper()
	var ch refresh.Changes
	err := pgx.BeginFunc(context.Background(), b.conn, func(tx pgx.Tx) error {
		var err error
		ch, err = refresh.Sync(context.Background(), tx, views)
		return err
	})
	return ch, err
}

func TestSync(t *testing.T) {
	b := setup(t, `CREATE SCHEMA "Shop";
		CREATE MATERIALIZED VIEW "Shop"."Daily Totals" AS SELECT 1 AS one;
		CREATE MATERIALIZED VIEW plain AS SELECT 1 AS one;
		CREATE TABLE not_a_view (id int)`)
	quoted := config.Matview{Name: `"Shop"."Daily Totals"`, RefreshInterval: time.Hour}

	_, err := syncViews(t, b, quoted, config.Matview{Name: "public.nope", RefreshInterval: time.Minute},
		config.Matview{Name: "not_a_view", RefreshInterval: time.Minute})
	require.ErrorContains(t, err, "materialized view public.nope does not exist")
	require.ErrorContains(t, err, "public.not_a_view is not a materialized view")
	_, err = syncViews(t, b, quoted, config.Matview{Name: `"Shop"."Daily Totals"`, RefreshInterval: time.Minute})
	require.ErrorContains(t, err, "is listed twice")

	ch, err := syncViews(t, b, quoted)
	require.NoError(t, err)
	require.Equal(t, []string{`"Shop"."Daily Totals"`}, ch.Added)
	ch, err = syncViews(t, b, quoted)
	require.NoError(t, err)
	require.Empty(t, ch.Added)
	require.Empty(t, ch.Updated, "an unchanged config changes nothing")

	// Pretend it ran a minute ago; a shorter interval makes it due sooner, never later.
	pgtest.Exec(t, b.conn, `UPDATE matcol.matview_schedule SET last_attempted_at = now() - interval '1 minute',
		next_due_at = now() + interval '59 minutes'`)
	quoted.RefreshInterval = 2 * time.Minute
	ch, err = syncViews(t, b, quoted)
	require.NoError(t, err)
	require.Equal(t, []string{`"Shop"."Daily Totals"`}, ch.Updated)
	v := view(t, b.conn, "Daily Totals")
	require.InDelta(t, time.Minute.Seconds(), time.Until(v.NextDueAt).Seconds(), 5)
	require.Equal(t, refresh.SourceConfig, v.Source)
	require.Equal(t, refresh.DefaultKeepExecutions, v.KeepExecutions)

	// A CLI entry survives a sync that does not mention it; config entries that left are removed.
	b.schedule(t, "plain", refresh.Options{RefreshInterval: time.Minute})
	ch, err = syncViews(t, b)
	require.NoError(t, err)
	require.Equal(t, []string{`"Shop"."Daily Totals"`}, ch.Removed)
	all, err := refresh.List(context.Background(), b.conn)
	require.NoError(t, err)
	require.Len(t, all, 1)
	require.Equal(t, "public.plain", all[0].Name.String())
	require.Equal(t, refresh.SourceCLI, all[0].Source)
}
