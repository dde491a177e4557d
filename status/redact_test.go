package status_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/pgtest"
	"github.com/matcol/matcol/status"
)

// Without status.token, /status shows no error text that can quote row values: a failed
// refresh keeps its condition name, a failed backfill its SQLSTATE. With the token, and in
// matcol status, the full text shows.
func TestStatusHidesErrorTextWithoutToken(t *testing.T) {
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	pgtest.Exec(t, conn, schema+`
		CREATE TABLE labels (id int PRIMARY KEY, label text);
		INSERT INTO labels VALUES (1, '7');
		CREATE MATERIALIZED VIEW mv AS SELECT id, label::int AS n FROM labels;
		UPDATE labels SET label = 'secret-42'`)
	f := t.TempDir() + "/m.yaml"
	require.NoError(t, os.WriteFile(f, []byte(yaml+"matviews:\n  - name: public.mv\n    refresh_interval: 1h\n"), 0o600))
	cfg, err := config.Load(f, nil)
	require.NoError(t, err)
	cfg.DatabaseURL = dsn
	cfg.Status.Listen = freePort(t)
	require.NoError(t, cfg.Validate())

	dctx, stop := context.WithCancel(ctx)
	d, err := daemon.Start(dctx, cfg, hclog.NewNullLogger())
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- d.Wait(dctx) }()
	defer func() { stop(); <-done }()
	pgtest.Exec(t, conn, `INSERT INTO matcol.backfill (target_id, enrichments, status, error)
		SELECT id, '{order_total}', 'failed',
			'backfill 1 of public.orders: ERROR: invalid input syntax for type integer: "secret-43" (SQLSTATE 22P02)'
		FROM matcol.target WHERE table_name = 'orders'`)
	base := "http://" + cfg.Status.Listen
	var body string
	require.Eventually(t, func() bool {
		var code int
		code, body = get(t, base+"/status")
		return code == 200 && !strings.Contains(body, `"last_error": null`)
	}, 30*time.Second, 200*time.Millisecond, "the refresh must fail")
	require.Contains(t, body, `"invalid_text_representation: details hidden: set status.token`)
	require.Contains(t, body, `"SQLSTATE 22P02: details hidden: set status.token`)
	require.NotContains(t, body, "secret-4")

	r := collect(t, dsn) // what matcol status shows
	require.Contains(t, *r.Matviews[0].LastError, `"secret-42"`)
	require.Contains(t, *r.Backfills[0].Error, `"secret-43"`)

	pool, err := pgxpool.New(ctx, dsn)
	require.NoError(t, err)
	defer pool.Close()
	srv := &status.Server{Token: "t0ken", Log: hclog.NewNullLogger()}
	srv.Attach(&status.Source{DB: pool, Plan: d.Mat.Plan})
	guarded := httptest.NewServer(srv.Handler())
	defer guarded.Close()
	req, _ := http.NewRequest("GET", guarded.URL+"/status", nil)
	req.Header.Set("Authorization", "Bearer t0ken")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	full, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Contains(t, string(full), `secret-42`)
	require.Contains(t, string(full), `secret-43`)
}
