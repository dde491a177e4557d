package materializer

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/plan"
)

// Throttling answers evidence that the application suffers, never matcol's own batch times: a
// bigger or colder batch on an idle database says nothing about anyone else. Four times a second
// a probe counts application backends inside a transaction, those waiting on a lock a matcol
// backend holds, and those waiting for the WAL; once a second it times a trivial statement. Then
// (beside replica lag, which holds all work):
//   - any lock wait matcol causes, or, while the application keeps at least busyBackends
//     transactions in flight on average (it competes with matcol for the server; a lone poller
//     does not count),
//   - a trivial statement slower than latency_factor times its quiet level, or
//   - at least walWaiters application backends waiting for the WAL on average while most of its
//     connections are inside a transaction: saturated, its commits queue for the WAL and every
//     byte matcol writes makes the queue longer (pgbench's tpcb-like runs there, answering
//     SELECT 1 as fast as when quiet). Writers that idle between transactions, at a rate they
//     reach, wait for the WAL too, but matcol costs them latency, not throughput, and yielding
//     would cost freshness (16 writers at 1,000 commits/s: p99 from 78 ms to 3 s)
// raises the throttle level, which halves again each quiet second. WAL waits are read every half
// second: the first half second of them raises the level to half the highest, the next to the
// highest. At level k a worker sleeps k times as long as each batch
// took, and only one worker runs. At the highest level, when the application queues for the
// WAL, no worker runs as long as the oldest waiting change is younger than max_delay: a batch's
// rows cost the application the same WAL and buffers however long the pause after it, so only
// waiting spares it (pgbench tpcb-like: 0.66x at level 8 with pauses). Past max_delay workers
// run without pauses until it is younger again, which bounds how stale a yield leaves any row.

// harmSQL counts, in one read: application backends waiting on a lock held by a matcol backend,
// application backends inside a transaction, application backends waiting to insert, write or
// flush WAL (wait event names of PostgreSQL 13 and 14+), and the application's connections to
// this database that are in use: idle for a second or more, a connection is a pool's spare or a
// tool's, not part of the load (pgbench's clients beside three idle ones read 5 of 11 busy as
// its load began, and batches ran for its first two seconds). Background processes have no user;
// matcol's sessions are told apart by application_name.
//
// pg_locks and pg_blocking_pids take every lock-manager partition lock while they copy its
// tables, so every writer that takes or releases a lock meanwhile (each one that commits)
// waits, and on busy cores the copier may lose its CPU holding them. So the lock waits are read
// only while a matcol backend other than the probe's is inside a transaction (one of another
// role, whose state is hidden without pg_read_all_stats, counts), and with pg_read_all_stats the
// transactions in flight come from pg_stat_activity: a yielding daemon's probes then touch no
// lock table. Without it, other roles' transactions show only as their virtualxid locks; the WAL
// waits need it either way. Uncorrelated subqueries run only when their CASE branch is taken.
const harmSQL = `SELECT
	CASE WHEN EXISTS (SELECT FROM pg_stat_activity m
	                  WHERE m.application_name LIKE 'matcol%' AND m.pid <> pg_backend_pid()
	                    AND (m.xact_start IS NOT NULL OR m.state IS NULL))
	THEN (SELECT count(*) FROM pg_locks w
	 WHERE NOT w.granted
	   AND w.pid NOT IN (SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'matcol%')
	   AND EXISTS (SELECT FROM unnest(pg_blocking_pids(w.pid)) AS b(pid) JOIN pg_stat_activity a ON a.pid = b.pid
	               WHERE a.application_name LIKE 'matcol%'))::int
	ELSE 0 END,
	CASE WHEN pg_has_role('pg_read_all_stats', 'USAGE')
	THEN (SELECT count(*) FROM pg_stat_activity a
	 WHERE a.xact_start IS NOT NULL AND a.usesysid IS NOT NULL
	   AND coalesce(a.application_name, '') NOT LIKE 'matcol%')::int
	ELSE (SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
	 WHERE l.locktype = 'virtualxid' AND l.granted AND a.usesysid IS NOT NULL
	   AND coalesce(a.application_name, '') NOT LIKE 'matcol%')::int
	END,
	(SELECT count(*) FROM pg_stat_activity a
	 WHERE a.backend_type = 'client backend' AND a.state = 'active'
	   AND a.wait_event IN ('WALWrite', 'WALSync', 'WALInsert', 'WALBufMapping', 'WALWriteLock', 'WALBufMappingLock')
	   AND coalesce(a.application_name, '') NOT LIKE 'matcol%')::int,
	(SELECT count(*) FROM pg_stat_activity a
	 WHERE a.backend_type = 'client backend' AND a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
	   AND (a.state IS DISTINCT FROM 'idle' OR a.state_change > now() - interval '1 second')
	   AND coalesce(a.application_name, '') NOT LIKE 'matcol%')::int`

