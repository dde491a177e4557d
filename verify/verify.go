// Package verify recomputes enrichments without writing and reports every stored value that
// differs from a fresh computation.
package verify

import (
	"context"
	"fmt"
	"slices"
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
	// IncludeStale also compares rows whose materialized_at is NULL, and rows whose key waits in
	// matcol.pending. Defaults to false: those are known stale and waiting for matcol.
	IncludeStale bool
	// Settle: values that differ are compared again once the invalidations queued for their
	// tables when they were found have been applied (a change committed a moment before, a drain
	// that has yet to map it), waiting this long at most. 0 reports them as found.
	Settle time.Duration
	// Note, if set, is told what the second look did.
	Note func(msg string)
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
	if len(out) > 0 && opts.Settle > 0 && !opts.IncludeStale {
		var err error
		if out, err = recheck(ctx, q, p, out, opts); err != nil {
			return nil, checked, err
		}
	}
	return out, checked, nil
}

// recheck compares the rows of drift again once the invalidations queued for their tables have
// been applied, or opts.Settle has passed, and returns what still differs. A row can differ for
// a moment without anything wrong: its change committed, and its invalidation is still on its way
// (mapped by the drainer, or decoded and flushed by the logical listener).
func recheck(ctx context.Context, q Querier, p *plan.Plan, drift []Drift, opts Options) ([]Drift, error) {
	groups, err := groupDrift(p, drift)
	if err != nil {
		return nil, err
	}
	targets := make([]int32, 0, len(groups))
	for _, g := range groups {
		if !slices.Contains(targets, int32(g.t.ID)) {
			targets = append(targets, int32(g.t.ID))
		}
	}
	left, err := settle(ctx, q, targets, opts.Settle)
	if err != nil {
		return nil, err
	}
	var out []Drift
	for _, g := range groups {
		args := make([]any, len(g.keys), len(g.keys)+1)
		for i, col := range g.keys {
			args[i] = plan.ArrayLiteral(col)
		}
		d, err := compare(ctx, q, g.t, g.e, compareSQL(g.t, g.e, true), append(args, g.t.ID))
		if err != nil {
			return nil, fmt.Errorf("verify %s on %s again: %w", g.e.Name, g.t.Table, err)
		}
		out = append(out, d...)
	}
	if opts.Note != nil {
		msg := fmt.Sprintf("%d values differed and were compared again", len(drift))
		if left > 0 {
			msg += fmt.Sprintf(", with %d invalidations of their tables still queued after %s (is matcol running, paused or throttled?)", left, opts.Settle)
		} else {
			msg += " once the invalidations queued for their tables had been applied"
		}
		opts.Note(fmt.Sprintf("%s: %d still differ", msg, len(out)))
	}
	return out, nil
}

// driftGroup is the rows of one enrichment that differed: keys[i] holds key column i.
type driftGroup struct {
	t    *plan.Target
	e    *plan.Enrichment
	keys [][]*string
}

func groupDrift(p *plan.Plan, drift []Drift) ([]*driftGroup, error) {
	byName := map[[2]string]*driftGroup{}
	seen := map[string]bool{}
	var out []*driftGroup
	for _, d := range drift {
		g := byName[[2]string{d.Table, d.Enrichment}]
		if g == nil {
			for _, t := range p.Targets {
				for _, e := range t.Enrichments {
					if t.Table.String() == d.Table && e.Name == d.Enrichment {
						g = &driftGroup{t: t, e: e, keys: make([][]*string, len(t.Key))}
					}
				}
			}
			if g == nil {
				return nil, fmt.Errorf("verify: drift on %s for %s, which the plan does not have", d.Table, d.Enrichment)
			}
			byName[[2]string{d.Table, d.Enrichment}] = g
			out = append(out, g)
		}
		// One row per key: a row differs in as many values as columns.
		if id := d.Table + "\x00" + d.Enrichment + "\x00" + strings.Join(d.Key, "\x00"); !seen[id] {
			seen[id] = true
			for i := range d.Key {
				g.keys[i] = append(g.keys[i], &d.Key[i])
			}
		}
	}
	return out, nil
}

