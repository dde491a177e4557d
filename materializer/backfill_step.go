package materializer

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/matcol/matcol/plan"
)

// span is one batch of a backfill: the keys after lo (nil: from the start) up to and including
// hi (nil: no bound), at most limit of them (0: no limit).
type span struct {
	lo, hi []*string
	limit  int
}

// args are the parameters of the plan statements over a range (plan.RangeKeysSQL and others).
func (s span) args(width int) []any {
	args := make([]any, 0, 2*width+3)
	for _, bound := range [][]*string{s.lo, s.hi} {
		for i := 0; i < width; i++ {
			if bound == nil {
				args = append(args, nil)
			} else {
				args = append(args, bound[i])
			}
		}
		args = append(args, bound != nil)
	}
	if s.limit > 0 {
		return append(args, s.limit)
	}
	return append(args, nil)
}

// filled is what fill did with a span.
type filled struct {
	n       int
	last    []*string
	skipped [][]*string // keys of rows that changed under the batch
	failed  int64
}

// fill writes one span in its own transaction on conn. checkpoint, when set, runs in that
// transaction with the result. The fast path is plan.BackfillStepSQL, one statement; when it
// fails on the data of some rows, fill reads the span's keys and writes them with bisection.
func (b *Backfill) fill(ctx context.Context, conn *pgx.Conn, s span, checkpoint func(pgx.Tx, filled) error) (filled, error) {
	var f filled
	if b.stepSQL != "" && !b.noStep.Load() {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			f = filled{}
			if err := b.step(ctx, tx, s, &f); err != nil || f.n == 0 || checkpoint == nil {
				return err
			}
			return checkpoint(tx, f)
		})
		var pe *pgconn.PgError
		switch {
		case err == nil:
			return f, nil
		case errors.As(err, &pe) && strings.HasPrefix(pe.Code, "42"):
			// The rewritten enrichment does not plan (a $n where it cannot take a subquery, say):
			// the keys travel as parameters from now on.
			b.noStep.Store(true)
			b.log.Info("backfill reads each batch's keys first", "reason", err)
		case !isRowError(err):
			return f, err
		}
	}
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		f = filled{}
		if err := b.settings(ctx, tx, ""); err != nil {
			return err
		}
		width := len(b.spec.Target.Key)
		rows, err := claim(ctx, tx, b.rangeSQL, width+1, s.args(width)...)
		if err != nil {
			return fmt.Errorf("read next keys: %w", err)
		}
		if f.n = len(rows[0]); f.n == 0 {
			return nil
		}
		f.last = keyAt(rows[:width], f.n-1)
		if f.skipped, f.failed, err = b.write(ctx, tx, rows); err != nil {
			return err
		}
		if checkpoint == nil {
			return nil
		}
		return checkpoint(tx, f)
	})
	return f, err
}

// step runs the one-statement batch. Rows it skipped are the span's rows this transaction has
// not written, read only when it wrote fewer rows than it read; no savepoint, so that a written
// row carries this transaction's own xid.
func (b *Backfill) step(ctx context.Context, tx pgx.Tx, s span, f *filled) error {
	t := b.spec.Target
	width := len(t.Key)
	// The planner takes the enrichment's output over an array it cannot see for ten rows, and
	// would join it to the batch's keys by rescanning a copy of it for each key.
	if err := b.settings(ctx, tx, `, set_config('enable_material', 'off', true)`); err != nil {
		return err
	}
	var written int
	f.last = make([]*string, width)
	dest := []any{&f.n, &written}
	for i := range f.last {
		dest = append(dest, &f.last[i])
	}
	if err := tx.QueryRow(ctx, b.stepSQL, s.args(width)...).Scan(dest...); err != nil {
		return err
	}
	if f.n == 0 || written == f.n {
		return nil
	}
	keys, err := claim(ctx, tx, plan.NotWrittenSQL(t, b.spec.Where), width, span{lo: s.lo, hi: f.last}.args(width)...)
	if err != nil {
		return fmt.Errorf("read skipped rows: %w", err)
	}
	for i := range keys[0] {
		f.skipped = append(f.skipped, keyAt(keys, i))
	}
	return nil
}

// settings sets a backfill transaction's limits (and extra settings, a list of columns that
// starts with a comma) and checks that the registry has not changed since the backfill's plan.
func (b *Backfill) settings(ctx context.Context, tx pgx.Tx, extra string) error {
	var locked bool
	var version int64
	sql := batchSettingsSQL + extra + ", " + gateSQL
	dest := []any{nil, nil, nil, nil, nil}
	if extra != "" {
		dest = append(dest, nil)
	}
	if err := tx.QueryRow(ctx, sql, settingsArgs(b.spec.Target)...).Scan(append(dest, &locked, &version)...); err != nil {
		return err
	}
	if b.spec.PlanVersion == 0 || (locked && version == b.spec.PlanVersion) {
		return nil
	}
	if !locked {
		return errBusyPlan
	}
	return ErrPlanChanged
}