// probeSQL is the timed statement.
const probeSQL = `SELECT 1`

// maxLevel bounds the throttle: at worst matcol takes a ninth of the time it would.
const maxLevel = 8

// busyBackends is how many application transactions must be in flight on average for a slow
// probe to count as the application's trouble.
const busyBackends = 2

// idleBackends: with fewer application transactions in flight on average, the application is
// idle and the throttle drops at once instead of halving each second.
const idleBackends = 0.5

// walWaiters is how many application backends must wait for the WAL on average to count as harm:
// one always waiting means its commits queue.
const walWaiters = 1.0

// saturated is the share of the application's connections that must be inside a transaction on
// average for WAL waits to count: a closed loop that hardly idles, beside idle connections of its
// own or of a monitoring tool (harmSQL counts only connections in use). At 0.6, pgbench's 8
// clients among 11 connections read 6 busy for a second now and then, and each such second let a
// 500-row batch run for 120-210 ms under the load; as its load begins, 5 of its 8 are busy.
// Open-loop writers stay far below: 16 writers at 1,000 commits/s of about 2 ms each keep 2 busy.
const saturated = 0.5

// latencySlack is how much slower than quiet the probe must also be, in absolute terms: a
// scheduler's hiccup of a millisecond is no one's trouble.
const latencySlack = 2 * time.Millisecond

// harm tracks the probe's quiet latency and the throttle level.
type harm struct {
	factor  float64       // latency_factor; <= 0 disables the latency signal
	quiet   time.Duration // the probe's lowest latency lately
	quietAt time.Time
	level   int
	reason  string
	walHeld bool // the last update found the application queueing for the WAL, or held on to it
	walMiss int  // updates in a row that held on to a WAL queue the samples did not show
	// Counts since the last update: samples, application transactions seen in flight, lock
	// waits seen, backends seen waiting for the WAL.
	samples, appTx, lockWaits, walWaits, appConns int
	lastBusy, lastWAL                             float64 // for the trace log
	lastLatency                                   time.Duration
}

// sample is one reading of the probe; latency is 0 when not timed.
type sample struct {
	lockWaits int
	appTx     int
	walWaits  int
	appConns  int
	latency   time.Duration
}

// probe reads the signals on q, and times probeSQL when timed.
func probe(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, timed bool) (sample, error) {
	var s sample
	if err := q.QueryRow(ctx, harmSQL).Scan(&s.lockWaits, &s.appTx, &s.walWaits, &s.appConns); err != nil {
		return s, fmt.Errorf("read lock waits and activity: %w", err)
	}
	if !timed {
		return s, nil
	}
	// The best of three, so that one unlucky scheduling does not count as load.
	for i := 0; i < 3; i++ {
		start := time.Now()
		if err := q.QueryRow(ctx, probeSQL).Scan(nil); err != nil {
			return s, fmt.Errorf("probe latency: %w", err)
		}
		if d := time.Since(start); i == 0 || d < s.latency {
			s.latency = d
		}
	}
	return s, nil
}

// add counts a sample; a timed one (latency > 0) then moves the level, which update returns
// with why; an untimed one returns the level as it is.
func (h *harm) add(s sample, now time.Time) (int, string) {
	h.samples++
	h.appTx += s.appTx
	h.lockWaits += s.lockWaits
	h.walWaits += s.walWaits
	h.appConns += s.appConns
	if s.latency == 0 {
		// A WAL queue is answered every half second, not at the next timed sample: each second
		// matcol's workers keep writing costs a saturated application its share of the flushes.
		if h.samples >= walSamples && h.walQueue() {
			return h.update(0, now)
		}
		return h.level, h.reason
	}
	return h.update(s.latency, now)
}

