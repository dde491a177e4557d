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
      - table: public.currency
        static: true
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
	require.Nil(t, e.Self, "self unset: read-based")
	require.True(t, e.DependsOn[2].Static)
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
materializer: {workers: 0, table_workers: 0}
enrichments:
  - name: a
    table: 'public."unterminated'
    columns: [x, x, materialized_at]
  - name: a
    table: t
    columns: [y]
    sql: SELECT 1
    min_interval: -1s
    depends_on: [{table: s}, {table: u, static: true, columns: [x]}]
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
		"materializer.table_workers: 0 is outside 1..256",
		"enrichments[0] (a).table: name",
		`enrichments[0] (a).columns: "x" is listed twice`,
		"materialized_at is matcol's own stamp",
		"enrichments[0] (a).sql: is required",
		"enrichments[1] (a).name: duplicates enrichments[0]",
		"enrichments[1] (a).depends_on[0].columns: lists no column",
		"enrichments[1] (a).depends_on[1].static: a static table takes no columns and no sql",
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

// A plain number is seconds wherever a duration is read: YAML integers and floats, quoted YAML
// strings and environment variables.
func TestPlainNumbersAreSeconds(t *testing.T) {
	cfg, err := Load(write(t, `
materializer:
  sweep_interval: 0.5
  target_batch_duration: 1.5
  rescan_interval: 90
throttle:
  max_replica_lag: "2.25"
enrichments:
  - name: a
    table: t
    columns: [x]
    sql: SELECT 1
    statement_timeout: 45
    lock_timeout: 0.25
`), nil)
	require.NoError(t, err)
	require.Equal(t, 500*time.Millisecond, cfg.Materializer.SweepInterval)
	require.Equal(t, 1500*time.Millisecond, cfg.Materializer.TargetBatchDuration)
	require.Equal(t, 90*time.Second, cfg.Materializer.RescanInterval)
	require.Equal(t, 2250*time.Millisecond, cfg.Throttle.MaxReplicaLag)
	require.Equal(t, 45*time.Second, cfg.Enrichments[0].StatementTimeout)
	require.Equal(t, 250*time.Millisecond, cfg.Enrichments[0].LockTimeout)

	t.Setenv("MATCOL_MATERIALIZER_SWEEP_INTERVAL", "10")
	t.Setenv("MATCOL_MATERIALIZER_TARGET_BATCH_DURATION", "0.2")
	t.Setenv("MATCOL_THROTTLE_MAX_REPLICA_LAG", "1m")
	cfg, err = Load(write(t, "log_level: info\n"), nil)
	require.NoError(t, err)
	require.Equal(t, 10*time.Second, cfg.Materializer.SweepInterval)
	require.Equal(t, 200*time.Millisecond, cfg.Materializer.TargetBatchDuration)
	require.Equal(t, time.Minute, cfg.Throttle.MaxReplicaLag)
}

// A fraction where a whole number is wanted is an error naming the key, never truncated.
func TestFractionsAreRefusedForWholeNumbers(t *testing.T) {
	_, err := Load(write(t, "materializer:\n  workers: 4.7\n  batch_size: 100\ndatabase:\n  max_cache_bytes: 1.5\n"), nil)
	require.Error(t, err)
	require.Contains(t, err.Error(), "materializer.workers: 4.7 is not a whole number")
	require.Contains(t, err.Error(), "database.max_cache_bytes: 1.5 is not a whole number of bytes")
	require.NotContains(t, err.Error(), "batch_size")

	cfg, err := Load(write(t, "materializer:\n  workers: 4.0\n"), nil)
	require.NoError(t, err)
	require.Equal(t, 4, cfg.Materializer.Workers)
}

// A bad value in the environment names the variable, not the config file.
func TestBadEnvValuesNameTheVariable(t *testing.T) {
	t.Setenv("MATCOL_MATERIALIZER_WORKERS", "4.7")
	t.Setenv("MATCOL_MATERIALIZER_SWEEP_INTERVAL", "soon")
	t.Setenv("MATCOL_DATABASE_MAX_CACHE_BYTES", "lots")
	path := write(t, "log_level: info\n")
	_, err := Load(path, nil)
	require.Error(t, err)
	msg := err.Error()
	require.Contains(t, msg, `MATCOL_MATERIALIZER_WORKERS: "4.7" is not a whole number`)
	require.Contains(t, msg, `MATCOL_MATERIALIZER_SWEEP_INTERVAL: "soon" is not a duration`)
	require.Contains(t, msg, `MATCOL_DATABASE_MAX_CACHE_BYTES: "lots" is not a size`)
	require.NotContains(t, msg, path)
}

// An empty variable is unset, except MATCOL_STATUS_LISTEN, where empty turns the server off.
func TestEmptyStatusListenDisablesTheServer(t *testing.T) {
	t.Setenv("MATCOL_LOG_LEVEL", "")
	t.Setenv("MATCOL_STATUS_LISTEN", "")
	cfg, err := Load(write(t, "status:\n  listen: 0.0.0.0:9180\n"), nil)
	require.NoError(t, err)
	require.Equal(t, "", cfg.Status.Listen)
	require.Equal(t, "info", cfg.LogLevel)
}
