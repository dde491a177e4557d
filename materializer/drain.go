package materializer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/plan"
)

// drainTargets is how many targets one drain transaction touches: each table a transaction
// touches stays in the backend's cache, and its locks in the lock table, until it ends, and with
// thousands of tenants one drain could otherwise touch them all.
const drainTargets = 50

// Drain sizes: how many queued invalidations one drain transaction takes adapts toward
// drainGoal, within these bounds. A drain holds the row locks of the rows it sets stale until it
// commits.
const (
	drainMin   = 500
	drainStart = 2000
	drainMax   = 50000
	drainGoal  = 100 * time.Millisecond
)

// drainLoop applies queued invalidations. While work keeps arriving it polls the queue, and
// writers send no NOTIFY; after Linger without work it marks itself asleep (matcol.wake_flag) and
// waits for one. Right after falling asleep it drains once more, and again shortly after, for
// writers whose triggers read the flag before it changed; and while a transaction that was open
// then is still open, it checks every second whether it has ended: one that wrote before the flag
// changed and commits later sends no NOTIFY.
func (m *Materializer) drainLoop(ctx context.Context) {
	attempt := 0
	lastWork := time.Now()
	asleep := false
	var sleptAt time.Time
	var open []string // transactions in progress when the flag changed, still open at the last look
	defer func() {
		// Nobody listens once this daemon is gone: spare writers the NOTIFY.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = m.setSleeping(sctx, false)
	}()
	for ctx.Err() == nil {
		if m.planBehind() {
			dial.Sleep(ctx, 20*time.Millisecond)
			continue
		}
		// Yielding, the drainer waits too: its polls and the rows it sets stale cost the
		// application as the workers' batches would.
		if m.holding() || m.yielding() {
			dial.Sleep(ctx, time.Second)
			continue
		}
		if asleep && len(open) > 0 {
			// Before the drain: a transaction seen ended has its entries in the drain's snapshot.
			if stillOpen, err := m.stillOpen(ctx, open); err == nil {
				open = stillOpen
			}
		}
		res, err := m.Drain(ctx)
		if errors.Is(err, errPlanChanged) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if dial.IsConnectionError(err) {
				m.log.Warn("database unreachable; retrying", "error", err)
			} else {
				m.log.Error("applying invalidations failed; retrying", "error", err)
			}
			attempt++
			asleep, open = false, nil // the flag may be gone with the server; set it again later
			if !dial.Sleep(ctx, dial.Backoff(attempt, 30*time.Second)) {
				return
			}
			continue
		}
		attempt = 0
		// Keys waiting for the workers are work too: a drainer that slept meanwhile would have
		// every writer send NOTIFY, which serializes their commits.
		if res.Taken > 0 || res.Direct > 0 {
			lastWork = time.Now()
			if asleep {
				if err := m.setSleeping(ctx, false); err == nil {
					asleep, open = false, nil
				}
			}
			if res.Full {
				continue
			}
			if res.Requeued > 0 {
				// Rows held by someone else: retry soon, without spinning.
				dial.Sleep(ctx, 200*time.Millisecond)
				continue
			}
		}
		if !asleep {
			if time.Since(lastWork) < m.cfg.Linger {
				select {
				case <-ctx.Done():
					return
				case <-m.drainCh:
				case <-time.After(m.cfg.PollInterval):
				}
				continue
			}
			if err := m.setSleeping(ctx, true); err == nil {
				asleep = true
				sleptAt = time.Now()
				// In a statement after the flag's: a writer that read it unchanged had its
				// transaction ID by then, and has committed or is in this snapshot.
				open, _ = m.openXacts(ctx)
			}
			continue
		}
		wait := m.cfg.SweepInterval
		if len(open) > 0 {
			wait = min(wait, time.Second)
		}
		for _, recheck := range []time.Duration{100 * time.Millisecond, time.Second} {
			if d := time.Until(sleptAt.Add(recheck)); d > 0 {
				wait = min(wait, d)
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-m.drainCh:
		case <-time.After(wait):
		}
	}
}

// openXacts returns the transactions with an ID in progress.
func (m *Materializer) openXacts(ctx context.Context) ([]string, error) {
	var open []string
	err := m.control().QueryRow(ctx, `SELECT coalesce(array_agg(x::text), '{}')
		FROM pg_catalog.pg_snapshot_xip(pg_catalog.pg_current_snapshot()) AS x`).Scan(&open)
	return open, err
}

