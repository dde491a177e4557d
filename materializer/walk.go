package materializer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/plan"
)

// walk is a pass over every row of a target in key order that computes and stamps each chunk:
// the answer to a whole-table invalidation (a source truncated, a logical-mode resync, values a
// mapping failed on). One pass writes each row once; setting every row stale first wrote each
// row twice. Rows the pass finds held by someone else are queued as ordinary invalidations, so a
// batch with an older snapshot never has the last word. Chunks of one statement (plan.PassStepSQL)
// run on up to the table's worker cap at once, each over its own key range, as a backfill's
// jobs do; chunks that lock their rows run one at a time.
type walk struct {
	ids     []int64   // the whole-table entries this pass answers, deleted when it ends
	maxID   int64     // the highest of them: a newer entry starts the pass over
	cursor  []*string // where the next chunk starts; nil: at the first row
	end     bool      // the last chunk has been handed out
	busy    bool      // a chunk that locks its rows runs, or the pass is ending
	running int       // chunks handed out and not yet done
	redo    []span    // chunks to run again: they were interrupted before their rows were written or queued
	gen     int       // counts restarts: chunks handed out before one change nothing
	bounds  sync.Mutex
	rows    int64
	start   time.Time
}

// startWalk makes a pass over t answer the whole-table entries ids, the highest maxID. A pass
// already under way starts over: rows it has passed may have changed since. Entries that commit
// late with a lower id than maxID are not in ids and stay queued, for a pass of their own.
func (m *Materializer) startWalk(t *target, maxID int64, ids []int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t.walk != nil && t.walk.maxID >= maxID {
		return
	}
	if t.walk != nil {
		w := t.walk
		w.maxID, w.ids, w.cursor, w.end, w.running, w.redo = maxID, ids, nil, false, 0, nil
		w.gen++
	} else {
		t.walk = &walk{maxID: maxID, ids: ids, start: time.Now()}
	}
	m.markLocked(t)
}

// takeWalk returns t's pass, if any.
func (m *Materializer) takeWalk(t *target) *walk {
	m.mu.Lock()
	defer m.mu.Unlock()
	return t.walk
}

// walkChunk runs the next unit of t's pass w: a chunk, a chunk to run again, or the pass's end.
// It reports how many rows it wrote and whether the pass has chunks left to hand out.
func (m *Materializer) walkChunk(ctx context.Context, t *target, w *walk) (n int, more bool, err error) {
	step := t.passStep != "" && !t.passStepOff.Load()
	m.mu.Lock()
	gen := w.gen
	switch {
	case len(w.redo) > 0:
		s := w.redo[0]
		w.redo = w.redo[1:]
		w.running++
		m.mu.Unlock()
		if step {
			return m.stepChunk(ctx, t, w, gen, s, false)
		}
		err := m.requeueSpan(ctx, t, s)
		more, endErr := m.chunkDone(ctx, t, w, gen, s, 0, err)
		return 0, more, errors.Join(err, endErr)
	case w.end && w.running == 0 && !w.busy:
		w.busy = true
		m.mu.Unlock()
		return 0, false, m.endWalk(ctx, t, w, gen)
	case w.busy || w.end:
		m.mu.Unlock()
		return 0, false, nil
	}
	if step {
		m.mu.Unlock()
		return m.stepChunk(ctx, t, w, gen, span{}, true)
	}
	w.busy = true
	m.mu.Unlock()
	return m.lockChunk(ctx, t, w, gen)
}

// walkMore reports whether w has chunks left to hand out.
func (m *Materializer) walkMore(t *target, w *walk) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return t.walk == w && (!w.end || len(w.redo) > 0)
}

// chunkDone records a chunk of s as done (err nil: its rows written or queued) or to be run again,
// ends the pass after its last chunk, and reports whether the pass has work left to hand out. An
// error is the end's: the pass's last unit runs again.
func (m *Materializer) chunkDone(ctx context.Context, t *target, w *walk, gen int, s span, n int, err error) (bool, error) {
	m.mu.Lock()
	last := false
	if w.gen == gen {
		w.running--
		if err != nil {
			w.redo = append(w.redo, s)
		} else {
			w.rows += int64(n)
		}
		if last = w.end && w.running == 0 && len(w.redo) == 0 && !w.busy; last {
			w.busy = true
		}
	}
	m.mu.Unlock()
	if last {
		if err := m.endWalk(ctx, t, w, gen); err != nil {
			return true, err
		}
	}
	return m.walkMore(t, w), nil
}

