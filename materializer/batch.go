package materializer

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/plan"
)

// batch claims up to batchSize stale rows of t, computes them and stamps them, in one short
// transaction of two statements: the claim takes the row locks, and the write's later snapshot
// then sees every change committed before them.
func (m *Materializer) batch(ctx context.Context, t *target) (int, error) {
	// Once started, a batch finishes even if ctx ends: rolling back would waste its work, and
	// statement_timeout bounds it anyway.
	bctx := context.WithoutCancel(ctx)
	start := time.Now()
	conn, err := m.pool.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Release()
	tx, err := conn.Begin(bctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(bctx) //nolint:errcheck // no-op after commit
	s := t.plan.Enrichments[0].Settings
	if _, err := tx.Exec(bctx, `SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true),
		set_config('work_mem', coalesce(nullif($3, ''), current_setting('work_mem')), true)`,
		ms(s.StatementTimeout, 30*time.Second), ms(s.LockTimeout, 5*time.Second), s.WorkMem); err != nil {
		return 0, fmt.Errorf("set batch settings: %w", err)
	}
	m.mu.Lock() // resize writes it from other workers on the same target
	size := t.batchSize
	m.mu.Unlock()
	keys, err := claim(bctx, tx, t.claimSQL, len(t.plan.Key), size)
	if err != nil {
		return 0, fmt.Errorf("claim stale rows of %s: %w", t.plan.Table, err)
	}
	n := len(keys[0])
	if n == 0 {
		return 0, tx.Commit(bctx)
	}
	if _, err := tx.Exec(bctx, t.writeSQL, keyArgs(keys)...); err != nil {
		return 0, fmt.Errorf("materialize %d rows of %s: %w", n, t.plan.Table, err)
	}
	if err := tx.Commit(bctx); err != nil {
		return 0, fmt.Errorf("commit batch of %s: %w", t.plan.Table, err)
	}
	d := time.Since(start)
	m.Stats.RowsMaterialized.Add(int64(n))
	m.Stats.Batches.Add(1)
	m.Stats.LastBatchNanos.Store(int64(d))
	m.resize(t, n, d)
	return n, nil
}

// resize steers the batch size toward the target duration, which bounds how long rows stay
// locked: shrink fast when a batch runs long, grow gently when full batches run short.
func (m *Materializer) resize(t *target, n int, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	goal := m.cfg.TargetBatchDuration
	switch {
	case d > goal*3/2 && t.batchSize > 1:
		t.batchSize = max(1, t.batchSize*2/3)
	case d < goal/2 && n >= t.batchSize && t.batchSize < 20000:
		t.batchSize = min(20000, t.batchSize*5/4+1)
	}
}

func ms(d, def time.Duration) string {
	if d <= 0 {
		d = def
	}
	return fmt.Sprintf("%dms", d.Milliseconds())
}

// claim runs a claim or lock statement and returns the keys it got, column by column, as text.
func claim(ctx context.Context, tx pgx.Tx, sql string, width int, args ...any) ([][]*string, error) {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	keys := make([][]*string, width)
	dest := make([]any, width)
	for rows.Next() {
		vals := make([]*string, width)
		for i := range vals {
			dest[i] = &vals[i]
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		for i, v := range vals {
			keys[i] = append(keys[i], v)
		}
	}
	return keys, rows.Err()
}

// keyArgs renders key columns as array literals; the server parses them as the key types.
func keyArgs(keys [][]*string) []any {
	args := make([]any, len(keys))
	for i, col := range keys {
		args[i] = plan.ArrayLiteral(col)
	}
	return args
}