// settle waits, up to limit, until the invalidations queued for targets other than target keys
// have been applied, after a moment for changes committed and not yet queued (logical mode
// flushes its queue every 100 ms); it returns how many of them are still queued. Queued keys
// need no wait: the comparison leaves their rows out.
func settle(ctx context.Context, q Querier, targets []int32, limit time.Duration) (int64, error) {
	upTo, err := queuedUpTo(ctx, q, targets)
	if err != nil {
		return 0, err
	}
	deadline := time.Now().Add(limit)
	pause := min(time.Second, limit)
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(pause):
		}
		left, err := queuedLeft(ctx, q, targets, upTo)
		if err != nil || left == 0 || !time.Now().Before(deadline) {
			return left, err
		}
		pause = 100 * time.Millisecond
	}
}

// directEntry picks target keys, whose rows the comparison leaves out while they wait; the
// second look waits for the other entries (source values, markers, every row).
const directEntry = "coalesce(" + plan.DirectEntrySQL + ", false)"

func queuedUpTo(ctx context.Context, q Querier, targets []int32) (int64, error) {
	return readInt(ctx, q, `SELECT coalesce(max(id), 0) FROM matcol.pending WHERE target_id = ANY($1) AND NOT (`+directEntry+`)`, targets)
}

func queuedLeft(ctx context.Context, q Querier, targets []int32, upTo int64) (int64, error) {
	return readInt(ctx, q, `SELECT count(*) FROM matcol.pending WHERE target_id = ANY($1) AND id <= $2 AND NOT (`+directEntry+`)`, targets, upTo)
}

func readInt(ctx context.Context, q Querier, sql string, args ...any) (int64, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return 0, fmt.Errorf("verify: read the queue: %w", err)
	}
	n, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, fmt.Errorf("verify: read the queue: %w", err)
	}
	return n, nil
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
	cmp := compareSQL(t, e, !opts.IncludeStale)
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
		args := make([]any, len(keys), len(keys)+1)
		for i, col := range keys {
			args[i] = plan.ArrayLiteral(col)
		}
		if !opts.IncludeStale {
			args = append(args, t.ID)
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
// without an equality operator compare too. With fresh, only rows matcol holds fresh: stamped,
// and no key of theirs queued ($n+1 is the target's id), both read in the comparison's snapshot.
// A queued key is matched as text, in the form either mode writes it (to_jsonb's in trigger
// mode, the type's text output in logical mode), which never fails the way a cast could.
func compareSQL(t *plan.Target, e *plan.Enrichment, fresh bool) string {
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
	only := ""
	if fresh {
		// One anti-join per form, each an equality the planner can hash: a big queue is read once
		// per chunk, not once per row.
		only = "\n  AND s.materialized_at IS NOT NULL"
		for _, form := range []string{"k.%s::text", "jsonb_build_array(k.%s)->>0"} {
			queued := make([]string, len(t.Key))
			for i, k := range t.Key {
				queued[i] = fmt.Sprintf("p.vals->>%d = "+form, i, id(k.Name))
			}
			// DirectEntrySQL's bare names resolve to p, the innermost FROM, as in the queue's own SQL.
			only += fmt.Sprintf("\n  AND NOT EXISTS (SELECT FROM matcol.pending p WHERE p.target_id = $%d AND %s AND %s)",
				len(t.Key)+1, plan.DirectEntrySQL, strings.Join(queued, " AND "))
		}
	}
	return fmt.Sprintf(`WITH f AS (%s)
SELECT ARRAY[%s], c.col, c.stored, c.fresh
FROM unnest(%s) AS k(%s)
JOIN %s AS s ON %s
LEFT JOIN f ON %s
CROSS JOIN LATERAL (VALUES %s) AS c(col, stored, fresh)
WHERE c.stored IS DISTINCT FROM c.fresh%s
ORDER BY 1, 2`,
		strings.TrimRight(strings.TrimSpace(e.SQL), "; \t\n"), strings.Join(keyText, ", "),
		strings.Join(params, ", "), strings.Join(keyNames, ", "),
		t.Table.Sanitize(), strings.Join(join, " AND "), strings.Join(fjoin, " AND "), strings.Join(checks, ", "), only)
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
