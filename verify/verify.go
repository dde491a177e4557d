// Package verify recomputes enrichments without writing and reports every stored value that
// differs from a fresh computation.
package verify

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/plan"
)

// Drift is one stored value that differs from a fresh computation.
type Drift struct {
	Enrichment string   `json:"enrichment"`
	Table      string   `json:"table"`
	Key        []string `json:"key"`
	Column     string   `json:"column"`
	Stored     *string  `json:"stored"`
	Fresh      *string  `json:"fresh"`
}

// Options tune a verification.
type Options struct {
	// Enrichment limits the check to one enrichment; empty checks all.
	Enrichment string
	// Sample checks this many random rows per table; 0 checks every row.
	Sample int
	// RowsPerSecond caps the pace; 0 means no cap.
	RowsPerSecond int
	// IncludeStale also compares rows whose materialized_at is NULL. Defaults to false: those are
	// known stale and waiting for matcol.
	IncludeStale bool
	// Chunk is the rows per statement. Defaults to 1000.
	Chunk int
	// Progress, if set, is called after each chunk with rows checked so far.
	Progress func(table string, rows int)
}

// Querier is what verify needs.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Run checks p's enrichments and returns the drift it found.
func Run(ctx context.Context, q Querier, p *plan.Plan, opts Options) ([]Drift, int, error) {
	if opts.Chunk <= 0 {
		opts.Chunk = 1000
	}
	var out []Drift
	checked := 0
	found := opts.Enrichment == ""
	for _, t := range p.Targets {
		for _, e := range t.Enrichments {
			if opts.Enrichment != "" && e.Name != opts.Enrichment {
				continue
			}
			found = true
			d, n, err := runOne(ctx, q, t, e, opts)
			if err != nil {
				return nil, checked, err
			}
			out = append(out, d...)
			checked += n
		}
	}
	if !found {
		return nil, 0, fmt.Errorf("no enrichment named %q is registered", opts.Enrichment)
	}
	return out, checked, nil
}

func runOne(ctx context.Context, q Querier, t *plan.Target, e *plan.Enrichment, opts Options) ([]Drift, int, error) {
	where := "materialized_at IS NOT NULL"
	if opts.IncludeStale {
		where = ""
	}
	var keysSQL string
	if opts.Sample > 0 {
		texts := make([]string, len(t.Key))
		for i, k := range t.Key {
			texts[i] = pgx.Identifier{k.Name}.Sanitize() + "::text"
		}
		w := ""
		if where != "" {
			w = " WHERE " + where
		}
		keysSQL = fmt.Sprintf("SELECT %s FROM %s%s ORDER BY random() LIMIT %d", strings.Join(texts, ", "), t.Table.Sanitize(), w, opts.Sample)
	}
	cmp := compareSQL(t, e)
	var out []Drift
	checked := 0
	start := time.Now()
	cursor := make([]any, len(t.Key)+2)
	cursor[len(t.Key)] = false
	cursor[len(t.Key)+1] = opts.Chunk
	for {
		var keys [][]*string
		var err error
		if keysSQL != "" {
			keys, err = collect(ctx, q, keysSQL, len(t.Key))
		} else {
			keys, err = collect(ctx, q, plan.NextKeysSQL(t, where), len(t.Key), cursor...)
		}
		if err != nil {
			return nil, checked, fmt.Errorf("verify %s: read keys: %w", e.Name, err)
		}
		n := len(keys[0])
		if n == 0 {
			return out, checked, nil
		}
		args := make([]any, len(keys))
		for i, col := range keys {
			args[i] = plan.ArrayLiteral(col)
		}
		drift, err := compare(ctx, q, t, e, cmp, args)
		if err != nil {
			return nil, checked, fmt.Errorf("verify %s on %s: %w", e.Name, t.Table, err)
		}
		out = append(out, drift...)
		checked += n
		if opts.Progress != nil {
			opts.Progress(t.Table.String(), checked)
		}
		if keysSQL != "" || n < opts.Chunk {
			return out, checked, nil
		}
		for i := range t.Key {
			cursor[i] = *keys[i][n-1]
		}
		cursor[len(t.Key)] = true
		if opts.RowsPerSecond > 0 {
			due := time.Duration(float64(checked) / float64(opts.RowsPerSecond) * float64(time.Second))
			if wait := due - time.Since(start); wait > 0 {
				select {
				case <-ctx.Done():
					return nil, checked, ctx.Err()
				case <-time.After(wait):
				}
			}
		}
	}
}

