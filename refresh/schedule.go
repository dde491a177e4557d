// Package refresh keeps the remaining materialized views fresh from a schedule in the registry
// (matcol.matview_schedule): due views are claimed with FOR UPDATE SKIP LOCKED, refreshed
// CONCURRENTLY where PostgreSQL allows it, retried with backoff after a failure, and every run is
// recorded in a bounded history (matcol.matview_execution).
package refresh

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/internal/pgident"
)

// Querier is the narrow database interface the schedule needs.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Source says who owns a schedule entry.
const (
	// SourceConfig entries are declared under matviews: and synced by apply, which removes them
	// when they leave the config.
	SourceConfig = "config"
	// SourceCLI entries are added with `matcol schedule add`; apply leaves them alone.
	SourceCLI = "cli"
)

// DefaultKeepExecutions is the history kept per view when none is set.
const DefaultKeepExecutions = 100

// Options are a view's schedule settings.
type Options struct {
	RefreshInterval time.Duration
	// MaximumExecutionDuration is the refresh's statement_timeout; 0 for none.
	MaximumExecutionDuration time.Duration
	SkipIfUnchanged          bool
	// KeepExecutions bounds the history. Defaults to DefaultKeepExecutions.
	KeepExecutions int
}

// View is one schedule entry and its state.
type View struct {
	ID     int
	Name   pgident.Table
	Source string
	Options
	NextDueAt           time.Time
	LastAttemptedAt     *time.Time
	LastSuccessAt       *time.Time
	LastError           string
	LastErrorAt         *time.Time
	ConsecutiveFailures int
	// LastMode is how the last execution ran: concurrently, plain or skipped.
	LastMode string
	Running  bool
	// Exists is false when the view was dropped or renamed after it was scheduled.
	Exists bool
}

// Changes lists what Sync did, by view name.
type Changes struct {
	Added, Updated, Removed []string
}

//go:embed list.sql
var listSQL string

//go:embed unscheduled.sql
var unscheduledSQL string

// List returns every schedule entry, ordered by name.
func List(ctx context.Context, q Querier) ([]View, error) {
	rows, err := q.Query(ctx, listSQL, lockClass)
	if err != nil {
		return nil, fmt.Errorf("list matview schedule: %w", err)
	}
	defer rows.Close()
	var out []View
	for rows.Next() {
		var v View
		var interval, maxDur float64
		if err := rows.Scan(&v.ID, &v.Name.Schema, &v.Name.Name, &v.Source, &interval, &maxDur,
			&v.SkipIfUnchanged, &v.KeepExecutions, &v.NextDueAt, &v.LastAttemptedAt, &v.LastSuccessAt,
			&v.LastError, &v.LastErrorAt, &v.ConsecutiveFailures, &v.Exists, &v.Running, &v.LastMode); err != nil {
			return nil, fmt.Errorf("list matview schedule: %w", err)
		}
		v.RefreshInterval = seconds(interval)
		v.MaximumExecutionDuration = seconds(maxDur)
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list matview schedule: %w", err)
	}
	return out, nil
}

// Unscheduled returns the materialized views that exist but are not scheduled.
func Unscheduled(ctx context.Context, q Querier) ([]pgident.Table, error) {
	rows, err := q.Query(ctx, unscheduledSQL)
	if err != nil {
		return nil, fmt.Errorf("find unscheduled matviews: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (pgident.Table, error) {
		var t pgident.Table
		err := r.Scan(&t.Schema, &t.Name)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("find unscheduled matviews: %w", err)
	}
	return out, nil
}

// Resolve finds the materialized view a user named: unqualified names go through search_path.
func Resolve(ctx context.Context, q Querier, name string) (pgident.Table, error) {
	t, err := pgident.ParseTable(name)
	if err != nil {
		return pgident.Table{}, err
	}
	ref := pgx.Identifier{t.Name}.Sanitize()
	if t.Schema != "" {
		ref = t.Sanitize()
	}
	var kind string
	err = q.QueryRow(ctx, `SELECT n.nspname, c.relname, c.relkind::text
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = to_regclass($1)`, ref).Scan(&t.Schema, &t.Name, &kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return pgident.Table{}, fmt.Errorf("materialized view %s does not exist", name)
	}
	if err != nil {
		return pgident.Table{}, fmt.Errorf("resolve materialized view %s: %w", name, err)
	}
	if kind != "m" {
		return pgident.Table{}, fmt.Errorf("%s is not a materialized view", t)
	}
	return t, nil
}

// Sync makes the config-owned schedule entries match the config's matviews, inside the caller's
// transaction (apply's). A view already added from the CLI becomes config-owned; entries added
// from the CLI and absent from the config are left alone. Every view that does not exist is
// named in the error.
func Sync(ctx context.Context, tx pgx.Tx, views []config.Matview) (Changes, error) {
	var ch Changes
	var problems []error
	want := map[pgident.Table]config.Matview{}
	for _, m := range views {
		t, err := Resolve(ctx, tx, m.Name)
		if err != nil {
			problems = append(problems, fmt.Errorf("matviews: %w", err))
			continue
		}
		if _, dup := want[t]; dup {
			problems = append(problems, fmt.Errorf("matviews: %s is listed twice", t))
		}
		want[t] = m
	}
	if err := errors.Join(problems...); err != nil {
		return ch, err
	}
	have, err := List(ctx, tx)
	if err != nil {
		return ch, err
	}
	existing := map[pgident.Table]View{}
	for _, v := range have {
		existing[v.Name] = v
		if _, ok := want[v.Name]; !ok && v.Source == SourceConfig {
			if _, err := tx.Exec(ctx, `DELETE FROM matcol.matview_schedule WHERE id = $1`, v.ID); err != nil {
				return ch, fmt.Errorf("unschedule %s: %w", v.Name, err)
			}
			ch.Removed = append(ch.Removed, v.Name.String())
		}
	}
	for _, m := range views {
		t, _ := Resolve(ctx, tx, m.Name)
		opts := Options{RefreshInterval: m.RefreshInterval, MaximumExecutionDuration: m.MaximumExecutionDuration,
			SkipIfUnchanged: m.SkipIfUnchanged, KeepExecutions: m.KeepExecutions}
		if opts.KeepExecutions == 0 {
			opts.KeepExecutions = DefaultKeepExecutions
		}
		old, ok := existing[t]
		if ok && old.Source == SourceConfig && old.Options == opts {
			continue
		}
		if err := upsert(ctx, tx, t, SourceConfig, opts); err != nil {
			return ch, err
		}
		if ok {
			ch.Updated = append(ch.Updated, t.String())
		} else {
			ch.Added = append(ch.Added, t.String())
		}
	}
	return ch, nil
}

// Add schedules a view from the CLI, or changes the settings of a CLI entry. A view declared in
// the config is refused: apply would undo the change.
func Add(ctx context.Context, q Querier, name string, opts Options) (pgident.Table, error) {
	t, err := Resolve(ctx, q, name)
	if err != nil {
		return t, err
	}
	if opts.RefreshInterval <= 0 {
		return t, errors.New("the refresh interval must be positive")
	}
	if opts.MaximumExecutionDuration < 0 || opts.KeepExecutions < 0 {
		return t, errors.New("the maximum execution duration and the history kept must not be negative")
	}
	if opts.KeepExecutions == 0 {
		opts.KeepExecutions = DefaultKeepExecutions
	}
	var source string
	err = q.QueryRow(ctx, `SELECT source FROM matcol.matview_schedule WHERE schema_name = $1 AND view_name = $2`,
		t.Schema, t.Name).Scan(&source)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return t, fmt.Errorf("schedule %s: %w", t, err)
	}
	if source == SourceConfig {
		return t, fmt.Errorf("%s is declared under matviews: in the config; change it there", t)
	}
	return t, upsert(ctx, q, t, SourceCLI, opts)
}

