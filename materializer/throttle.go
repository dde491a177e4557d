package materializer

import (
	"context"
	"time"
)

// observe steers the batch size toward the target duration, which bounds how long rows stay
// locked: shrink fast when a batch runs long, grow gently when full batches run short. It also
// learns the table's usual time per row, which throttling compares against.
func (m *Materializer) observe(t *target, n int, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	goal := m.cfg.TargetBatchDuration
	switch {
	case d > goal*3/2 && t.batchSize > 1:
		t.batchSize = max(1, t.batchSize*2/3)
	case d < goal/2 && n >= t.batchSize && t.batchSize < 20000:
		t.batchSize = min(20000, t.batchSize*5/4+1)
	}
	t.usual.observe(n, d, m.cfg.LatencyFactor)
}

// rowTime learns a table's usual time per row for the latency throttle.
type rowTime struct {
	perRow  float64 // seconds, an EWMA
	batches int
}

// observe records a batch of n rows that took d. Only batches under factor times the usual move
// it, so a slow spell cannot become the new normal.
func (r *rowTime) observe(n int, d time.Duration, factor float64) {
	if n == 0 {
		return
	}
	per := d.Seconds() / float64(n)
	r.batches++
	if r.batches == 1 {
		r.perRow = per
	} else if per < r.perRow*factor {
		r.perRow = 0.9*r.perRow + 0.1*per
	}
}

// slow reports whether a batch of n rows that took d ran factor times slower per row than usual,
// once ten batches have taught the usual.
func (r *rowTime) slow(n int, d time.Duration, factor float64) bool {
	return n > 0 && factor > 0 && r.batches >= 10 && d.Seconds()/float64(n) > r.perRow*factor
}

// pace returns how long to wait before t's next batch: when the database is slow (a batch far
// above the table's usual time per row) matcol backs off by as long as that batch took.
func (m *Materializer) pace(t *target, n int, d time.Duration) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !t.usual.slow(n, d, m.cfg.LatencyFactor) {
		return 0
	}
	m.Stats.Throttled.Add(1)
	return d
}

// loadSQL reads the pause switch and the largest replay lag of the physical standbys, in seconds.
// Walsenders of logical slots (CDC tools, matcol's own) are not standbys. The lag is -1 when
// standbys exist but their lag cannot be read: pg_stat_replication shows it only to
// pg_read_all_stats.
const loadSQL = `WITH standby AS (
		SELECT r.state, r.replay_lag FROM pg_stat_replication r
		WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots s WHERE s.slot_type = 'logical' AND s.active_pid = r.pid))
	SELECT coalesce((SELECT (value->>'paused')::bool FROM matcol.setting WHERE name = 'pause'), false),
		CASE WHEN EXISTS (SELECT 1 FROM standby WHERE state IS NULL) THEN -1
		ELSE coalesce((SELECT max(extract(epoch FROM replay_lag)) FROM standby), 0) END::float8`

// watchLoad keeps the pause switch and the replica-lag throttle current.
func (m *Materializer) watchLoad(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		m.checkLoad(ctx)
	}
}

// checkLoad reads the pause switch and the replicas' replay lag once.
func (m *Materializer) checkLoad(ctx context.Context) {
	var paused bool
	var lag float64
	err := m.pool.QueryRow(ctx, loadSQL).Scan(&paused, &lag)
	if err != nil {
		return // keep the last known state; the next tick tries again
	}
	m.noteLagKnown(lag >= 0)
	if paused != m.paused.Load() {
		if paused {
			m.log.Info("materialization paused")
		} else {
			m.log.Info("materialization resumed")
		}
	}
	m.paused.Store(paused)
	behind := m.cfg.MaxReplicaLag > 0 && lag > m.cfg.MaxReplicaLag.Seconds()
	if behind != m.replicaBehind.Load() {
		if behind {
			m.log.Warn("replica lag above limit; throttling", "lag_seconds", lag, "limit", m.cfg.MaxReplicaLag)
		} else {
			m.log.Info("replica lag back under limit", "lag_seconds", lag)
		}
	}
	m.replicaBehind.Store(behind)
	if !paused && !behind {
		select {
		case m.ready <- struct{}{}:
		default:
		}
	}
}

// holding reports whether work must wait: paused, or replicas too far behind.
func (m *Materializer) holding() bool { return m.paused.Load() || m.replicaBehind.Load() }
