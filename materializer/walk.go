package materializer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/matcol/matcol/plan"
)

// walk is a pass over every row of a target in key order that computes and stamps each chunk:
// the answer to a whole-table invalidation (a source truncated, a logical-mode resync, values a
// mapping failed on). One pass writes each row once; setting every row stale first wrote each
// row twice. Rows the pass finds held by someone else are queued as ordinary invalidations, so a
// batch with an older snapshot never has the last word.
type walk struct {
	maxID  int64     // whole-table entries up to this id are answered by this pass
	cursor []*string // the last key done; nil: from the start
	busy   bool      // a worker runs a chunk
	rows   int64
	start  time.Time
}

// startWalk makes a pass over t answer whole-table entries up to maxID. A pass already under way
// starts over: rows it has passed may have changed since.
func (m *Materializer) startWalk(t *target, maxID int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t.walk != nil && t.walk.maxID >= maxID {
		return
	}
	if t.walk != nil {
		t.walk.maxID, t.walk.cursor = maxID, nil
	} else {
		t.walk = &walk{maxID: maxID, start: time.Now()}
	}
	m.markLocked(t)
}

// takeWalk returns t's pass for one chunk, or nil when there is none or a worker runs one.
func (m *Materializer) takeWalk(t *target) *walk {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t.walk == nil || t.walk.busy {
		return nil
	}
	t.walk.busy = true
	return t.walk
}

// walkChunk computes and stamps the next chunk of w and reports how many rows it wrote and
// whether the pass goes on.
func (m *Materializer) walkChunk(ctx context.Context, t *target, w *walk) (n int, more bool, err error) {
	m.mu.Lock()
	size, cursor, maxID := t.batchSize, w.cursor, w.maxID
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		w.busy = false
		if err == nil && w.maxID == maxID { // else it started over meanwhile
			w.cursor = cursor
			if !more && t.walk == w {
				t.walk = nil
			}
		}
	}()
	width := len(t.plan.Key)
	start := time.Now()
	if t.passStep != "" && !t.passStepOff.Load() {
		var last []*string
		n, more, last, err = m.stepChunk(ctx, t, cursor, size, maxID)
		switch {
		case err == nil:
			if n > 0 {
				cursor = last
				m.done(t, size, n, time.Since(start))
				m.mu.Lock()
				w.rows += int64(n)
				m.mu.Unlock()
			}
			if !more {
				m.log.Info("recomputed every row after a whole-table invalidation", "table", t.plan.Table.String(),
					"rows", w.rows, "elapsed", time.Since(w.start).Round(time.Millisecond))
			}
			return n, more, nil
		case isSyntaxError(err):
			// The enrichment's SQL does not take its keys as a subquery: chunks lock their rows.
			t.passStepOff.Store(true)
			m.log.Info("a pass locks each chunk's rows", "table", t.plan.Table.String(), "reason", err)
		case !isRowError(err) && !isBusy(err):
			return 0, false, err
		}
		// A row of the chunk fails, or rows are busy: this chunk locks its rows and hands failing
		// ones to the ordinary path.
		start = time.Now()
	}
	args := make([]any, width+2)
	for i := range cursor {
		args[i] = cursor[i]
	}
	args[width], args[width+1] = cursor != nil, size
	var keys [][]*string
	var requeue []string
	err = m.inBatch(ctx, t, func(tx pgx.Tx) error {
		var err error
		if keys, err = claim(ctx, tx, plan.WalkClaimSQL(t.plan), width, args...); err != nil {
			return fmt.Errorf("claim rows of %s: %w", t.plan.Table, err)
		}
		n = len(keys[0])
		more = n >= size
		var hi []*string
		if more {
			hi = keyAt(keys, n-1)
		}
		if requeue, err = m.passedOver(ctx, tx, t, cursor, hi, keys); err != nil {
			return err
		}
		if n > 0 {
			if err := m.writeWith(ctx, tx, t, keys, t.passSQL); err != nil {
				return err
			}
		}
		return m.finishChunk(ctx, tx, t, requeue, !more, maxID)
	})
	if err != nil && isRowError(err) && len(keys) > 0 && len(keys[0]) > 0 {
		// A row of the chunk fails: the chunk goes to the ordinary path, which isolates it.
		err = m.requeueChunk(ctx, t, append(requeue, keyJSON(keys)...), !more, maxID)
	}
	if err != nil {
		return 0, false, err
	}
	n = len(keys[0])
	if n > 0 {
		cursor = keyAt(keys, n-1)
		m.done(t, size, n, time.Since(start))
		m.mu.Lock()
		w.rows += int64(n)
		m.mu.Unlock()
	}
	if !more {
		m.log.Info("recomputed every row after a whole-table invalidation", "table", t.plan.Table.String(),
			"rows", w.rows, "elapsed", time.Since(w.start).Round(time.Millisecond))
	}
	return n, more, nil
}