// stillOpen returns those of xids that are still in progress.
func (m *Materializer) stillOpen(ctx context.Context, xids []string) ([]string, error) {
	var open []string
	err := m.control().QueryRow(ctx, `SELECT coalesce(array_agg(x), '{}') FROM unnest($1::text[]) AS x
		WHERE pg_catalog.pg_xact_status(x::xid8) = 'in progress'`, xids).Scan(&open)
	return open, err
}

func (m *Materializer) setSleeping(ctx context.Context, v bool) error {
	// The flag writers read (matcol.wake_flag) and the table, in one statement.
	_, err := m.control().Exec(ctx, `WITH f AS (SELECT pg_catalog.setval('matcol.wake_flag', CASE WHEN $1::bool THEN 1 ELSE 0 END, true))
		INSERT INTO matcol.wake (sleeping) SELECT $1::bool FROM f
		ON CONFLICT (id) DO UPDATE SET sleeping = excluded.sleeping
		WHERE matcol.wake.sleeping IS DISTINCT FROM excluded.sleeping`, v)
	if err == nil {
		m.asleep.Store(v)
	}
	return err
}

// DrainResult says what one Drain did.
type DrainResult struct {
	Taken    int  // queue entries taken
	Requeued int  // keys whose rows were locked, put back for later
	Dropped  int  // entries that name no possible row (values that are no key), dropped
	Full     bool // as many entries were taken as asked for: more may wait
	// Direct is how many tables have direct entries (target keys) waiting for the workers.
	Direct int
}

type group struct {
	direct   []string             // JSON arrays of key values
	mapped   map[int]*[][]*string // dependency id → column values
	deps     map[int]*plan.Dep    // dependency id → dependency
	earliest time.Time
	all      bool // an entry could not be read: every row of the target is invalidated
}

