package materializer

import (
	"context"
	"fmt"
	"time"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/plan"
)

// sweep runs the periodic chores: expiry, clearing min_interval holds that have passed, and
// now and then the removal of leftovers.
func (m *Materializer) sweep(ctx context.Context) {
	m.mu.Lock()
	targets := make([]*target, 0, len(m.byID))
	for _, t := range m.byID {
		targets = append(targets, t)
	}
	m.mu.Unlock()
	debounced := false
	for _, t := range targets {
		if ctx.Err() != nil {
			return
		}
		debounced = debounced || t.minInterval > 0
		exp := expiry(t.plan)
		if exp <= 0 {
			continue
		}
		n, err := m.Expire(dial.Touching(ctx, t.plan.Relations()), t.plan, exp, m.cfg.ExpiryBatch)
		if err != nil {
			m.log.Warn("expiry sweep failed", "table", t.plan.Table.String(), "error", err)
			continue
		}
		if n > 0 {
			m.log.Debug("expired rows", "table", t.plan.Table.String(), "rows", n)
			m.mu.Lock()
			m.markLocked(t)
			m.mu.Unlock()
		}
	}
	if debounced {
		if _, err := m.pool.Exec(ctx, `DELETE FROM matcol.debounce d USING (
				SELECT target_id, key FROM matcol.debounce WHERE not_before < now() LIMIT $1) g
			WHERE d.target_id = g.target_id AND d.key = g.key`, tidyChunk); err != nil {
			m.log.Warn("clearing min_interval holds failed", "error", err)
		}
	}
	if m.upkeep.sweeps++; m.upkeep.sweeps%tidySweeps == 1 {
		if err := m.tidy(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("removing leftover failures and min_interval holds failed", "error", err)
		}
	}
}

// expiry is the shortest expires_after among the table's enrichments, or 0.
func expiry(t *plan.Target) time.Duration {
	var d time.Duration
	for _, e := range t.Enrichments {
		if e.ExpiresAfter > 0 && (d == 0 || e.ExpiresAfter < d) {
			d = e.ExpiresAfter
		}
	}
	return d
}

// Expire marks stale at most limit rows of t stamped longer than exp ago, oldest first, skipping
// rows someone holds. Capping each sweep spreads a mass expiry over time instead of recomputing
// everything stamped in the same minute at once.
func (m *Materializer) Expire(ctx context.Context, t *plan.Target, exp time.Duration, limit int) (int, error) {
	sql := fmt.Sprintf(`WITH x AS (
			SELECT ctid FROM %[1]s WHERE materialized_at < now() - $1::interval
			ORDER BY materialized_at LIMIT $2 FOR UPDATE SKIP LOCKED),
		u AS (UPDATE %[1]s SET materialized_at = NULL WHERE ctid IN (SELECT ctid FROM x) RETURNING 1)
		SELECT count(*) FROM u`, t.Table.Sanitize())
	var n int
	if err := m.pool.QueryRow(ctx, sql, exp, limit).Scan(&n); err != nil {
		return 0, err
	}
	m.Stats.RowsExpired.Add(int64(n))
	return n, nil
}