// passedOver returns, as queue values, the rows in (lo, hi] (hi nil: to the end) that exist but
// that the claim did not get: someone else holds them.
func (m *Materializer) passedOver(ctx context.Context, tx pgx.Tx, t *target, lo, hi []*string, claimed [][]*string) ([]string, error) {
	width := len(t.plan.Key)
	s := span{lo: lo, hi: hi}
	var count int
	if err := tx.QueryRow(ctx, plan.RangeCountSQL(t.plan), s.args(width)[:2*width+2]...).Scan(&count); err != nil {
		return nil, fmt.Errorf("count rows of %s: %w", t.plan.Table, err)
	}
	if count == len(claimed[0]) {
		return nil, nil
	}
	all, err := claim(ctx, tx, plan.RangeKeysSQL(t.plan, ""), width+1, s.args(width)...)
	if err != nil {
		return nil, fmt.Errorf("read rows of %s: %w", t.plan.Table, err)
	}
	got := map[string]bool{}
	for i := range claimed[0] {
		got[keyString(claimed, i)] = true
	}
	var out []string
	for i := range all[0] {
		if !got[keyString(all[:width], i)] {
			out = append(out, keyJSON(slice(all[:width], i, i+1))...)
		}
	}
	return out, nil
}

// finishChunk queues the rows a chunk passed over and, at the end of the pass, removes the
// whole-table entries it answered.
func (m *Materializer) finishChunk(ctx context.Context, tx pgx.Tx, t *target, requeue []string, last bool, maxID int64) error {
	if len(requeue) > 0 {
		if _, err := tx.Exec(ctx, plan.RequeueKeysSQL, t.plan.ID, requeue); err != nil {
			return fmt.Errorf("queue held rows of %s: %w", t.plan.Table, err)
		}
	}
	if last {
		if _, err := tx.Exec(ctx, `DELETE FROM matcol.pending WHERE target_id = $1 AND vals IS NULL AND id <= $2`, t.plan.ID, maxID); err != nil {
			return fmt.Errorf("finish whole-table invalidation of %s: %w", t.plan.Table, err)
		}
	}
	return nil
}

// requeueChunk hands a chunk that failed to the ordinary path, in a transaction of its own.
func (m *Materializer) requeueChunk(ctx context.Context, t *target, keys []string, last bool, maxID int64) error {
	return pgx.BeginFunc(context.WithoutCancel(ctx), m.pool, func(tx pgx.Tx) error {
		return m.finishChunk(ctx, tx, t, keys, last, maxID)
	})
}