// Drain applies queued invalidations to their targets: it takes a batch of matcol.pending, sets
// the named rows stale and deletes the entries, in one transaction. Rows locked by someone else
// (usually a batch computing them) are not waited for: their keys go back in the queue, so the
// invalidation lands after that batch commits and is never lost.
func (m *Materializer) Drain(ctx context.Context) (DrainResult, error) {
	var res DrainResult
	m.mu.Lock()
	p := m.plan
	byID := m.byID
	m.mu.Unlock()
	ids := make([]int32, 0, len(p.Targets))
	// By target and dependency: a template's instances share its dependency ids.
	deps := map[[2]int]*plan.Dep{}
	for _, t := range p.Targets {
		ids = append(ids, int32(t.ID))
	}
	for _, s := range p.Sources {
		for _, d := range s.Deps {
			deps[[2]int{d.Target.ID, d.ID}] = d
		}
	}
	if len(ids) == 0 {
		return res, nil
	}
	// Workers start on queued keys first, while the drain runs: a burst of keys waits for no
	// drain transaction.
	var err error
	var drainable bool
	if res.Direct, drainable, err = m.noteDirect(ctx); err != nil {
		return res, err
	}
	if err := m.invalidateAll(ctx, ids, byID); err != nil {
		return res, err
	}
	// Queued keys alone, the usual burst in trigger mode, are the workers': a drain transaction
	// that finds nothing would take CPU from their first batches.
	directOff := m.directOffIDs()
	if !drainable && len(directOff) == 0 {
		return res, nil
	}
	touched := map[int]bool{}
	err = pgx.BeginFunc(ctx, m.control(), func(tx pgx.Tx) error {
		var searchPath string
		var locked bool
		var version int64
		if err := tx.QueryRow(ctx, `SELECT set_config('lock_timeout', '2s', true), set_config('statement_timeout', '60s', true),
			current_setting('search_path'), `+gateSQL).Scan(nil, nil, &searchPath, &locked, &version); err != nil {
			return err
		}
		// An entry of a dependency this plan does not know yet must not be mistaken for one of a
		// removed dependency.
		if err := m.gate(locked, version, p.Version); err != nil {
			return err
		}
		// The oldest entries, by the queue's primary key: the scan stops after the limit, however
		// long the queue is. Entries of more than drainTargets tables stay for the next drain.
		size := m.drainSizeNow()
		started := time.Now()
		// Direct entries (target keys) are the workers' (see queue.go), unless their table's
		// are handed back here.
		rows, err := tx.Query(ctx, `
			WITH m AS (SELECT id, target_id, ctid FROM matcol.pending
			           WHERE (dependency_id IS NOT NULL OR vals = '[]'::jsonb) AND target_id = ANY($2)
			           ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED),
			     k AS (SELECT id, target_id, ctid FROM matcol.pending
			           WHERE target_id = ANY($4) AND `+plan.DirectEntrySQL+`
			           ORDER BY target_id, id LIMIT $1 FOR UPDATE SKIP LOCKED),
			     c AS MATERIALIZED (SELECT * FROM m UNION ALL SELECT * FROM k),
			     t AS (SELECT target_id FROM c GROUP BY target_id ORDER BY min(id) LIMIT $3)
			-- By ctid (a TID scan): a join to the queue followed the queue's statistics, often an
			-- empty queue's, and scanned every entry (see plan.QueueTakeSQL).
			DELETE FROM matcol.pending p
			WHERE p.ctid = ANY (ARRAY(SELECT ctid FROM c WHERE target_id IN (SELECT target_id FROM t)))
			RETURNING p.target_id, p.dependency_id, p.vals::text, p.enqueued_at`, size, ids, drainTargets, directOff)
		if err != nil {
			return fmt.Errorf("take queued invalidations: %w", err)
		}
		defer func() {
			m.drainSized(size, res.Taken, time.Since(started))
			m.log.Trace("drain", "taken", res.Taken, "size", size, "elapsed", time.Since(started))
		}()
		groups := map[int]*group{}
		for rows.Next() {
			var tid int
			var dep *int
			var vals string
			var at time.Time
			if err := rows.Scan(&tid, &dep, &vals, &at); err != nil {
				rows.Close()
				return err
			}
			res.Taken++
			g := groups[tid]
			if g == nil {
				g = &group{mapped: map[int]*[][]*string{}, deps: map[int]*plan.Dep{}, earliest: at}
				groups[tid] = g
			}
			if at.Before(g.earliest) {
				g.earliest = at
			}
			if dep == nil {
				if t := byID[tid]; t != nil {
					m.mu.Lock()
					m.noteQueued(t, vals, at)
					m.mu.Unlock()
				}
				if vals != "[]" { // [] only says the target has new stale rows
					g.direct = append(g.direct, vals)
				}
				continue
			}
			d := deps[[2]int{tid, *dep}]
			if d == nil {
				continue // dependency removed since; Sync turned its entries into whole-target ones
			}
			cols := g.mapped[*dep]
			if cols == nil {
				c := make([][]*string, len(d.Columns))
				cols = &c
				g.mapped[*dep] = cols
				g.deps[*dep] = d
			}
			if err := appendValues(*cols, vals); err != nil {
				// Not the shape the dependency queues: which rows it names is unknown.
				if t := byID[tid]; t != nil {
					m.warnEntry(t, "malformed queued invalidation; every row of the table is invalidated", vals, err)
					g.all = true
				}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("take queued invalidations: %w", err)
		}
		res.Full = res.Taken >= size
		for tid, g := range groups {
			t := byID[tid]
			if t == nil {
				continue
			}
			requeue, dropped, err := m.applyGroup(dial.Touching(ctx, t.plan.Relations()), tx, t, g, searchPath)
			res.Dropped += dropped
			if isGone(err) {
				// A table dropped under us (a tenant removed): its entries go with it, and the
				// other targets' invalidations still land. The next rescan drops the target.
				m.log.Warn("table gone; dropping its queued invalidations", "table", t.plan.Table.String(), "error", err)
				if m.OnGone != nil {
					m.OnGone()
				}
				continue
			}
			if err != nil {
				return err
			}
			if len(requeue) > 0 {
				if _, err := tx.Exec(ctx, `INSERT INTO matcol.pending (target_id, vals, enqueued_at)
					SELECT $1, v::jsonb, $3 FROM unnest($2::text[]) AS v`, tid, requeue, g.earliest); err != nil {
					return fmt.Errorf("requeue locked rows of %s: %w", t.plan.Table, err)
				}
				res.Requeued += len(requeue)
			}
			// Remember since when the target has had stale rows, for lag figures that survive a
			// restart; drain_seq tells workers a drain happened.
			if _, err := tx.Exec(ctx, `UPDATE matcol.target SET stale_since = least(coalesce(stale_since, $2), $2),
				drain_seq = drain_seq + 1 WHERE id = $1`, tid, g.earliest); err != nil {
				return fmt.Errorf("record stale time of %s: %w", t.plan.Table, err)
			}
			touched[tid] = true
		}
		return nil
	})
	if err != nil {
		return DrainResult{}, err
	}
	m.mu.Lock()
	for tid := range touched {
		if t := m.byID[tid]; t != nil {
			m.markLocked(t)
		}
	}
	m.mu.Unlock()
	return res, nil
}

// directOffIDs lists the tables whose direct entries the drainer takes for now.
func (m *Materializer) directOffIDs() []int32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	ids := []int32{}
	for id, t := range m.byID {
		if !m.directOnLocked(t, now) {
			ids = append(ids, int32(id))
		}
	}
	return ids
}

