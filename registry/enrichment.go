package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/internal/pgident"
)

// Enrichment is a registered enrichment.
type Enrichment struct {
	Name   string
	Target pgident.Table
	// Template is true when Target.Schema is a glob over schema names ('*' matches any run of
	// characters): the enrichment applies to the table of that name in every matching schema.
	Template bool
	// Schema is set on a template's instance: the schema it is bound to, and Pattern the
	// template's schema glob. Never stored.
	Schema       string
	Pattern      string
	TargetID     int
	Columns      []string
	SQL          string
	ExpiresAfter time.Duration
	// Self is nil by default: an update of a target row makes it stale when it changes a column the
	// enrichment reads. true: any column but matcol's own (the old default); false: only inserts.
	Self      *bool
	Settings  Settings
	DependsOn []Dependency
}

// Settings are per-enrichment knobs, stored as JSON.
type Settings struct {
	BatchSize        int           `json:"batch_size,omitempty"`
	StatementTimeout time.Duration `json:"statement_timeout,omitempty"`
	LockTimeout      time.Duration `json:"lock_timeout,omitempty"`
	WorkMem          string        `json:"work_mem,omitempty"`
	// GUCs are further settings applied with SET LOCAL to each batch.
	GUCs map[string]string `json:"gucs,omitempty"`
	// Priority orders tables when several have work: higher first. Defaults to 0.
	Priority int `json:"priority,omitempty"`
	// MinInterval recomputes a row at most once per interval. Defaults to 0 (no limit).
	MinInterval time.Duration `json:"min_interval,omitempty"`
}

// GUCsJSON returns GUCs as a JSON object.
func (s Settings) GUCsJSON() string {
	b, _ := json.Marshal(s.GUCs)
	return string(b)
}

// Dependency is a registered source of invalidations.
type Dependency struct {
	ID      int
	Source  pgident.Table
	Columns []string
	SQL     string
	// Static names a table that never changes: it lists no columns and gets no trigger, and only
	// tells apply that the enrichment reads it on purpose.
	Static bool
}

