// Package config holds matcol's typed configuration: YAML, MATCOL_* environment variables and
// flags, loaded once into these structs and validated with every problem reported at once.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/matcol/matcol/internal/pgident"
)

// Config is the whole configuration.
type Config struct {
	// DatabaseURL is the PostgreSQL connection string. Env MATCOL_DATABASE_URL.
	DatabaseURL string `mapstructure:"database_url"`
	// LogLevel is trace, debug, info, warn or error. Defaults to info.
	LogLevel string `mapstructure:"log_level"`
	// LogFormat is auto, json or text. Defaults to auto: text on a terminal, JSON otherwise.
	LogFormat string `mapstructure:"log_format"`
	// Registration is where enrichments are declared: yaml (the enrichments list; apply and run
	// make the registry match it, removing anything else) or sql (matcol.register_enrichment in
	// the team's migrations; apply and run leave the registry alone). Defaults to yaml.
	Registration string       `mapstructure:"registration"`
	Database     Database     `mapstructure:"database"`
	Invalidation Invalidation `mapstructure:"invalidation"`
	Status       Status       `mapstructure:"status"`
	Materializer Materializer `mapstructure:"materializer"`
	Throttle     Throttle     `mapstructure:"throttle"`
	Enrichments  []Enrichment `mapstructure:"enrichments"`
	Matviews     []Matview    `mapstructure:"matviews"`
}

// Database tunes matcol's own connections.
type Database struct {
	// MaxConns caps the pool. Defaults to workers + 4.
	MaxConns int `mapstructure:"max_conns"`
	// MaxConnLifetime recycles a connection after this long (with 20% jitter), so the backend's
	// catalog cache cannot grow without bound. Defaults to 30m.
	MaxConnLifetime time.Duration `mapstructure:"max_conn_lifetime"`
	// MaxCacheBytes recycles a connection whose backend memory (catalog cache, prepared
	// statements) exceeds it (PG14+).
	// Defaults to 64MB.
	MaxCacheBytes ByteSize `mapstructure:"max_cache_bytes"`
}

// Invalidation chooses how matcol hears about changes.
type Invalidation struct {
	// Mode is trigger or logical. Defaults to trigger.
	Mode string `mapstructure:"mode"`
	// Slot is the logical replication slot name. Defaults to matcol.
	Slot string `mapstructure:"slot"`
	// Publication is the publication name in logical mode. Defaults to matcol.
	Publication string `mapstructure:"publication"`
	// MaxRetainedWAL caps the WAL the slot may hold back before matcol resyncs. Defaults to 1GB.
	MaxRetainedWAL ByteSize `mapstructure:"max_retained_wal"`
	// FixReplicaIdentity lets apply run the ALTER TABLE … REPLICA IDENTITY that logical mode needs.
	// Defaults to false.
	FixReplicaIdentity bool `mapstructure:"fix_replica_identity"`
}

// Status configures the HTTP status server.
type Status struct {
	// Listen is the address of /status, /metrics, /healthz and /readyz; empty disables it.
	// Defaults to 127.0.0.1:9180.
	Listen string `mapstructure:"listen"`
	// Token, when set, is required as a bearer token on /status and /metrics. Defaults to none.
	Token string `mapstructure:"token"`
}

// Materializer tunes the workers.
type Materializer struct {
	// Workers is the number of concurrent batches. Defaults to 4.
	Workers int `mapstructure:"workers"`
	// TableWorkers caps the concurrent batches of one table. Defaults to 2.
	TableWorkers int `mapstructure:"table_workers"`
	// BatchSize is the starting number of rows per batch. Defaults to 500.
	BatchSize int `mapstructure:"batch_size"`
	// TargetBatchDuration is what adaptive batch sizing aims for; it bounds row-lock time.
	// Defaults to 100ms.
	TargetBatchDuration time.Duration `mapstructure:"target_batch_duration"`
	// SweepInterval is the safety-net poll when no notification arrives. Defaults to 5s.
	SweepInterval time.Duration `mapstructure:"sweep_interval"`
	// RescanInterval is how often the catalog is rediscovered. Defaults to 1m.
	RescanInterval time.Duration `mapstructure:"rescan_interval"`
}

