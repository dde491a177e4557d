package materializer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/matcol/matcol/plan"
)

// isolate splits a failed batch in halves until the failing rows are alone, writes every other
// row, and quarantines the failing ones: they stay stale and are retried with backoff
// (DESIGN invariant 6). It returns the rows written.
func (m *Materializer) isolate(ctx context.Context, t *target, keys [][]*string, cause error) (int, error) {
	n := len(keys[0])
	if n == 1 {
		return 0, m.quarantine(ctx, t, keys, cause)
	}
	half := n / 2
	total := 0
	for _, part := range [][][]*string{slice(keys, 0, half), slice(keys, half, n)} {
		w, err := m.retryKeys(ctx, t, part)
		if err == nil {
			total += w
			continue
		}
		if !isRowError(err) {
			return total, err
		}
		w, err = m.isolate(ctx, t, part, err)
		total += w
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func slice(keys [][]*string, from, to int) [][]*string {
	out := make([][]*string, len(keys))
	for i := range keys {
		out[i] = keys[i][from:to]
	}
	return out
}

// retryKeys claims the given keys again (those still stale and free) and writes them.
func (m *Materializer) retryKeys(ctx context.Context, t *target, keys [][]*string) (int, error) {
	start := time.Now()
	n := 0
	err := pgx.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		var locked bool
		var version int64
		if err := tx.QueryRow(ctx, batchSettingsSQL+", "+gateSQL, settingsArgs(t.plan)...).Scan(nil, nil, nil, nil, nil, &locked, &version); err != nil {
			return err
		}
		if err := m.gate(locked, version, t.version); err != nil {
			return err
		}
		got, err := claim(ctx, tx, plan.ClaimKeysSQL(t.plan), len(t.plan.Key), keyArgs(keys)...)
		if err != nil {
			return err
		}
		if n = len(got[0]); n == 0 {
			return nil
		}
		return m.write(ctx, tx, t, got)
	})
	if err != nil {
		return 0, err
	}
	if n > 0 {
		m.done(t, n, n, time.Since(start))
	}
	return n, nil
}

// quarantine records a failing row. The enrichment at fault is found by running each alone.
func (m *Materializer) quarantine(ctx context.Context, t *target, keys [][]*string, cause error) error {
	culprit := ""
	msg := cause.Error()
	if len(t.plan.Enrichments) > 1 {
		var err error
		if culprit, msg, err = m.culprit(ctx, t, keys); err != nil {
			return err
		}
		if culprit == "" {
			msg = cause.Error()
		}
	} else {
		culprit = t.plan.Enrichments[0].Name
	}
	var pe *pgconn.PgError
	if errors.As(cause, &pe) && culprit != "" {
		msg = fmt.Sprintf("%s (SQLSTATE %s)", pe.Message, pe.Code)
	}
	key := make([]string, len(keys))
	for i := range keys {
		if keys[i][0] != nil {
			key[i] = *keys[i][0]
		}
	}
	var attempts int
	err := m.pool.QueryRow(ctx, `
		INSERT INTO matcol.failure AS f (target_id, key, enrichment, error, next_attempt_at)
		VALUES ($1, $2, nullif($3, ''), $4, now() + interval '30 seconds')
		ON CONFLICT (target_id, key) DO UPDATE SET enrichment = excluded.enrichment, error = excluded.error,
			attempts = f.attempts + 1, last_seen_at = now(),
			next_attempt_at = now() + least(interval '30 seconds' * power(2, f.attempts), interval '1 hour')
		RETURNING attempts`, t.plan.ID, key, culprit, msg).Scan(&attempts)
	if err != nil {
		return fmt.Errorf("record failure of %s %v: %w", t.plan.Table, key, err)
	}
	m.Stats.RowsFailed.Add(1)
	m.log.Warn("row quarantined after its enrichment failed", "table", t.plan.Table.String(), "key", key,
		"enrichment", culprit, "attempts", attempts, "error", msg)
	return nil
}

// culprit runs each enrichment of t alone for keys, as a batch would (same timeouts and
// settings, rolled back), and returns the first that fails with its error, or "" if none does.
// A stop cancels it: the rows stay stale for the next start.
func (m *Materializer) culprit(ctx context.Context, t *target, keys [][]*string) (string, string, error) {
	for _, e := range t.plan.Enrichments {
		var failed error
		err := pgx.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, batchSettingsSQL, settingsArgs(t.plan)...); err != nil {
				return err
			}
			_, failed = tx.Exec(ctx, plan.WriteSQL(t.plan, []*plan.Enrichment{e}, false), keyArgs(keys)...)
			return errRollback
		})
		if ctx.Err() != nil {
			return "", "", ctx.Err()
		}
		if err != nil && !errors.Is(err, errRollback) {
			return "", "", fmt.Errorf("find the failing enrichment of %s: %w", t.plan.Table, err)
		}
		if failed != nil {
			return e.Name, failed.Error(), nil
		}
	}
	return "", "", nil
}

var errRollback = errors.New("rollback")

// noRowCauses reports whether an error code means the statement cannot run for any row: matcol's
// role lacks a privilege, or the SQL names something that does not exist (dropped or renamed
// since apply). Isolating such an error would quarantine every row, one at a time; the batch
// fails and backs off instead. (A row's text cast to regclass can raise 42P01 too; such a row
// stops its batch until it is fixed.)
func noRowCauses(code string) bool {
	switch code {
	case "42501", // insufficient_privilege
		"42601", // syntax_error
		"42P01", // undefined_table
		"42703", // undefined_column
		"42883", // undefined_function
		"42704": // undefined_object
		return true
	}
	return false
}
