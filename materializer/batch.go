package materializer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/plan"
)

// batch claims up to batchSize stale rows of t, computes them and stamps them, in one short
// transaction of two statements: the claim takes the row locks, and the write's later snapshot
// then sees every change committed before them. A batch whose write fails is split until the
// failing rows are isolated and quarantined; the others are written. full reports that the claim
// got as many rows as it asked for, so more may be waiting.
func (m *Materializer) batch(ctx context.Context, t *target) (n int, full bool, err error) {
	// Once started, a batch finishes even if ctx ends: rolling back would waste its work, and
	// statement_timeout bounds it anyway.
	bctx := context.WithoutCancel(ctx)
	start := time.Now()
	conn, err := m.pool.Acquire(ctx)
	if err != nil {
		return 0, false, err
	}
	defer conn.Release()
	tx, err := conn.Begin(bctx)
	if err != nil {
		return 0, false, err
	}
	defer tx.Rollback(bctx) //nolint:errcheck // no-op after commit
	var seq, version int64
	var locked bool
	if err := tx.QueryRow(bctx, batchSettingsSQL+`, (SELECT drain_seq FROM matcol.target WHERE id = $6), `+gateSQL,
		append(settingsArgs(t.plan), t.plan.ID)...).Scan(nil, nil, nil, nil, nil, &seq, &locked, &version); err != nil {
		return 0, false, fmt.Errorf("set batch settings: %w", err)
	}
	if err := m.gate(locked, version, t.version); err != nil {
		return 0, false, err
	}
	m.mu.Lock() // resize writes it from other workers on the same target
	size := t.batchSize
	m.mu.Unlock()
	keys, err := claim(bctx, tx, t.claimSQL, len(t.plan.Key), size, t.plan.ID)
	if err != nil {
		return 0, false, fmt.Errorf("claim stale rows of %s: %w", t.plan.Table, err)
	}
	claimed := len(keys[0])
	full = claimed >= size
	if full {
		// More may wait: another worker claims beside this one while it computes, rather than
		// after it commits.
		m.noteFullClaim(t)
	}
	held := false
	if !full && t.minInterval > 0 {
		// Rows the claim passed over for min_interval come due without any new invalidation.
		if held, err = m.wakeWhenDue(bctx, tx, t); err != nil {
			return 0, false, fmt.Errorf("read held rows of %s: %w", t.plan.Table, err)
		}
	}
	if claimed == 0 {
		// Caught up: the target has no stale row left, unless a drain committed meanwhile.
		if !held {
			if _, err := tx.Exec(bctx, `UPDATE matcol.target SET stale_since = NULL
				WHERE id = $1 AND drain_seq = $2 AND stale_since IS NOT NULL`, t.plan.ID, seq); err != nil {
				return 0, false, err
			}
		}
		return 0, false, tx.Commit(bctx)
	}
	if err := m.write(bctx, tx, t, keys); err != nil {
		if dial.IsConnectionError(err) || !isRowError(err) {
			return 0, false, fmt.Errorf("materialize %d rows of %s: %w", claimed, t.plan.Table, err)
		}
		_ = tx.Rollback(bctx)
		conn.Release()
		// Isolating may take many statements: a stop interrupts it, leaving the rows stale.
		n, err = m.isolate(ctx, t, keys, err)
		return n, full, err
	}
	if err := tx.Commit(bctx); err != nil {
		return 0, false, fmt.Errorf("commit batch of %s: %w", t.plan.Table, err)
	}
	m.noteMaterialized(t, keys)
	m.done(t, size, claimed, time.Since(start))
	m.log.Trace("batch", "table", t.plan.Table.String(), "rows", claimed, "size", size, "elapsed", time.Since(start))
	return claimed, full, nil
}

// noteFullClaim records that a claim got all it asked for, so that another worker, up to the
// table's cap, claims beside it (see next).
func (m *Materializer) noteFullClaim(t *target) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setMoreLocked(t, true)
	t.claim = true
	m.pushLocked(t)
}

// write computes and stamps the claimed keys and clears their failure records.
func (m *Materializer) write(ctx context.Context, tx pgx.Tx, t *target, keys [][]*string) error {
	return m.writeWith(ctx, tx, t, keys, t.writeSQL)
}