// Load returns every registered enrichment, ordered by name.
func Load(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) ([]Enrichment, error) {
	rows, err := q.Query(ctx, `
		SELECT e.name, t.id, t.schema_name, t.table_name, e.columns, e.sql,
		       coalesce(extract(epoch FROM e.expires_after), 0)::float8, e.self, e.settings, e.template,
		       coalesce((SELECT jsonb_agg(jsonb_build_object('id', d.id, 'schema', d.source_schema,
		                  'table', d.source_table, 'columns', d.columns, 'sql', coalesce(d.sql, ''), 'static', d.static) ORDER BY d.id)
		                 FROM matcol.dependency d WHERE d.enrichment = e.name), '[]')
		FROM matcol.enrichment e JOIN matcol.target t ON t.id = e.target_id
		ORDER BY e.name`)
	if err != nil {
		return nil, fmt.Errorf("load enrichments: %w", err)
	}
	defer rows.Close()
	var out []Enrichment
	for rows.Next() {
		var e Enrichment
		var expires float64
		var settings, deps []byte
		if err := rows.Scan(&e.Name, &e.TargetID, &e.Target.Schema, &e.Target.Name, &e.Columns, &e.SQL,
			&expires, &e.Self, &settings, &e.Template, &deps); err != nil {
			return nil, fmt.Errorf("load enrichments: %w", err)
		}
		e.ExpiresAfter = time.Duration(expires * float64(time.Second))
		if err := json.Unmarshal(settings, &e.Settings); err != nil {
			return nil, fmt.Errorf("load enrichment %s settings: %w", e.Name, err)
		}
		var ds []struct {
			ID      int      `json:"id"`
			Schema  string   `json:"schema"`
			Table   string   `json:"table"`
			Columns []string `json:"columns"`
			SQL     string   `json:"sql"`
			Static  bool     `json:"static"`
		}
		if err := json.Unmarshal(deps, &ds); err != nil {
			return nil, fmt.Errorf("load enrichment %s dependencies: %w", e.Name, err)
		}
		for _, d := range ds {
			e.DependsOn = append(e.DependsOn, Dependency{ID: d.ID, Source: pgident.Table{Schema: d.Schema, Name: d.Table},
				Columns: d.Columns, SQL: d.SQL, Static: d.Static})
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// Changes summarises what Sync did.
type Changes struct {
	Added, Updated, Removed []string
	// Backfill are the enrichments whose columns in rows stamped before keep values their
	// current sql did not compute: its sql or columns changed, or it was added to a table that
	// other enrichments already keep. Those rows are right again after matcol backfill.
	Backfill []string
}

// Sync makes the registry hold exactly defs: new ones are added, changed ones updated, missing ones
// removed. Target and dependency ids stay stable for unchanged entries, so queued invalidations
// keep their meaning. It runs inside tx, which the caller commits.
func Sync(ctx context.Context, tx pgx.Tx, defs []Enrichment) (Changes, error) {
	var ch Changes
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(lockInstall)); err != nil {
		return ch, fmt.Errorf("lock registry: %w", err)
	}
	existing, err := Load(ctx, tx)
	if err != nil {
		return ch, err
	}
	byName := map[string]Enrichment{}
	for _, e := range existing {
		byName[e.Name] = e
	}
	keep := map[string]bool{}
	for _, d := range defs {
		keep[d.Name] = true
		var targetID int
		err := tx.QueryRow(ctx, `
			WITH ins AS (
				INSERT INTO matcol.target (schema_name, table_name) VALUES ($1, $2)
				ON CONFLICT (schema_name, table_name) DO NOTHING RETURNING id)
			SELECT id FROM ins UNION ALL
			SELECT id FROM matcol.target WHERE schema_name = $1 AND table_name = $2`,
			d.Target.Schema, d.Target.Name).Scan(&targetID)
		if err != nil {
			return ch, fmt.Errorf("register target %s: %w", d.Target, err)
		}
		settings, _ := json.Marshal(d.Settings)
		var expires any
		if d.ExpiresAfter > 0 {
			expires = d.ExpiresAfter
		}
		old, had := byName[d.Name]
		tag, err := tx.Exec(ctx, `
			INSERT INTO matcol.enrichment (name, target_id, columns, sql, expires_after, self, settings, template)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
			ON CONFLICT (name) DO UPDATE SET target_id = excluded.target_id, columns = excluded.columns,
				sql = excluded.sql, expires_after = excluded.expires_after, self = excluded.self,
				settings = excluded.settings, template = excluded.template, updated_at = now()
			WHERE (matcol.enrichment.target_id, matcol.enrichment.columns, matcol.enrichment.sql,
			       matcol.enrichment.expires_after, matcol.enrichment.self, matcol.enrichment.settings,
			       matcol.enrichment.template)
			  IS DISTINCT FROM (excluded.target_id, excluded.columns, excluded.sql,
			       excluded.expires_after, excluded.self, excluded.settings, excluded.template)`,
			d.Name, targetID, d.Columns, d.SQL, expires, d.Self, settings, d.Template)
		if err != nil {
			return ch, fmt.Errorf("register enrichment %s: %w", d.Name, err)
		}
		if err := syncDeps(ctx, tx, d); err != nil {
			return ch, err
		}
		switch {
		case !had:
			ch.Added = append(ch.Added, d.Name)
			if slices.ContainsFunc(existing, func(e Enrichment) bool { return e.Target == d.Target }) {
				ch.Backfill = append(ch.Backfill, d.Name)
			}
		case tag.RowsAffected() > 0 || !depsEqual(old.DependsOn, d.DependsOn):
			ch.Updated = append(ch.Updated, d.Name)
			if old.SQL != d.SQL || !slices.Equal(old.Columns, d.Columns) {
				ch.Backfill = append(ch.Backfill, d.Name)
			}
		}
	}
	for _, e := range existing {
		if keep[e.Name] {
			continue
		}
		if _, err := tx.Exec(ctx, `DELETE FROM matcol.enrichment WHERE name = $1`, e.Name); err != nil {
			return ch, fmt.Errorf("remove enrichment %s: %w", e.Name, err)
		}
		ch.Removed = append(ch.Removed, e.Name)
	}
	// A target with no enrichment left takes its queued invalidations with it. A template's
	// instance target stays while its table exists and a template still matches it. SQL
	// registration runs the same function.
	if _, err := tx.Exec(ctx, `SELECT matcol.remove_unused_targets()`); err != nil {
		return ch, fmt.Errorf("remove unused targets: %w", err)
	}
	return ch, nil
}

func syncDeps(ctx context.Context, tx pgx.Tx, d Enrichment) error {
	var keepIDs []int32
	for _, dep := range d.DependsOn {
		var id int32
		cols := dep.Columns
		if cols == nil {
			cols = []string{} // a static dependency lists none; the column is NOT NULL
		}
		err := tx.QueryRow(ctx, `
			INSERT INTO matcol.dependency (enrichment, source_schema, source_table, columns, sql, static)
			VALUES ($1, $2, $3, $4, nullif($5, ''), $6)
			ON CONFLICT (enrichment, source_schema, source_table, columns)
			DO UPDATE SET sql = excluded.sql, static = excluded.static
			RETURNING id`,
			d.Name, dep.Source.Schema, dep.Source.Name, cols, dep.SQL, dep.Static).Scan(&id)
		if err != nil {
			return fmt.Errorf("register dependency of %s on %s: %w", d.Name, dep.Source, err)
		}
		keepIDs = append(keepIDs, id)
	}
	// Queued invalidations of a removed dependency become whole-target invalidations: the rows
	// they named are stale, and without the mapping nobody knows which.
	_, err := tx.Exec(ctx, `
		WITH gone AS (DELETE FROM matcol.dependency WHERE enrichment = $1 AND NOT (id = ANY($2)) RETURNING id)
		UPDATE matcol.pending p SET dependency_id = NULL, vals = NULL FROM gone WHERE p.dependency_id = gone.id`,
		d.Name, keepIDs)
	if err != nil {
		return fmt.Errorf("remove old dependencies of %s: %w", d.Name, err)
	}
	return nil
}

func depsEqual(a, b []Dependency) bool {
	return slices.EqualFunc(a, b, func(x, y Dependency) bool {
		return x.Source == y.Source && slices.Equal(x.Columns, y.Columns) && x.SQL == y.SQL && x.Static == y.Static
	})
}

// EnsureTargets returns the target id of each table, registering the missing ones, in one
// statement however many there are. Template instances get their ids here.
func EnsureTargets(ctx context.Context, tx pgx.Tx, tables []pgident.Table) (map[pgident.Table]int, error) {
	out := make(map[pgident.Table]int, len(tables))
	if len(tables) == 0 {
		return out, nil
	}
	schemas := make([]string, len(tables))
	names := make([]string, len(tables))
	for i, t := range tables {
		schemas[i], names[i] = t.Schema, t.Name
	}
	rows, err := tx.Query(ctx, `
		WITH want AS (SELECT DISTINCT s, n FROM unnest($1::text[], $2::text[]) AS w(s, n)),
		ins AS (
			INSERT INTO matcol.target (schema_name, table_name)
			SELECT s, n FROM want WHERE NOT EXISTS (
				SELECT 1 FROM matcol.target t WHERE t.schema_name = want.s AND t.table_name = want.n)
			ORDER BY s, n
			ON CONFLICT (schema_name, table_name) DO NOTHING RETURNING id, schema_name, table_name)
		SELECT id, schema_name, table_name FROM ins
		UNION ALL
		SELECT t.id, t.schema_name, t.table_name FROM matcol.target t JOIN want ON t.schema_name = want.s AND t.table_name = want.n`,
		schemas, names)
	if err != nil {
		return nil, fmt.Errorf("register template targets: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int
		var t pgident.Table
		if err := rows.Scan(&id, &t.Schema, &t.Name); err != nil {
			return nil, fmt.Errorf("register template targets: %w", err)
		}
		out[t] = id
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("register template targets: %w", err)
	}
	for _, t := range tables {
		if _, ok := out[t]; !ok {
			return nil, fmt.Errorf("register template target %s: registered concurrently; retry", t)
		}
	}
	rows.Close()
	if inserted := rows.CommandTag().RowsAffected(); inserted > 100 {
		// The planner would otherwise take the table for empty in the rest of this transaction
		// (its first apply), and join thousands of targets with the catalog by nested scans.
		if _, err := tx.Exec(ctx, `ANALYZE matcol.target`); err != nil {
			return nil, fmt.Errorf("analyze matcol.target: %w", err)
		}
	}
	return out, nil
}
