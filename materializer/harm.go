package materializer

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Throttling answers evidence that the application suffers, never matcol's own batch times: a
// bigger or colder batch on an idle database says nothing about anyone else. Each second a probe
// reads (beside replica lag, which holds all work):
//   - lock waits matcol causes: application backends waiting on a lock a matcol backend holds;
//   - the latency of a trivial statement, while application transactions are in flight: when it
//     rises above latency_factor times its quiet level, the application competes with matcol for
//     the server.
// Either raises the throttle level, which halves again each quiet second. At level k a worker
// sleeps k times as long as each batch took, and only one worker runs.

// harmSQL counts, in one read that needs no privilege: application backends waiting on a lock
// held by a matcol backend, and application backends inside a transaction. Background
// processes have no user; matcol's sessions are told apart by application_name.
const harmSQL = `SELECT
	(SELECT count(*) FROM pg_locks w
	 WHERE NOT w.granted
	   AND w.pid NOT IN (SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'matcol%')
	   AND EXISTS (SELECT FROM unnest(pg_blocking_pids(w.pid)) AS b(pid) JOIN pg_stat_activity a ON a.pid = b.pid
	               WHERE a.application_name LIKE 'matcol%'))::int,
	(SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
	 WHERE l.locktype = 'virtualxid' AND l.granted AND a.usesysid IS NOT NULL
	   AND coalesce(a.application_name, '') NOT LIKE 'matcol%')::int`

// maxLevel bounds the throttle: at worst matcol takes a ninth of the time it would.
const maxLevel = 8

// harm tracks the probe's quiet latency and the throttle level.
type harm struct {
	factor  float64       // latency_factor; <= 0 disables the latency signal
	quiet   time.Duration // the probe's lowest latency lately
	quietAt time.Time
	level   int
	reason  string
}

// sample is one reading of the probe.
type sample struct {
	lockWaits int
	appTx     int
	latency   time.Duration
}

// probe reads the signals on q.
func probe(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (sample, error) {
	var s sample
	if err := q.QueryRow(ctx, harmSQL).Scan(&s.lockWaits, &s.appTx); err != nil {
		return s, fmt.Errorf("read lock waits and activity: %w", err)
	}
	// The best of three, so that one unlucky scheduling does not count as load.
	for i := 0; i < 3; i++ {
		start := time.Now()
		if err := q.QueryRow(ctx, `SELECT 1`).Scan(nil); err != nil {
			return s, fmt.Errorf("probe latency: %w", err)
		}
		if d := time.Since(start); i == 0 || d < s.latency {
			s.latency = d
		}
	}
	return s, nil
}

// update folds a sample into the level and returns it, with why.
func (h *harm) update(s sample, now time.Time) (int, string) {
	// The quiet level is the lowest latency of the last ten minutes.
	if h.quiet == 0 || s.latency < h.quiet || now.Sub(h.quietAt) > 10*time.Minute {
		h.quiet, h.quietAt = s.latency, now
	}
	reason := ""
	switch {
	case s.lockWaits > 0:
		reason = fmt.Sprintf("%d application backends wait for locks matcol holds", s.lockWaits)
	case h.factor > 0 && s.appTx > 0 && s.latency > time.Duration(float64(h.quiet)*h.factor) && s.latency > h.quiet+time.Millisecond:
		reason = fmt.Sprintf("the database answers in %s, %.0f× its quiet %s, while the application works",
			s.latency.Round(10*time.Microsecond), float64(s.latency)/float64(h.quiet), h.quiet.Round(10*time.Microsecond))
	}
	if reason != "" {
		h.level = min(maxLevel, max(1, h.level*2))
	} else {
		h.level /= 2
	}
	h.reason = reason
	return h.level, reason
}

// ThrottleLevel returns the throttle level: 0 runs flat out; at k a worker sleeps k times as
// long as each batch took.
func (m *Materializer) ThrottleLevel() int { return int(m.level.Load()) }

// checkHarm reads the probe once and moves the throttle level.
func (m *Materializer) checkHarm(ctx context.Context) {
	s, err := probe(ctx, m.pool)
	if err != nil {
		return // keep the last level; the next tick tries again
	}
	was := int(m.level.Load())
	level, reason := m.harm.update(s, time.Now())
	m.level.Store(int32(level))
	switch {
	case was == 0 && level > 0:
		m.log.Info("throttling: the application is busy", "reason", reason)
	case was > 0 && level == 0:
		m.log.Info("throttle lifted")
		select {
		case m.ready <- struct{}{}:
		default:
		}
	}
}

// throttle returns how long a worker waits after a batch that took d; worker 0 is the one that
// keeps running while throttled.
func (m *Materializer) throttle(d time.Duration) time.Duration {
	level := m.level.Load()
	if level == 0 || d <= 0 {
		return 0
	}
	m.Stats.Throttled.Add(1)
	return d * time.Duration(level)
}