// endWalk deletes the whole-table entries w answered, once every chunk is done.
func (m *Materializer) endWalk(ctx context.Context, t *target, w *walk, gen int) error {
	m.mu.Lock()
	ids := w.ids
	m.mu.Unlock()
	_, err := m.pool.Exec(context.WithoutCancel(ctx), `DELETE FROM matcol.pending WHERE target_id = $1 AND vals IS NULL AND id = ANY($2)`,
		t.plan.ID, ids)
	m.mu.Lock()
	defer m.mu.Unlock()
	w.busy = false
	if err != nil {
		return fmt.Errorf("finish whole-table invalidation of %s: %w", t.plan.Table, err)
	}
	if w.gen != gen || t.walk != w {
		return nil
	}
	t.walk = nil
	// The pass answered every key queued before it: keys queued from now on are a backlog of their
	// own, weighed when it begins (checkBacklog), even while t.more still holds from the pass.
	t.passCheckAt = time.Time{}
	m.log.Info("recomputed every row after a whole-table invalidation", "table", t.plan.Table.String(),
		"rows", w.rows, "elapsed", time.Since(w.start).Round(time.Millisecond))
	return nil
}

// stepChunk runs a chunk of w as one statement that locks nothing (plan.PassStepSQL): the chunk
// s, or with next the chunk after w's cursor, whose bounds it reads first, so that another
// worker can start on the chunk after it meanwhile. It queues the stale rows it read, whose
// batch may hold an older snapshot. A chunk that fails on its rows, or on rows someone holds,
// queues its keys for the ordinary path, which isolates the failing ones.
func (m *Materializer) stepChunk(ctx context.Context, t *target, w *walk, gen int, s span, next bool) (n int, more bool, err error) {
	width := len(t.plan.Key)
	start := time.Now()
	m.mu.Lock()
	size := t.batchSize
	m.mu.Unlock()
	var release func()
	if next {
		w.bounds.Lock()
		release = sync.OnceFunc(w.bounds.Unlock)
		defer release()
	}
	handed, stale := !next, false
	err = m.inBatch(ctx, t, func(tx pgx.Tx) error {
		if next {
			m.mu.Lock()
			stale = w.gen != gen || w.end
			lo := w.cursor
			m.mu.Unlock()
			if stale {
				return nil
			}
			var count int
			hi := make([]*string, width)
			dest := []any{&count}
			for i := range hi {
				dest = append(dest, &hi[i])
			}
			err := tx.QueryRow(ctx, plan.RangeEndSQL(t.plan, ""), span{lo: lo, limit: size}.args(width)...).Scan(dest...)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("read the next chunk of %s: %w", t.plan.Table, err)
			}
			if count < size {
				hi = nil // the last chunk: no upper bound, so rows added meanwhile are in it
			}
			s = span{lo: lo, hi: hi}
			m.mu.Lock()
			if stale = w.gen != gen; !stale {
				w.cursor, w.end = hi, hi == nil
				w.running++
				handed = true
			}
			m.mu.Unlock()
			release()
			if stale {
				return nil
			}
		}
		// As a backfill step (see backfill_step.go): the planner takes the keys' array for ten rows.
		if _, err := tx.Exec(ctx, `SELECT set_config('enable_material', 'off', true)`); err != nil {
			return err
		}
		var written int
		last := make([]*string, width)
		dest := []any{&n, &written}
		for i := range last {
			dest = append(dest, &last[i])
		}
		if err := tx.QueryRow(ctx, t.passStep, s.args(width)...).Scan(dest...); err != nil {
			return err
		}
		queued, err := claim(ctx, tx, plan.RangeStaleKeysSQL(t.plan), width, s.args(width)[:2*width+2]...)
		if err != nil {
			return fmt.Errorf("read stale rows of %s: %w", t.plan.Table, err)
		}
		return m.finishChunk(ctx, tx, t, keyJSON(queued))
	})
	if !handed {
		return 0, m.walkMore(t, w), err
	}
	if err != nil && !interrupted(ctx, err) {
		if isSyntaxError(err) {
			// The enrichment's SQL does not take its keys as a subquery: chunks lock their rows.
			t.passStepOff.Store(true)
			m.log.Info("a pass locks each chunk's rows", "table", t.plan.Table.String(), "reason", err)
		}
		n = 0
		if qerr := m.requeueSpan(ctx, t, s); qerr == nil {
			err = nil
		}
	}
	more, endErr := m.chunkDone(ctx, t, w, gen, s, n, err)
	if err = errors.Join(err, endErr); err != nil {
		return 0, more, err
	}
	if n > 0 {
		m.done(t, size, n, time.Since(start))
	}
	m.log.Trace("pass chunk", "table", t.plan.Table.String(), "rows", n, "size", size, "elapsed", time.Since(start))
	return n, more, nil
}

