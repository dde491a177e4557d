package materializer

import (
	"context"
	"time"
)

// maxBatch bounds a batch's rows.
const maxBatch = 20000

// observe steers the batch size toward the target duration, which bounds how long rows stay
// locked, from the rate of a batch that ran with size: one that ran long sets the size that rate
// fits in the target (at least half its own), a full one that ran short doubles it at most. The
// step is taken from the batch's own size, not the current one, because batches of one table
// run side by side and report the same slowness together: shrinking the current size by a factor
// per report compounded, and four cold batches of 500 left the next ones at 98 rows.
//
// A shrink must pay. When a batch of at most two thirds the rows of the one that made the size
// shrink still ran long and took over three quarters of its time, the statement's cost is mostly
// fixed (a scan whatever the keys, say): smaller batches hold their locks as long and do less
// each. The size goes back to what it was, and for a minute does not shrink below it, unless a
// batch of that size runs within the target. Before, such a table shrank to one row a batch for
// good: at 200 ms a statement, five rows a second.
func (m *Materializer) observe(t *target, size, n int, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	goal := m.cfg.TargetBatchDuration
	if n <= 0 || d <= 0 || goal <= 0 {
		return
	}
	now := time.Now()
	if t.floor > 0 && (now.After(t.floorUntil) || (size >= t.floor && n >= size && d <= goal)) {
		t.floor = 0
	}
	fit := int(min(float64(n)*float64(goal)/float64(d), maxBatch))
	switch {
	case d > goal*3/2:
		if s := t.shrunk; s.rows > 0 && n*3 <= s.rows*2 && d*4 > s.d*3 {
			t.floor, t.floorUntil = s.size, now.Add(time.Minute)
			t.batchSize = max(t.batchSize, s.size)
			t.shrunk = shrink{}
			return
		}
		next := max(1, t.floor, min(t.batchSize, max(size/2, fit)))
		if next < t.batchSize {
			t.shrunk = shrink{size: t.batchSize, rows: n, d: d}
		}
		t.batchSize = next
	case d < goal/2 && n >= size:
		t.batchSize = max(t.batchSize, min(maxBatch, size*2, fit))
		t.shrunk = shrink{}
	}
}

// shrink is the batch that last made a table's batch size shrink: the size before, and its rows
// and time.
type shrink struct {
	size, rows int
	d          time.Duration
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

// watchLoad keeps the pause switch and the throttles current: load each second, the harm probe
// four times a second (see harm.go). Idle, with no work and the drainer asleep, it probes every
// idleProbeTicks ticks: the probe reads pg_locks and pg_stat_activity, and an idle daemon should
// cost the server nothing, while the quiet latency it learns stays current.
func (m *Materializer) watchLoad(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if n%4 == 0 {
			m.checkLoad(ctx)
		}
		if idle := m.idle(); !idle || n%idleProbeTicks == 0 {
			m.checkHarm(ctx, n%4 == 0 || idle)
		}
		if n%4 == 0 {
			m.checkOldest(ctx)
		}
	}
}

// idleProbeTicks: an idle daemon probes for harm every 5 s.
const idleProbeTicks = 20

// idle reports that no work waits or runs and the drainer sleeps until a writer wakes it.
func (m *Materializer) idle() bool {
	if !m.asleep.Load() {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.queue) > 0 {
		return false
	}
	for _, t := range m.byID {
		if t.running > 0 || t.walk != nil {
			return false
		}
	}
	return true
}

// checkLoad reads the pause switch and the replicas' replay lag once.
func (m *Materializer) checkLoad(ctx context.Context) {
	var paused bool
	var lag float64
	err := m.control().QueryRow(ctx, loadSQL).Scan(&paused, &lag)
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
