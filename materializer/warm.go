package materializer

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// warmTargets bounds the tables whose statements a new daemon runs once on each connection
// before its first batch.
const warmTargets = 16

// warm opens a connection per worker and runs each batch statement of the first tables on it
// once, for no rows, rolled back. A backend's first batch of a table loads the catalog entries of
// every relation, index and function its statements touch and plans them cold: on two cores
// that made the first small change after a start take twice as long as the next, and a burst
// spread over several workers paid it on every connection.
func (m *Materializer) warm(ctx context.Context) {
	start := time.Now()
	m.mu.Lock()
	targets := make([]*target, 0, len(m.byID))
	for _, t := range m.byID {
		targets = append(targets, t)
	}
	m.mu.Unlock()
	sort.Slice(targets, func(i, j int) bool { return targets[i].plan.ID < targets[j].plan.ID })
	targets = targets[:min(len(targets), warmTargets)]
	if len(targets) == 0 {
		return
	}
	// Never the whole pool: holding every connection while asking for one more would wait forever.
	n := min(m.cfg.Workers, int(m.pool.Config().MaxConns)-1)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conns := make([]*pgxpool.Conn, 0, max(n, 0))
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range n {
		c, err := m.pool.Acquire(ctx)
		if err != nil {
			m.log.Debug("warm-up skipped", "error", err)
			return
		}
		conns = append(conns, c)
	}
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, t := range targets {
				if err := m.warmTarget(ctx, c, t); err != nil {
					// The first real batch reports it, with its table.
					m.log.Debug("warm-up failed", "table", t.plan.Table.String(), "error", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	m.log.Debug("warmed the workers' connections", "connections", len(conns), "tables", len(targets),
		"elapsed", time.Since(start))
}

// warmTarget runs t's batch statements for no rows in a transaction it rolls back.
func (m *Materializer) warmTarget(ctx context.Context, c *pgxpool.Conn, t *target) error {
	tx, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // nothing to keep
	if _, err := tx.Exec(ctx, batchSettingsSQL, settingsArgs(t.plan)...); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, t.takeSQL, t.plan.ID, 0, 1, 0); err != nil {
		return err
	}
	width := len(t.plan.Key)
	if _, err := claim(ctx, tx, t.claimSQL, width, 0, t.plan.ID); err != nil {
		return err
	}
	return m.write(ctx, tx, t, make([][]*string, width))
}