// upsert writes one entry. A changed interval moves the next due time earlier when the new one
// makes it due sooner, never later.
func upsert(ctx context.Context, q Querier, t pgident.Table, source string, o Options) error {
	_, err := q.Exec(ctx, `
		INSERT INTO matcol.matview_schedule AS s (schema_name, view_name, source, refresh_interval,
			maximum_execution_duration, skip_if_unchanged, keep_executions)
		VALUES ($1, $2, $3, make_interval(secs => $4), nullif(make_interval(secs => $5), interval '0'), $6, $7)
		ON CONFLICT (schema_name, view_name) DO UPDATE SET
			source = excluded.source,
			refresh_interval = excluded.refresh_interval,
			maximum_execution_duration = excluded.maximum_execution_duration,
			skip_if_unchanged = excluded.skip_if_unchanged,
			keep_executions = excluded.keep_executions,
			next_due_at = CASE WHEN s.consecutive_failures > 0 THEN s.next_due_at
				ELSE least(s.next_due_at, coalesce(s.last_attempted_at, now()) + excluded.refresh_interval) END,
			updated_at = now()`,
		t.Schema, t.Name, source, o.RefreshInterval.Seconds(), o.MaximumExecutionDuration.Seconds(),
		o.SkipIfUnchanged, o.KeepExecutions)
	if err != nil {
		return fmt.Errorf("schedule %s: %w", t, err)
	}
	return nil
}

// Remove unschedules a view and drops its history. Config-owned entries are refused: apply would
// add them back. The name is matched as stored, so a dropped view can still be removed.
func Remove(ctx context.Context, q Querier, name string) (pgident.Table, error) {
	t, err := pgident.ParseTable(name)
	if err != nil {
		return t, err
	}
	if t.Schema == "" {
		if t, err = Resolve(ctx, q, name); err != nil {
			return t, err
		}
	}
	var source string
	err = q.QueryRow(ctx, `DELETE FROM matcol.matview_schedule WHERE schema_name = $1 AND view_name = $2
		AND source <> $3 RETURNING source`, t.Schema, t.Name, SourceConfig).Scan(&source)
	if errors.Is(err, pgx.ErrNoRows) {
		err = q.QueryRow(ctx, `SELECT source FROM matcol.matview_schedule WHERE schema_name = $1 AND view_name = $2`,
			t.Schema, t.Name).Scan(&source)
		if err == nil {
			return t, fmt.Errorf("%s is declared under matviews: in the config; remove it there", t)
		}
		if errors.Is(err, pgx.ErrNoRows) {
			return t, fmt.Errorf("%s is not scheduled", t)
		}
	}
	if err != nil {
		return t, fmt.Errorf("unschedule %s: %w", t, err)
	}
	return t, nil
}

// MarkDue makes a view due now, for a running daemon to pick up.
func MarkDue(ctx context.Context, q Querier, t pgident.Table) error {
	tag, err := q.Exec(ctx, `UPDATE matcol.matview_schedule SET next_due_at = now()
		WHERE schema_name = $1 AND view_name = $2`, t.Schema, t.Name)
	if err != nil {
		return fmt.Errorf("mark %s due: %w", t, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s is not scheduled", t)
	}
	return nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