// walGrace is how many updates in a row (about a second apart) a WAL queue is held on to while
// the samples miss it but the application stays saturated. Four samples a second catch a queue of
// one or two backends only now and then: under pgbench's tpcb-like the yield dropped for a second
// every few seconds, and the batches matcol ran then cost the application 6% of its transactions
// (docs/benchmarks.md, the daemon started with pgbench or after it).
const walGrace = 3

// walSamples is how many samples (a quarter second apart) show a WAL queue before it counts.
const walSamples = 2

// walQueue reports whether the samples since the last update show the application queueing for
// the WAL while it keeps most of its connections in a transaction.
func (h *harm) walQueue() bool {
	n := float64(max(h.samples, 1))
	busy, wal, conns := float64(h.appTx)/n, float64(h.walWaits)/n, float64(h.appConns)/n
	return h.factor > 0 && busy >= busyBackends && wal >= walWaiters && busy >= saturated*conns
}

// update moves the level from the samples counted since the last update and the probe's latency;
// latency 0 (no timed sample) leaves the latency signal out.
func (h *harm) update(latency time.Duration, now time.Time) (int, string) {
	// The quiet level is the lowest latency of the last ten minutes.
	if latency > 0 && (h.quiet == 0 || latency < h.quiet || now.Sub(h.quietAt) > 10*time.Minute) {
		h.quiet, h.quietAt = latency, now
	}
	busy := float64(h.appTx) / float64(max(h.samples, 1))
	wal := float64(h.walWaits) / float64(max(h.samples, 1))
	h.lastBusy, h.lastWAL = busy, wal
	if latency > 0 {
		h.lastLatency = latency
	}
	reason := ""
	conns := float64(h.appConns) / float64(max(h.samples, 1))
	walQueue := h.walQueue()
	held := walQueue
	switch {
	case walQueue:
		h.walMiss = 0
	case h.walHeld && h.factor > 0 && busy >= busyBackends && busy >= saturated*conns && h.walMiss < walGrace:
		held = true
		h.walMiss++
	}
	switch {
	case h.lockWaits > 0:
		reason = fmt.Sprintf("application backends wait for locks matcol holds (%d seen)", h.lockWaits)
	case walQueue:
		reason = fmt.Sprintf("application commits wait for the WAL (%.1f backends on average) while the application keeps %.1f of its %.0f connections in a transaction",
			wal, busy, conns)
	case held:
		reason = fmt.Sprintf("the application stays saturated (%.1f of its %.0f connections in a transaction) since its commits queued for the WAL",
			busy, conns)
	case h.factor > 0 && busy >= busyBackends && latency > time.Duration(float64(h.quiet)*h.factor) && latency > h.quiet+latencySlack:
		reason = fmt.Sprintf("the database answers in %s, %.0f× its quiet %s, while the application keeps %.1f transactions in flight",
			latency.Round(10*time.Microsecond), float64(latency)/float64(h.quiet), h.quiet.Round(10*time.Microsecond), busy)
	}
	h.samples, h.appTx, h.lockWaits, h.walWaits, h.appConns = 0, 0, 0, 0, 0
	switch {
	case held && h.walHeld:
		// Any write of matcol's lengthens the queue: no level of pauses spares the application.
		// Twice in a row, so that a burst of connections opening is not taken for a load.
		h.level = maxLevel
	case held:
		h.level = max(maxLevel/2, h.level)
	case reason != "":
		h.level = min(maxLevel, max(1, h.level*2))
	case busy < idleBackends:
		// The application has stopped: the backlog it left is the work, and nobody to spare.
		// After pgbench's tpcb-like, halving from 8 each second made catch-up take 3.5 s, where a
		// daemon started after pgbench took 1.6 s.
		h.level = 0
	default:
		h.level /= 2
	}
	h.reason = reason
	h.walHeld = held
	return h.level, reason
}