// interrupted reports an error that says nothing about a chunk's rows: the chunk runs again.
func interrupted(ctx context.Context, err error) bool {
	return ctx.Err() != nil || dial.IsConnectionError(err) || errors.Is(err, errPlanChanged) || errors.Is(err, errBusyPlan)
}

// requeueSpan queues the keys of the rows in s as ordinary invalidations.
func (m *Materializer) requeueSpan(ctx context.Context, t *target, s span) error {
	return pgx.BeginFunc(context.WithoutCancel(ctx), m.pool, func(tx pgx.Tx) error {
		width := len(t.plan.Key)
		keys, err := claim(ctx, tx, plan.RangeKeysSQL(t.plan, ""), width+1, s.args(width)...)
		if err != nil {
			return fmt.Errorf("read rows of %s: %w", t.plan.Table, err)
		}
		return m.finishChunk(ctx, tx, t, keyJSON(keys[:width]))
	})
}

// lockChunk claims and locks the next chunk of w's rows, computes and stamps them, and queues
// the rows in its range that someone else holds. One runs at a time (w.busy).
func (m *Materializer) lockChunk(ctx context.Context, t *target, w *walk, gen int) (n int, more bool, err error) {
	m.mu.Lock()
	size, cursor := t.batchSize, w.cursor
	m.mu.Unlock()
	width := len(t.plan.Key)
	start := time.Now()
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
		return m.finishChunk(ctx, tx, t, requeue)
	})
	if err != nil && isRowError(err) && len(keys) > 0 && len(keys[0]) > 0 {
		// A row of the chunk fails: the chunk goes to the ordinary path, which isolates it.
		err = m.requeueChunk(ctx, t, append(requeue, keyJSON(keys)...))
	}
	m.mu.Lock()
	w.busy = false
	last := false
	if err == nil && w.gen == gen {
		if n > 0 {
			w.cursor = keyAt(keys, n-1)
			w.rows += int64(n)
		}
		w.end = !more
		last = w.end && w.running == 0 && len(w.redo) == 0
		if last {
			w.busy = true
		}
	}
	m.mu.Unlock()
	if err != nil {
		return 0, false, err
	}
	if n > 0 {
		m.done(t, size, n, time.Since(start))
	}
	if last {
		if err := m.endWalk(ctx, t, w, gen); err != nil {
			return n, false, err
		}
	}
	return n, m.walkMore(t, w), nil
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

// finishChunk queues the rows a chunk passed over.
func (m *Materializer) finishChunk(ctx context.Context, tx pgx.Tx, t *target, requeue []string) error {
	if len(requeue) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, plan.RequeueKeysSQL, t.plan.ID, requeue); err != nil {
		return fmt.Errorf("queue held rows of %s: %w", t.plan.Table, err)
	}
	return nil
}

// requeueChunk hands a chunk that failed to the ordinary path, in a transaction of its own.
func (m *Materializer) requeueChunk(ctx context.Context, t *target, keys []string) error {
	return pgx.BeginFunc(context.WithoutCancel(ctx), m.pool, func(tx pgx.Tx) error {
		return m.finishChunk(ctx, tx, t, keys)
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
		err = m.requeueChunk(ctx, t, keyJSON(keys))
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

// isSyntaxError reports a statement that does not plan (class 42, not a missing privilege).
func isSyntaxError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && strings.HasPrefix(pe.Code, "42") && pe.Code != "42501"
}