// compare runs the comparison; a template instance's runs in a transaction with search_path set
// to its schema, as its batches do.
func compare(ctx context.Context, q Querier, t *plan.Target, e *plan.Enrichment, cmp string, args []any) ([]Drift, error) {
	run := func(q Querier) ([]Drift, error) {
		rows, err := q.Query(ctx, cmp, args...)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Drift, error) {
			d := Drift{Enrichment: e.Name, Table: t.Table.String()}
			return d, row.Scan(&d.Key, &d.Column, &d.Stored, &d.Fresh)
		})
	}
	if t.SearchPath == "" {
		return run(q)
	}
	b, ok := q.(interface {
		Begin(context.Context) (pgx.Tx, error)
	})
	if !ok {
		return nil, fmt.Errorf("a template instance needs a connection that can begin a transaction")
	}
	tx, err := b.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read-only
	if _, err := tx.Exec(ctx, `SELECT set_config('search_path', $1, true)`, t.SearchPath); err != nil {
		return nil, err
	}
	return run(tx)
}

// compareSQL returns one row per (key, column) whose stored value differs from the fresh one.
// Both sides are compared as text after the fresh value is cast to the column's type, so types
// without an equality operator compare too.
func compareSQL(t *plan.Target, e *plan.Enrichment) string {
	id := func(s string) string { return pgx.Identifier{s}.Sanitize() }
	keyText := make([]string, len(t.Key))
	join := make([]string, len(t.Key))
	fjoin := make([]string, len(t.Key))
	for i, k := range t.Key {
		keyText[i] = "k." + id(k.Name) + "::text"
		join[i] = fmt.Sprintf("s.%s = k.%s", id(k.Name), id(k.Name))
		fjoin[i] = fmt.Sprintf("f.%s = k.%s", id(k.Name), id(k.Name))
	}
	var checks []string
	for _, c := range e.Columns {
		typ := columnType(t, c)
		checks = append(checks, fmt.Sprintf("(%s, s.%s::text, (f.%s::%s)::text)", literal(c), id(c), id(c), typ))
	}
	params := make([]string, len(t.Key))
	for i, k := range t.Key {
		params[i] = fmt.Sprintf("$%d::%s[]", i+1, k.Type)
	}
	keyNames := make([]string, len(t.Key))
	for i, k := range t.Key {
		keyNames[i] = id(k.Name)
	}
	return fmt.Sprintf(`WITH f AS (%s)
SELECT ARRAY[%s], c.col, c.stored, c.fresh
FROM unnest(%s) AS k(%s)
JOIN %s AS s ON %s
LEFT JOIN f ON %s
CROSS JOIN LATERAL (VALUES %s) AS c(col, stored, fresh)
WHERE c.stored IS DISTINCT FROM c.fresh
ORDER BY 1, 2`,
		strings.TrimRight(strings.TrimSpace(e.SQL), "; \t\n"), strings.Join(keyText, ", "),
		strings.Join(params, ", "), strings.Join(keyNames, ", "),
		t.Table.Sanitize(), strings.Join(join, " AND "), strings.Join(fjoin, " AND "), strings.Join(checks, ", "))
}

func columnType(t *plan.Target, name string) string {
	for _, c := range t.Columns {
		if c.Name == name {
			return c.Type
		}
	}
	return "text"
}

func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func collect(ctx context.Context, q Querier, sql string, width int, args ...any) ([][]*string, error) {
	return plan.CollectKeys(ctx, q, sql, width, args...)
}
