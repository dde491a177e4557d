package materializer

import (
	"context"
	"time"

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
		debounced = debounced || t.minInterval > 0
		if expiry(t.plan) <= 0 {
			continue
		}
		// Workers recompute up to ExpiryBatch expired rows of each table per sweep, oldest
		// first: rows stamped together do not all come due at once.
		m.mu.Lock()
		if t.expireDue <= 0 {
			t.expireDue = m.cfg.ExpiryBatch
			m.markLocked(t)
		}
		m.mu.Unlock()
	}
	if debounced {
		if _, err := m.control().Exec(ctx, `DELETE FROM matcol.debounce d USING (
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
