package daemon_test

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/pgtest"
)

// TestScaleTenants is the large tenants run (docs/tenants.md): MATCOL_SCALE=1 enables it,
// MATCOL_SCALE_TENANTS sets the number of schemas (5,000 by default).
func TestScaleTenants(t *testing.T) {
	if os.Getenv("MATCOL_SCALE") == "" {
		t.Skip("set MATCOL_SCALE=1 to run the large tenants test")
	}
	tenants := 5000
	if s := os.Getenv("MATCOL_SCALE_TENANTS"); s != "" {
		var err error
		tenants, err = strconv.Atoi(s)
		require.NoError(t, err)
	}
	dsn := pgtest.NewDB(t)
	conn := pgtest.Connect(t, dsn)
	ctx := context.Background()
	start := time.Now()
	for i := 0; i < tenants; i += 250 {
		var ddl strings.Builder
		for j := i; j < min(i+250, tenants); j++ {
			ddl.WriteString(tenantDDL(fmt.Sprintf("tenant_%05d", j), j))
		}
		pgtest.Exec(t, conn, ddl.String())
	}
	t.Logf("%d tenants created in %s", tenants, time.Since(start).Round(time.Second))

	cfg := loadConfig(t, dsn, templateYAML+`
database:
  max_cache_bytes: 32MB
`)
	cfg.Materializer.Workers = 4
	cfg.Materializer.RescanInterval = 10 * time.Second
	log := hclog.New(&hclog.LoggerOptions{Name: "matcol", Level: hclog.Debug, Output: pgtest.LogWriter(t)})

	// Every matcol backend's private memory, sampled each 500ms from /proc.
	var mu sync.Mutex
	peak := map[string]int64{}
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		mon, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return
		}
		defer mon.Close(ctx)
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(500 * time.Millisecond):
			}
			rows, err := mon.Query(ctx, `SELECT pid, application_name FROM pg_stat_activity
				WHERE datname = current_database() AND application_name LIKE 'matcol%'`)
			if err != nil {
				continue
			}
			for rows.Next() {
				var pid int
				var app string
				if rows.Scan(&pid, &app) != nil {
					continue
				}
				if kb := rssAnonKB(pid); kb > 0 {
					mu.Lock()
					peak[app] = max(peak[app], kb)
					mu.Unlock()
				}
			}
			rows.Close()
		}
	}()

	applyStart := time.Now()
	rep, err := daemon.Apply(ctx, cfg, log.Named("apply"))
	require.NoError(t, err)
	require.Len(t, rep.Plan.Targets, tenants)
	applyTime := time.Since(applyStart)
	t.Logf("apply of %d tenants: %s", tenants, applyTime.Round(100*time.Millisecond))

	runStart := time.Now()
	dctx, cancel := context.WithCancel(ctx)
	d, err := daemon.Start(dctx, cfg, log)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- d.Wait(dctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	waitNoneWrong(t, conn, 10*time.Minute)
	firstFresh := time.Since(runStart)
	t.Logf("first full freshness %s after the daemon started", firstFresh.Round(100*time.Millisecond))

	// Writes spread over every tenant for 30s, plus a tenant created meanwhile.
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	var writes int
	late := make(chan struct{})
	lconn := pgtest.Connect(t, dsn)
	go func() {
		defer close(late)
		time.Sleep(10 * time.Second)
		created := time.Now()
		if _, err := lconn.Exec(ctx, tenantDDL("tenant_late", 424242)); err != nil {
			t.Errorf("create a tenant: %v", err)
			return
		}
		var n int
		for time.Since(created) < 60*time.Second {
			_ = lconn.QueryRow(ctx, `SELECT count(*) FROM tenant_late.item WHERE materialized_at IS NOT NULL`).Scan(&n)
			if n == 5 {
				t.Logf("tenant created while running: fresh after %s", time.Since(created).Round(100*time.Millisecond))
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Errorf("tenant created while running: not fresh within 60s")
	}()
	wconn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	defer wconn.Close(ctx)
	rnd := rand.New(rand.NewSource(1))
	for wctx.Err() == nil {
		s := pgx.Identifier{fmt.Sprintf("tenant_%05d", rnd.Intn(tenants))}.Sanitize()
		_, err := wconn.Exec(wctx, fmt.Sprintf(`INSERT INTO %s.item_detail (item_id, amount) VALUES ($1, $2)`, s), 1+rnd.Intn(5), rnd.Intn(1000))
		if err == nil {
			writes++
		}
	}
	t.Logf("%d writes over 30s", writes)
	<-late
	caughtUp := waitNoneWrong(t, conn, 5*time.Minute)
	t.Logf("fresh again %s after the writers stopped", caughtUp.Round(100*time.Millisecond))

	close(stopSampling)
	<-sampled
	mu.Lock()
	defer mu.Unlock()
	var worst int64
	for app, kb := range peak {
		t.Logf("peak RssAnon of %s: %d kB", app, kb)
		worst = max(worst, kb)
	}
	var cacheMax int64
	for _, n := range d.Cache().Sizes() {
		cacheMax = max(cacheMax, n)
	}
	t.Logf("SUMMARY tenants=%d apply=%s first_fresh=%s peak_rss_anon_kb=%d cache_bytes_now_max=%d recycled=%d",
		tenants, applyTime.Round(100*time.Millisecond), firstFresh.Round(100*time.Millisecond), worst, cacheMax, d.Cache().RecycledCount())
	require.Less(t, worst, int64(48<<10), "every matcol backend stays under 48 MB of private memory")
}

// rssAnonKB reads RssAnon of a local process, 0 when it cannot.
func rssAnonKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "RssAnon:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}