// Throttle makes matcol yield when the database falls behind.
type Throttle struct {
	// MaxReplicaLag holds all work while any replica's replay lag exceeds it; 0 disables.
	// Defaults to 30s.
	MaxReplicaLag time.Duration `mapstructure:"max_replica_lag"`
	// LatencyFactor throttles while application transactions are in flight and a trivial
	// statement takes this many times its quiet latency; 0 disables. Defaults to 4.
	LatencyFactor float64 `mapstructure:"latency_factor"`
	// MaxDelay bounds how long matcol yields: at the throttle's highest level work waits while the
	// oldest waiting change is younger than this, and past it runs without pauses. 0 never
	// waits. Defaults to 30s.
	MaxDelay time.Duration `mapstructure:"max_delay"`
}

// Enrichment is one registered query computing some columns of one target table.
type Enrichment struct {
	Name    string   `mapstructure:"name"`
	Table   string   `mapstructure:"table"`
	Columns []string `mapstructure:"columns"`
	SQL     string   `mapstructure:"sql"`
	// ExpiresAfter re-materializes rows older than this. Defaults to never.
	ExpiresAfter time.Duration `mapstructure:"expires_after"`
	// Self says which updates of a target row make it stale. Unset (the default): an update that
	// changes a column the enrichment's SQL reads, or a key column. true: an update of any column
	// but matcol's own. false: none, only inserts.
	Self      *bool        `mapstructure:"self"`
	DependsOn []Dependency `mapstructure:"depends_on"`
	// BatchSize overrides materializer.batch_size for this enrichment's table.
	BatchSize int `mapstructure:"batch_size"`
	// StatementTimeout bounds each batch statement. Defaults to 30s.
	StatementTimeout time.Duration `mapstructure:"statement_timeout"`
	// LockTimeout bounds waits for locks in a batch. Defaults to 5s.
	LockTimeout time.Duration `mapstructure:"lock_timeout"`
	// WorkMem is set locally for each batch, e.g. 64MB. Defaults to the server's.
	WorkMem string `mapstructure:"work_mem"`
	// Settings are further PostgreSQL settings applied with SET LOCAL to each batch, such as
	// max_parallel_workers_per_gather. Defaults to none.
	Settings map[string]string `mapstructure:"settings"`
	// Priority orders tables when several have work: higher first. Defaults to 0.
	Priority int `mapstructure:"priority"`
	// MinInterval recomputes a row at most once per interval, however often its inputs change.
	// Defaults to 0 (no limit).
	MinInterval time.Duration `mapstructure:"min_interval"`
}

// SelfEnabled reports whether some update of a target row makes it stale (self unset or true).
func (e Enrichment) SelfEnabled() bool { return e.Self == nil || *e.Self }

// Dependency names a source table whose changes make target rows stale.
type Dependency struct {
	Table   string   `mapstructure:"table"`
	Columns []string `mapstructure:"columns"`
	// SQL maps the columns' values ($1..$n arrays) to target keys; empty means the values are keys.
	SQL string `mapstructure:"sql"`
	// Static says the table never changes (a lookup table, a materialized view, a foreign
	// table): no columns, no sql, no trigger; it only tells apply that the enrichment reads the
	// table on purpose. Defaults to false.
	Static bool `mapstructure:"static"`
}

// Matview is a materialized view refreshed on a schedule.
type Matview struct {
	Name                     string        `mapstructure:"name"`
	RefreshInterval          time.Duration `mapstructure:"refresh_interval"`
	MaximumExecutionDuration time.Duration `mapstructure:"maximum_execution_duration"`
	// SkipIfUnchanged skips a refresh when the tables the view reads show no modification since
	// the last successful one. Defaults to false.
	SkipIfUnchanged bool `mapstructure:"skip_if_unchanged"`
	// KeepExecutions bounds the view's execution history. Defaults to 100.
	KeepExecutions int `mapstructure:"keep_executions"`
}