// applyGroup sets stale the rows one target's queue entries name, under a savepoint, and returns
// the keys it could not lock and how many entries it dropped. Mapping SQL of a template instance
// runs with search_path set to its schema.
func (m *Materializer) applyGroup(ctx context.Context, tx pgx.Tx, t *target, g *group, searchPath string) ([]string, int, error) {
	if _, err := tx.Exec(ctx, "SAVEPOINT matcol_group"); err != nil {
		return nil, 0, err
	}
	requeue, dropped, err := m.applyGroupIn(ctx, tx, t, g, searchPath)
	if err != nil {
		if _, rbErr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT matcol_group; RELEASE SAVEPOINT matcol_group"); rbErr != nil {
			return nil, 0, rbErr
		}
		return nil, 0, err
	}
	_, err = tx.Exec(ctx, "RELEASE SAVEPOINT matcol_group")
	return requeue, dropped, err
}

func (m *Materializer) applyGroupIn(ctx context.Context, tx pgx.Tx, t *target, g *group, searchPath string) ([]string, int, error) {
	var requeue []string
	dropped := 0
	if g.all {
		if _, err := tx.Exec(ctx, `INSERT INTO matcol.pending (target_id, vals)
			SELECT $1, NULL WHERE NOT EXISTS (SELECT FROM matcol.pending WHERE target_id = $1 AND vals IS NULL)`, t.plan.ID); err != nil {
			return nil, 0, err
		}
	}
	if len(g.direct) > 0 {
		sql := plan.InvalidateKeysSQL(t.plan)
		got, err := isolateEntries(ctx, tx, 0, len(g.direct), func(lo, hi int) ([]string, error) {
			return requeued(ctx, tx, sql, g.direct[lo:hi])
		}, func(i int, cause error) error {
			// Values that cannot be a key of the table name no row: nothing to invalidate.
			dropped++
			m.warnEntry(t, "dropped a queued invalidation whose values are no key of the table", g.direct[i], cause)
			return nil
		})
		if err != nil {
			return nil, 0, fmt.Errorf("invalidate rows of %s: %w", t.plan.Table, err)
		}
		requeue = append(requeue, got...)
	}
	if len(g.mapped) == 0 {
		return requeue, dropped, nil
	}
	path := searchPath
	if t.plan.SearchPath != "" {
		path = t.plan.SearchPath
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('search_path', $1, true)`, path); err != nil {
		return nil, 0, err
	}
	for id, cols := range g.mapped {
		d := g.deps[id]
		sql := plan.InvalidateMappedSQL(d)
		got, err := isolateEntries(ctx, tx, 0, len((*cols)[0]), func(lo, hi int) ([]string, error) {
			args := make([]any, len(*cols))
			for i, c := range *cols {
				args[i] = plan.ArrayLiteral(c[lo:hi])
			}
			return requeued(ctx, tx, sql, args...)
		}, func(i int, cause error) error {
			// Which rows the values map to is unknown: every row is, at worst, stale.
			vals := make([]string, len(*cols))
			for c, col := range *cols {
				if col[i] != nil {
					vals[c] = *col[i]
				}
			}
			m.warnEntry(t, "mapping SQL failed on queued values; every row of the table is invalidated", fmt.Sprintf("%s %q", d.Source, vals), cause)
			_, err := tx.Exec(ctx, `INSERT INTO matcol.pending (target_id, vals)
				SELECT $1, NULL WHERE NOT EXISTS (SELECT FROM matcol.pending WHERE target_id = $1 AND vals IS NULL)`, t.plan.ID)
			return err
		})
		if err != nil {
			return nil, 0, fmt.Errorf("invalidate rows of %s through %s: %w", t.plan.Table, d.Source, err)
		}
		requeue = append(requeue, got...)
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('search_path', $1, true)`, searchPath); err != nil {
		return nil, 0, err
	}
	return requeue, dropped, nil
}