// ThrottleLevel returns the throttle level: 0 runs flat out; at k a worker sleeps k times as
// long as each batch took.
func (m *Materializer) ThrottleLevel() int { return int(m.level.Load()) }

// checkHarm reads the probe once, timing it when timed, and moves the throttle level.
func (m *Materializer) checkHarm(ctx context.Context, timed bool) {
	m.Stats.HarmProbes.Add(1)
	s, err := probe(ctx, m.control(), timed)
	if err != nil {
		return // keep the last level; the next tick tries again
	}
	was := int(m.level.Load())
	level, reason := m.harm.add(s, time.Now())
	walHeld := m.harm.walHeld
	if p := m.pinLevel.Load(); p > 0 {
		level, reason, walHeld = int(p), "pinned by a test", true
	}
	m.walQueue.Store(walHeld)
	m.level.Store(int32(level))
	if timed {
		m.log.Trace("throttle probe", "latency", m.harm.lastLatency, "quiet", m.harm.quiet, "busy", m.harm.lastBusy, "wal_waits", m.harm.lastWAL, "level", level)
	}
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
	if level == 0 || d <= 0 || m.overdue() {
		return 0
	}
	m.Stats.Throttled.Add(1)
	return d * time.Duration(level)
}

// yielding reports whether workers wait for the application: the throttle at its highest level
// because the application queues for the WAL, and no waiting change older than max_delay. The
// other signals keep one worker running with pauses at that level: a slow probe or a lock wait
// says less about what matcol's writes cost, and yielding to them cost freshness.
func (m *Materializer) yielding() bool {
	return m.cfg.MaxDelay > 0 && m.level.Load() >= maxLevel && m.walQueue.Load() && !m.overdue()
}

// Yielding reports whether the workers wait for a saturated application (see yielding).
func (m *Materializer) Yielding() bool { return m.yielding() }

// overdue reports whether some change has waited longer than max_delay.
func (m *Materializer) overdue() bool {
	return m.cfg.MaxDelay > 0 && time.Duration(m.oldest.Load()) > m.cfg.MaxDelay
}

// oldestSQL is how long, in seconds, the oldest change waits: the first queued entry of each
// kind (each table's first key, through a loose scan of pending_direct like directTargetsSQL;
// the drainer's first entry; whole-table entries) and the earliest stale_since of a table.
const oldestSQL = `WITH RECURSIVE d AS (
	(SELECT target_id, enqueued_at FROM matcol.pending WHERE ` + plan.DirectEntrySQL + `
	 ORDER BY target_id, id LIMIT 1)
	UNION ALL
	SELECT n.target_id, n.enqueued_at FROM d CROSS JOIN LATERAL (
		SELECT p.target_id, p.enqueued_at FROM matcol.pending p
		WHERE ` + plan.DirectEntrySQL + ` AND p.target_id > d.target_id
		ORDER BY p.target_id, p.id LIMIT 1) AS n)
SELECT coalesce(extract(epoch FROM clock_timestamp() - least(
	(SELECT min(enqueued_at) FROM d),
	(SELECT enqueued_at FROM matcol.pending WHERE dependency_id IS NOT NULL OR vals = '[]'::jsonb ORDER BY id LIMIT 1),
	(SELECT min(enqueued_at) FROM matcol.pending WHERE vals IS NULL),
	(SELECT min(stale_since) FROM matcol.target))), 0)::float8`

// checkOldest reads how long the oldest change waits, while the throttle is up.
func (m *Materializer) checkOldest(ctx context.Context) {
	if m.level.Load() == 0 || m.cfg.MaxDelay <= 0 {
		m.oldest.Store(0)
		return
	}
	var secs float64
	if err := m.control().QueryRow(ctx, oldestSQL).Scan(&secs); err != nil {
		return
	}
	was := m.overdue()
	m.oldest.Store(int64(secs * float64(time.Second)))
	if now := m.overdue(); now != was {
		if now {
			m.log.Warn("throttled work waited past max_delay; running without pauses", "max_delay", m.cfg.MaxDelay)
		}
		select {
		case m.ready <- struct{}{}:
		default:
		}
	}
}