// Defaults returns a Config with every default filled in.
func Defaults() Config {
	return Config{
		LogLevel:     "info",
		LogFormat:    "auto",
		Registration: "yaml",
		Database: Database{
			MaxConnLifetime: 30 * time.Minute,
			MaxCacheBytes:   64 << 20,
		},
		Invalidation: Invalidation{
			Mode:           "trigger",
			Slot:           "matcol",
			Publication:    "matcol",
			MaxRetainedWAL: 1 << 30,
		},
		Status:   Status{Listen: "127.0.0.1:9180"},
		Throttle: Throttle{MaxReplicaLag: 30 * time.Second, LatencyFactor: 4, MaxDelay: 30 * time.Second},
		Materializer: Materializer{
			Workers:             4,
			TableWorkers:        2,
			BatchSize:           500,
			TargetBatchDuration: 100 * time.Millisecond,
			SweepInterval:       5 * time.Second,
			RescanInterval:      time.Minute,
		},
	}
}

var (
	slotRe = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)
	gucRe  = regexp.MustCompile(`^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$`)
)

// Problems collects validation errors; Err joins them.
type Problems []string

func (p *Problems) add(key, format string, args ...any) {
	*p = append(*p, key+": "+fmt.Sprintf(format, args...))
}

// Err returns nil when there are no problems.
func (p Problems) Err() error {
	if len(p) == 0 {
		return nil
	}
	return &ValidationError{Problems: p}
}

// ValidationError lists every problem found in a config.
type ValidationError struct{ Problems []string }

func (e *ValidationError) Error() string {
	if len(e.Problems) == 1 {
		return "invalid config: " + e.Problems[0]
	}
	return "invalid config:\n  - " + strings.Join(e.Problems, "\n  - ")
}

// Validate checks everything that can be checked without a database.
func (c *Config) Validate() error {
	var p Problems
	if c.DatabaseURL == "" {
		p.add("database_url", "is required (or set MATCOL_DATABASE_URL)")
	} else if err := checkURL(c.DatabaseURL); err != nil {
		p.add("database_url", "%v", err)
	}
	switch c.LogLevel {
	case "trace", "debug", "info", "warn", "error":
	default:
		p.add("log_level", "%q is not one of trace, debug, info, warn, error", c.LogLevel)
	}
	switch c.LogFormat {
	case "auto", "json", "text":
	default:
		p.add("log_format", "%q is not one of auto, json, text", c.LogFormat)
	}
	switch c.Registration {
	case "yaml":
	case "sql":
		if len(c.Enrichments) > 0 {
			p.add("enrichments", "must be empty with registration: sql (register them with matcol.register_enrichment)")
		}
	default:
		p.add("registration", "%q is not one of yaml, sql", c.Registration)
	}
	switch c.Invalidation.Mode {
	case "trigger", "logical":
	default:
		p.add("invalidation.mode", "%q is not one of trigger, logical", c.Invalidation.Mode)
	}
	if !slotRe.MatchString(c.Invalidation.Slot) {
		p.add("invalidation.slot", "%q must be 1-63 characters of a-z, 0-9 and _", c.Invalidation.Slot)
	}
	if c.Invalidation.Publication == "" {
		p.add("invalidation.publication", "must not be empty")
	}
	if c.Invalidation.MaxRetainedWAL <= 0 {
		p.add("invalidation.max_retained_wal", "must be positive")
	}
	if c.Materializer.Workers < 1 || c.Materializer.Workers > 256 {
		p.add("materializer.workers", "%d is outside 1..256", c.Materializer.Workers)
	}
	if c.Materializer.TableWorkers < 1 || c.Materializer.TableWorkers > 256 {
		p.add("materializer.table_workers", "%d is outside 1..256", c.Materializer.TableWorkers)
	}
	if c.Materializer.BatchSize < 1 {
		p.add("materializer.batch_size", "must be at least 1")
	}
	if c.Materializer.TargetBatchDuration <= 0 {
		p.add("materializer.target_batch_duration", "must be positive")
	}
	if c.Materializer.SweepInterval <= 0 {
		p.add("materializer.sweep_interval", "must be positive")
	}
	if c.Materializer.RescanInterval <= 0 {
		p.add("materializer.rescan_interval", "must be positive")
	}
	if c.Throttle.MaxReplicaLag < 0 {
		p.add("throttle.max_replica_lag", "must not be negative")
	}
	if c.Throttle.LatencyFactor < 0 || (c.Throttle.LatencyFactor > 0 && c.Throttle.LatencyFactor < 1.5) {
		p.add("throttle.latency_factor", "must be 0 (off) or at least 1.5")
	}
	if c.Throttle.MaxDelay < 0 {
		p.add("throttle.max_delay", "must not be negative")
	}
	if c.Database.MaxConnLifetime < 0 {
		p.add("database.max_conn_lifetime", "must not be negative")
	}
	if c.Database.MaxCacheBytes < 0 {
		p.add("database.max_cache_bytes", "must not be negative")
	}
	if c.Database.MaxConns < 0 {
		p.add("database.max_conns", "must not be negative")
	}
	names := map[string]int{}
	for i, e := range c.Enrichments {
		key := fmt.Sprintf("enrichments[%d]", i)
		if e.Name != "" {
			key = fmt.Sprintf("enrichments[%d] (%s)", i, e.Name)
		}
		e.validate(key, &p)
		if e.Name != "" {
			if j, dup := names[e.Name]; dup {
				p.add(key+".name", "duplicates enrichments[%d]", j)
			}
			names[e.Name] = i
		}
	}
	views := map[string]bool{}
	for i, m := range c.Matviews {
		key := fmt.Sprintf("matviews[%d]", i)
		if _, err := pgident.ParseTable(m.Name); err != nil {
			p.add(key+".name", "%v", err)
		} else if views[m.Name] {
			p.add(key+".name", "%q is listed twice", m.Name)
		}
		views[m.Name] = true
		if m.RefreshInterval <= 0 {
			p.add(key+".refresh_interval", "must be positive")
		}
		if m.MaximumExecutionDuration < 0 {
			p.add(key+".maximum_execution_duration", "must not be negative")
		}
		if m.KeepExecutions < 0 {
			p.add(key+".keep_executions", "must not be negative")
		}
	}
	return p.Err()
}