// expireChunk computes and stamps up to a batch of t's rows stamped longer than its expiry ago,
// oldest first, and reports how many it wrote and whether more are due this round.
func (m *Materializer) expireChunk(ctx context.Context, t *target) (n int, more bool, err error) {
	m.mu.Lock()
	size := min(t.batchSize, t.expireDue)
	m.mu.Unlock()
	start := time.Now()
	var keys [][]*string
	err = m.inBatch(ctx, t, func(tx pgx.Tx) error {
		var err error
		if keys, err = claim(ctx, tx, t.expiredSQL, len(t.plan.Key), expiry(t.plan), size); err != nil {
			return fmt.Errorf("claim expired rows of %s: %w", t.plan.Table, err)
		}
		if len(keys[0]) == 0 {
			return nil
		}
		return m.write(ctx, tx, t, keys)
	})
	if err != nil && isRowError(err) && len(keys) > 0 && len(keys[0]) > 0 {
		err = m.requeueChunk(ctx, t, keyJSON(keys), false, 0)
	}
	if len(keys) > 0 {
		n = len(keys[0])
	}
	m.mu.Lock()
	t.expireDue -= n
	if n < size || err != nil {
		t.expireDue = 0
	}
	more = t.expireDue > 0
	m.mu.Unlock()
	if err != nil {
		return 0, false, err
	}
	if n > 0 {
		m.Stats.RowsExpired.Add(int64(n))
		m.done(t, size, n, time.Since(start))
	}
	return n, more, nil
}

// takeExpiry reports whether t has expired rows due this round and no worker on them.
func (m *Materializer) takeExpiry(t *target) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t.expireDue <= 0 || t.expiring {
		return false
	}
	t.expiring = true
	return true
}

func (m *Materializer) doneExpiry(t *target) {
	m.mu.Lock()
	t.expiring = false
	m.mu.Unlock()
}

// inBatch runs f in a batch transaction of t: its settings, the plan gate, a commit.
func (m *Materializer) inBatch(ctx context.Context, t *target, f func(pgx.Tx) error) error {
	bctx := context.WithoutCancel(ctx)
	return pgx.BeginFunc(bctx, m.pool, func(tx pgx.Tx) error {
		var locked bool
		var version int64
		if err := tx.QueryRow(bctx, batchSettingsSQL+", "+gateSQL, settingsArgs(t.plan)...).Scan(nil, nil, nil, nil, nil, &locked, &version); err != nil {
			return fmt.Errorf("set batch settings: %w", err)
		}
		if err := m.gate(locked, version, t.version); err != nil {
			return err
		}
		return f(tx)
	})
}

// keyJSON renders key columns as queue values: one JSON array of text per row.
func keyJSON(keys [][]*string) []string {
	if len(keys) == 0 {
		return nil
	}
	out := make([]string, len(keys[0]))
	for i := range keys[0] {
		b, _ := json.Marshal(keyAt(keys, i))
		out[i] = string(b)
	}
	return out
}

// stepChunk runs the next chunk of a pass as one statement that locks nothing (plan.PassStepSQL)
// and queues the stale rows it read, whose batch may hold an older snapshot. It returns the rows
// read, whether the pass goes on, and the last key read.
func (m *Materializer) stepChunk(ctx context.Context, t *target, cursor []*string, size int, maxID int64) (n int, more bool, last []*string, err error) {
	width := len(t.plan.Key)
	err = m.inBatch(ctx, t, func(tx pgx.Tx) error {
		// As a backfill step (see backfill_step.go): the planner takes the keys' array for ten rows.
		if _, err := tx.Exec(ctx, `SELECT set_config('enable_material', 'off', true)`); err != nil {
			return err
		}
		var written int
		last = make([]*string, width)
		dest := []any{&n, &written}
		for i := range last {
			dest = append(dest, &last[i])
		}
		if err := tx.QueryRow(ctx, t.passStep, span{lo: cursor, limit: size}.args(width)...).Scan(dest...); err != nil {
			return err
		}
		more = n >= size
		hi := last
		if !more {
			hi = nil
		}
		stale, err := claim(ctx, tx, plan.RangeStaleKeysSQL(t.plan), width, span{lo: cursor, hi: hi}.args(width)[:2*width+2]...)
		if err != nil {
			return fmt.Errorf("read stale rows of %s: %w", t.plan.Table, err)
		}
		return m.finishChunk(ctx, tx, t, keyJSON(stale), !more, maxID)
	})
	return n, more, last, err
}

// isSyntaxError reports a statement that does not plan (class 42, not a missing privilege).
func isSyntaxError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && strings.HasPrefix(pe.Code, "42") && pe.Code != "42501"
}
