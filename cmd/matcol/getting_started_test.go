package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
)

// docs/getting-started.md works as written: its tables, its role setup (an owner with schema
// matcol created for it and no CREATE on the database), its config and its commands, and
// `matcol status` prints what the page shows.
func TestGettingStartedWalkthrough(t *testing.T) {
	raw, err := os.ReadFile("../../docs/getting-started.md")
	require.NoError(t, err)
	page := string(raw)
	blocks := regexp.MustCompile("(?ms)^```([a-z]*)\n(.*?)^```").FindAllStringSubmatch(page, -1)
	find := func(lang, marker string) string {
		t.Helper()
		for _, b := range blocks {
			if b[1] == lang && strings.Contains(b[2], marker) {
				return b[2]
			}
		}
		t.Fatalf("docs/getting-started.md has no %s block with %q", lang, marker)
		return ""
	}
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	su := pgtest.Connect(t, dsn)
	var db string
	require.NoError(t, su.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	owner := "app_owner_" + strings.TrimPrefix(db, "matcol_test_")
	ownerSQL := func(s string) string { return strings.ReplaceAll(s, "app_owner", owner) }
	pgtest.Exec(t, su, fmt.Sprintf(`CREATE ROLE %[1]s LOGIN; GRANT USAGE, CREATE ON SCHEMA public TO %[1]s;
		REVOKE CREATE ON DATABASE %[2]s FROM PUBLIC`, owner, db))
	t.Cleanup(func() {
		_, _ = su.Exec(context.Background(), fmt.Sprintf(`DROP OWNED BY %[1]s CASCADE; DROP ROLE IF EXISTS %[1]s`, owner))
	})
	as := strings.Replace(dsn, "://"+userOf(t, dsn)+"@", "://"+owner+"@", 1)
	app := pgtest.Connect(t, as)
	run := func(c string, sql string) {
		t.Helper()
		sql = regexp.MustCompile(`(?m)--.*$`).ReplaceAllString(sql, "")
		for _, stmt := range strings.Split(sql, ";") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			conn := app
			if c == "admin" {
				conn = su
			}
			pgtest.Exec(t, conn, stmt) // one at a time: CREATE INDEX CONCURRENTLY
		}
	}
	run("app", find("sql", "CREATE TABLE venue"))
	run("app", find("sql", "ALTER TABLE venue"))
	run("admin", ownerSQL(find("sql", "CREATE SCHEMA matcol AUTHORIZATION")))

	cfg := writeConfig(t, ownerSQL(find("yaml", "enrichments:")))
	env := []string{"MATCOL_DATABASE_URL=" + as, "MATCOL_STATUS_LISTEN="}
	for _, c := range []string{"install", "apply"} {
		r := matcol(t, env, c, "-c", cfg)
		require.Zero(t, r.code, r.stderr)
	}
	startRun(t, env, "-c", cfg)
	require.Eventually(t, func() bool {
		r := matcol(t, env, "status", "-c", cfg, "--json")
		var rep struct {
			Enrichments []struct {
				StaleRows int64 `json:"stale_rows"`
			} `json:"enrichments"`
		}
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &rep) == nil && len(rep.Enrichments) == 1 &&
			rep.Enrichments[0].StaleRows == 0
	}, 60*time.Second, 250*time.Millisecond)

	// matcol status prints what the page shows.
	shown := find("", "$ matcol status")
	_, want, _ := strings.Cut(shown, "\n")
	r := matcol(t, env, "status", "-c", cfg)
	require.Zero(t, r.code, r.stderr)
	require.Equal(t, strings.TrimSpace(want), strings.TrimSpace(r.stdout))

	// The change the page makes lands.
	change := find("sql", "UPDATE event")
	update, _, _ := strings.Cut(change, ";")
	pgtest.Exec(t, app, update)
	require.Eventually(t, func() bool {
		var fresh bool
		require.NoError(t, app.QueryRow(ctx, `SELECT v.materialized_at IS NOT NULL
			AND v.seat_count = (SELECT sum(seat_count) FROM event WHERE venue_id = 43)
			FROM venue v WHERE v.id = 43`).Scan(&fresh))
		return fresh
	}, 30*time.Second, 100*time.Millisecond)
	var venue int
	require.NoError(t, app.QueryRow(ctx, `SELECT venue_id FROM event WHERE id = 42`).Scan(&venue))
	require.Equal(t, 43, venue, "the page says event 42 is a venue 43's")
	r = matcol(t, env, "verify", "-c", cfg, "--all")
	require.Zero(t, r.code, r.stdout+r.stderr)
}

// config.example.yaml applies to the demo's cinema schema, which it describes.
func TestExampleConfigApplies(t *testing.T) {
	dsn := cinemaDB(t)
	r := matcol(t, []string{"MATCOL_DATABASE_URL=" + dsn}, "apply", "-c", "../../config.example.yaml")
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "2 enrichments on 1 tables are registered")
}