func (e Enrichment) validate(key string, p *Problems) {
	if e.Name == "" {
		p.add(key+".name", "is required")
	} else if len(e.Name) > 63 {
		p.add(key+".name", "is longer than 63 bytes")
	}
	if e.Table == "" {
		p.add(key+".table", "is required")
	} else if _, _, err := pgident.ParseTemplate(e.Table); err != nil {
		p.add(key+".table", "%v", err)
	}
	if len(e.Columns) == 0 {
		p.add(key+".columns", "lists no column")
	}
	seen := map[string]bool{}
	for _, c := range e.Columns {
		switch {
		case c == "":
			p.add(key+".columns", "has an empty name")
		case c == "materialized_at":
			p.add(key+".columns", "materialized_at is matcol's own stamp, not an enrichment column")
		case seen[c]:
			p.add(key+".columns", "%q is listed twice", c)
		}
		seen[c] = true
	}
	if strings.TrimSpace(e.SQL) == "" {
		p.add(key+".sql", "is required")
	}
	if e.ExpiresAfter < 0 {
		p.add(key+".expires_after", "must not be negative")
	}
	if e.BatchSize < 0 {
		p.add(key+".batch_size", "must not be negative")
	}
	if e.StatementTimeout < 0 {
		p.add(key+".statement_timeout", "must not be negative")
	}
	if e.LockTimeout < 0 {
		p.add(key+".lock_timeout", "must not be negative")
	}
	if e.MinInterval < 0 {
		p.add(key+".min_interval", "must not be negative")
	}
	for name := range e.Settings {
		if !gucRe.MatchString(name) {
			p.add(key+".settings", "%q is not a setting name", name)
		}
	}
	for j, d := range e.DependsOn {
		dk := fmt.Sprintf("%s.depends_on[%d]", key, j)
		if d.Table == "" {
			p.add(dk+".table", "is required")
		} else if _, err := pgident.ParseTable(d.Table); err != nil {
			p.add(dk+".table", "%v", err)
		}
		switch {
		case d.Static && (len(d.Columns) > 0 || strings.TrimSpace(d.SQL) != ""):
			p.add(dk+".static", "a static table takes no columns and no sql (it gets no trigger); drop them, or drop static")
		case !d.Static && len(d.Columns) == 0:
			p.add(dk+".columns", "lists no column (the columns whose values carry target keys); or say static: true for a table that never changes")
		}
		for _, c := range d.Columns {
			if c == "" {
				p.add(dk+".columns", "has an empty name")
			}
		}
	}
}

func checkURL(s string) error {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		if _, err := url.Parse(s); err != nil {
			return errors.New("is not a valid URL") // the parse error would echo the password
		}
	}
	return nil
}
