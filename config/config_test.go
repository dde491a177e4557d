package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const example = `
database_url: postgres://matcol@127.0.0.1:5432/app
invalidation:
  mode: trigger
status:
  listen: 127.0.0.1:9180
materializer:
  workers: 4
database:
  max_conn_lifetime: 10m
  max_cache_bytes: 32MB
enrichments:
  - name: venue_counts
    table: public.venue
    columns: [auditorium_count, seat_count]
    sql: SELECT 1
    expires_after: 24h
    depends_on:
      - table: public.event
        columns: [venue_id]
      - table: '"Shop"."Order"'
        columns: ["Total Cents"]
        sql: SELECT id FROM public.venue WHERE cinema_id = ANY($1)
matviews:
  - name: public.daily_admissions
    refresh_interval: 10m
    maximum_execution_duration: 30m
`

func write(t *testing.T, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "c.yaml")
	require.NoError(t, os.WriteFile(f, []byte(body), 0o600))
	return f
}

func TestLoadExample(t *testing.T) {
	cfg, err := Load(write(t, example), nil)
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, 4, cfg.Materializer.Workers)
	require.Equal(t, 10*time.Minute, cfg.Database.MaxConnLifetime)
	require.Equal(t, ByteSize(32<<20), cfg.Database.MaxCacheBytes)
	require.Equal(t, ByteSize(1<<30), cfg.Invalidation.MaxRetainedWAL, "default")
	e := cfg.Enrichments[0]
	require.Equal(t, 24*time.Hour, e.ExpiresAfter)
	require.True(t, e.SelfEnabled())
	require.Equal(t, []string{"Total Cents"}, e.DependsOn[1].Columns)
	require.Equal(t, `"Shop"."Order"`, e.DependsOn[1].Table)
	require.Equal(t, 30*time.Minute, cfg.Matviews[0].MaximumExecutionDuration)
}

func TestEnvOverrides(t *testing.T) {
	t.Setenv("MATCOL_DATABASE_URL", "postgres://env@127.0.0.1/x")
	t.Setenv("MATCOL_MATERIALIZER_WORKERS", "7")
	t.Setenv("MATCOL_INVALIDATION_MODE", "logical")
	t.Setenv("MATCOL_DATABASE_MAX_CACHE_BYTES", "16MB")
	cfg, err := Load(write(t, example), nil)
	require.NoError(t, err)
	require.Equal(t, "postgres://env@127.0.0.1/x", cfg.DatabaseURL)
	require.Equal(t, 7, cfg.Materializer.Workers)
	require.Equal(t, "logical", cfg.Invalidation.Mode)
	require.Equal(t, ByteSize(16<<20), cfg.Database.MaxCacheBytes)

	cfg, err = Load("", nil) // env alone
	require.NoError(t, err)
	require.Equal(t, 7, cfg.Materializer.Workers)
}

func TestValidateReportsEveryProblem(t *testing.T) {
	cfg, err := Load(write(t, `
invalidation: {mode: sometimes, slot: "Bad-Slot"}
materializer: {workers: 0}
enrichments:
  - name: a
    table: 'public."unterminated'
    columns: [x, x, materialized_at]
  - name: a
    table: t
    columns: [y]
    sql: SELECT 1
    min_interval: -1s
    depends_on: [{table: s}]
`), nil)
	require.NoError(t, err)
	err = cfg.Validate()
	require.Error(t, err)
	msg := err.Error()
	for _, want := range []string{
		"database_url: is required",
		`invalidation.mode: "sometimes" is not one of trigger, logical`,
		`invalidation.slot: "Bad-Slot"`,
		"materializer.workers: 0 is outside 1..256",
		"enrichments[0] (a).table: name",
		`enrichments[0] (a).columns: "x" is listed twice`,
		"materialized_at is matcol's own stamp",
		"enrichments[0] (a).sql: is required",
		"enrichments[1] (a).name: duplicates enrichments[0]",
		"enrichments[1] (a).depends_on[0].columns: lists no column",
		"enrichments[1] (a).min_interval: must not be negative",
	} {
		require.Contains(t, msg, want)
	}
}

func TestUnknownKeysSuggest(t *testing.T) {
	_, err := Load(write(t, "materializer:\n  worker: 3\nenrichments:\n  - name: a\n    tabel: x\n"), nil)
	require.Error(t, err)
	require.Contains(t, err.Error(), `unknown key "materializer.worker" (did you mean "workers"?)`)
	require.Contains(t, err.Error(), `unknown key "enrichments[0].tabel" (did you mean "table"?)`)
}

func TestMalformedYAMLNamesLine(t *testing.T) {
	_, err := Load(write(t, "enrichments:\n  - name: a\n   table: b\n"), nil)
	require.Error(t, err)
	require.Contains(t, err.Error(), "malformed YAML")
	require.Contains(t, err.Error(), "line ")
}

func TestBadValuesNameTheKey(t *testing.T) {
	_, err := Load(write(t, "database:\n  max_cache_bytes: lots\n"), nil)
	require.Error(t, err)
	require.Contains(t, err.Error(), "max_cache_bytes")
	require.Contains(t, err.Error(), `"lots" is not a size`)
}

func TestByteSizeAndDuration(t *testing.T) {
	for in, want := range map[string]ByteSize{"64MB": 64 << 20, "1GB": 1 << 30, "512kB": 512 << 10, "100": 100} {
		got, err := ParseByteSize(in)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	d, err := ParseDuration("1d12h")
	require.NoError(t, err)
	require.Equal(t, 36*time.Hour, d)
	_, err = ParseDuration("soon")
	require.Error(t, err)
}

func FuzzLoad(f *testing.F) {
	f.Add(example)
	f.Add("enrichments: [\n")
	f.Add("materializer: {workers: -1}\n")
	f.Add("enrichments:\n  - name: '\"x'\n    table: '\"a\"\"b\".c'\n")
	f.Fuzz(func(t *testing.T, body string) {
		dir := t.TempDir()
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Skip()
		}
		cfg, err := Load(p, nil)
		if err != nil {
			return
		}
		_ = cfg.Validate() // must not panic
	})
}