// isolateEntries runs apply over the entries [lo, hi) under a savepoint. When it fails on the
// data of some entries it splits the range until each failing entry is alone and hands it to
// bad, so that one bad entry never holds back the others.
func isolateEntries(ctx context.Context, tx pgx.Tx, lo, hi int, apply func(lo, hi int) ([]string, error),
	bad func(i int, cause error) error) ([]string, error) {
	if _, err := tx.Exec(ctx, "SAVEPOINT matcol_entries"); err != nil {
		return nil, err
	}
	got, err := apply(lo, hi)
	if err == nil {
		_, err = tx.Exec(ctx, "RELEASE SAVEPOINT matcol_entries")
		return got, err
	}
	if _, rbErr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT matcol_entries; RELEASE SAVEPOINT matcol_entries"); rbErr != nil {
		return nil, rbErr
	}
	if !isEntryError(err) {
		return nil, err
	}
	if hi-lo == 1 {
		return nil, bad(lo, err)
	}
	mid := (lo + hi) / 2
	first, err := isolateEntries(ctx, tx, lo, mid, apply, bad)
	if err != nil {
		return nil, err
	}
	second, err := isolateEntries(ctx, tx, mid, hi, apply, bad)
	return append(first, second...), err
}

// isEntryError reports whether err can come from the values of some queued entries: a failed
// cast, or an error raised by mapping SQL on them.
func isEntryError(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code[:2] {
	case "22", "P0", "2F", "38", "39":
		return true
	}
	return false
}

// warnEntry logs a bad queued entry, at most once a minute per table.
func (m *Materializer) warnEntry(t *target, msg, vals string, cause error) {
	m.Stats.EntriesDropped.Add(1)
	m.mu.Lock()
	due := time.Since(t.entryWarnedAt) > time.Minute
	if due {
		t.entryWarnedAt = time.Now()
	}
	m.mu.Unlock()
	if due {
		m.log.Warn(msg, "table", t.plan.Table.String(), "values", vals, "error", cause)
	}
}

// drainSizeNow is how many entries the next drain takes.
func (m *Materializer) drainSizeNow() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.drainSize == 0 {
		m.drainSize = drainStart
	}
	return m.drainSize
}

// drainSized steers the drain size toward drainGoal after a drain took d for taken entries.
func (m *Materializer) drainSized(size, taken int, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case d > drainGoal*3/2:
		m.drainSize = max(drainMin, size*2/3)
	case d < drainGoal/2 && taken >= size:
		m.drainSize = min(drainMax, size*3/2)
	}
}

// isGone reports whether err says a table or schema no longer exists.
func isGone(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "3F000")
}

// requeued runs an invalidation statement and returns the keys it could not lock.
func requeued(ctx context.Context, tx pgx.Tx, sql string, args ...any) ([]string, error) {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// appendValues adds one queued JSON array of source values to cols, as text.
func appendValues(cols [][]*string, vals string) error {
	var arr []json.RawMessage
	if err := json.Unmarshal([]byte(vals), &arr); err != nil {
		return err
	}
	if len(arr) != len(cols) {
		return fmt.Errorf("%d values for %d columns", len(arr), len(cols))
	}
	for i, raw := range arr {
		cols[i] = append(cols[i], jsonText(raw))
	}
	return nil
}

// jsonText is what ->> would return: NULL for null, the string for a string, else the JSON text.
func jsonText(raw json.RawMessage) *string {
	s := string(raw)
	switch {
	case s == "null":
		return nil
	case len(s) > 0 && s[0] == '"':
		var out string
		if json.Unmarshal(raw, &out) == nil {
			return &out
		}
	}
	return &s
}

// invalidateAll starts a pass over every row of each target that has whole-target entries (a
// source was truncated); the pass removes them when it ends.
func (m *Materializer) invalidateAll(ctx context.Context, ids []int32, byID map[int]*target) error {
	rows, err := m.control().Query(ctx, `SELECT target_id, max(id), array_agg(id) FROM matcol.pending
		WHERE vals IS NULL AND target_id = ANY($1) GROUP BY target_id`, ids)
	if err != nil {
		return fmt.Errorf("read whole-table invalidations: %w", err)
	}
	type job struct {
		tid   int
		maxID int64
		ids   []int64
	}
	jobs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (job, error) {
		var j job
		return j, r.Scan(&j.tid, &j.maxID, &j.ids)
	})
	if err != nil {
		return fmt.Errorf("read whole-table invalidations: %w", err)
	}
	for _, j := range jobs {
		if t := byID[j.tid]; t != nil {
			m.startWalk(t, j.maxID, j.ids)
		}
	}
	return nil
}