// writeWith is write with another write statement, such as a pass's (plan.PassWriteSQL).
func (m *Materializer) writeWith(ctx context.Context, tx pgx.Tx, t *target, keys [][]*string, sql string) error {
	args := keyArgs(keys)
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	// In the same round trip; probing the small failure table costs less than tracking which keys
	// were quarantined.
	b.Queue(plan.ClearFailuresSQL(t.plan), append([]any{t.plan.ID}, args...)...)
	if t.minInterval > 0 {
		b.Queue(t.debounceSQL, append([]any{t.plan.ID, t.minInterval}, args...)...)
	}
	return tx.SendBatch(ctx, b).Close()
}

// wakeWhenDue arranges a check of t when its first stale row held back by min_interval comes
// due, and reports whether there is such a row.
func (m *Materializer) wakeWhenDue(ctx context.Context, tx pgx.Tx, t *target) (bool, error) {
	var secs *float64
	if err := tx.QueryRow(ctx, t.nextDueSQL, t.plan.ID).Scan(&secs); err != nil {
		return false, err
	}
	if secs == nil {
		return false, nil
	}
	// The server's clock decides when the row is due; a little slack keeps the wake from
	// arriving a hair early and finding the row still held.
	after := time.Duration(*secs*float64(time.Second)) + 10*time.Millisecond
	id := t.plan.ID
	m.mu.Lock()
	defer m.mu.Unlock()
	at := time.Now().Add(after)
	if t.wake != nil && t.wakeAt.After(time.Now()) && !t.wakeAt.After(at) {
		return true, nil // an earlier wake is set
	}
	if t.wake != nil {
		t.wake.Stop()
	}
	t.wakeAt = at
	t.wake = time.AfterFunc(max(after, 0), func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if t := m.byID[id]; t != nil {
			m.markLocked(t)
		}
	})
	return true, nil
}

func (m *Materializer) done(t *target, size, n int, d time.Duration) {
	t.rows.Add(int64(n))
	t.lastBatch.Store(int64(d))
	m.Stats.RowsMaterialized.Add(int64(n))
	m.Stats.Batches.Add(1)
	m.Stats.LastBatchNanos.Store(int64(d))
	m.observe(t, size, n, d)
}

// batchSettingsSQL sets each batch's limits. Batches read few rows by key, mostly from cache: a
// random page costs about what a sequential one does, and without saying so the planner
// scans whole tables for a few thousand keys. JIT compilation costs more than such a short
// statement gains. matcol's own writes skip the self trigger (plan.OwnWriteSetting). An
// enrichment's own settings come last and win. A template instance runs
// with search_path set to its schema ($5), so that its SQL's unqualified names are its tenant's;
// PostgreSQL replans a cached statement when search_path changes, so a plan never crosses
// schemas.
const batchSettingsSQL = `SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true),
	set_config('work_mem', coalesce(nullif($3, ''), current_setting('work_mem')), true),
	(SELECT count(set_config(k, v, true)) FROM jsonb_each_text('{"random_page_cost": "1.1", "jit": "off", "matcol.own_write": "on"}'::jsonb || $4::jsonb) AS g(k, v)),
	set_config('search_path', coalesce(nullif($5, ''), current_setting('search_path')), true)`

func settingsArgs(t *plan.Target) []any {
	s := t.BatchSettings()
	gucs := "{}"
	if len(s.GUCs) > 0 {
		gucs = s.GUCsJSON()
	}
	return []any{ms(s.StatementTimeout, 30*time.Second), ms(s.LockTimeout, 5*time.Second), s.WorkMem, gucs, t.SearchPath}
}

// isRowError reports whether err may come from the data of some rows (an error in the enrichment
// or in writing its result), which bisecting can isolate.
func isRowError(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || noRowCauses(pe.Code) {
		return false
	}
	switch pe.Code[:2] {
	case "22", "23", "42", "P0", "2F", "38", "39", "XX":
		return true
	}
	return pe.Code == "57014" // statement timeout: a smaller batch may pass
}

func ms(d, def time.Duration) string {
	if d <= 0 {
		d = def
	}
	return fmt.Sprintf("%dms", d.Milliseconds())
}

// claim runs a claim or lock statement and returns the keys it got, column by column, as text.
func claim(ctx context.Context, tx pgx.Tx, sql string, width int, args ...any) ([][]*string, error) {
	return plan.CollectKeys(ctx, tx, sql, width, args...)
}

// keyArgs renders key columns as array literals; the server parses them as the key types.
func keyArgs(keys [][]*string) []any {
	args := make([]any, len(keys))
	for i, col := range keys {
		args[i] = plan.ArrayLiteral(col)
	}
	return args
}
