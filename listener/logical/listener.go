// Package logical is the logical-replication invalidation source: it decodes pgoutput from a
// slot, maps each change to the same matcol.pending entries trigger mode writes, inserts them,
// and only then acks the position (invariant 4). One instance holds the slot, elected with an
// advisory lock; a WAL guard recreates the slot and resyncs when it retains too much (invariant 5).
//
// Three layers: conn.go wraps the walsender connection, slot.go and session resume or recreate
// the slot from confirmed_flush_lsn, and stream.go is the loop handling timeouts and keepalives.
package logical

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/listener"
	"github.com/matcol/matcol/plan"
)

// Listener streams invalidations from a logical replication slot.
type Listener struct {
	DSN         string
	Slot        string
	Publication string
	// MaxRetainedWAL is the WAL, in bytes, the slot may hold back before it is recreated and every
	// target resynced. Defaults to 1GB.
	MaxRetainedWAL int64
	// Plan returns the current plan; it is read for every change, so a reloaded plan applies at once.
	Plan func() *plan.Plan
	// Reload asks for the registry's current plan. The stream calls it when it reaches a registry
	// change and waits until Plan returns a plan at least that new.
	Reload func()
	Sink   listener.Sink
	Log    hclog.Logger
	// Yielding, when set, reports that the materializer yields to a saturated application; the
	// stream then reads less often (see coalesceYielding), and holds decoding (MaxHold).
	Yielding func() bool
	// MaxHold bounds how long decoding stops while Yielding: the walsender's decoding runs on the
	// application's cores, so a saturated application gets them back, and the changes it makes
	// meanwhile are decoded once it has room or when the oldest of them has waited this long. 0
	// never holds. The daemon sets it to throttle.max_delay.
	MaxHold time.Duration
	// GuardInterval is how often the slot's retained WAL is checked. Defaults to 10s.
	GuardInterval time.Duration
	// StatusInterval is how often the position is reported while idle. Defaults to 1s.
	StatusInterval time.Duration
	// FollowerRetry is how often an instance that is not the leader tries to become it. Defaults to 2s.
	FollowerRetry time.Duration

	// noAck, for tests, keeps reporting the start position: a crash between apply and ack.
	noAck bool

	mu    sync.Mutex
	stats Stats
}

var _ listener.Listener = (*Listener)(nil)

// Stats are the listener's figures for the status endpoint.
type Stats struct {
	Leader bool
	// Streaming is true once the slot is resumed (and any resync queued) until the stream ends.
	Streaming         bool
	Slot              string
	ConfirmedFlushLSN string
	RetainedWALBytes  int64
	WALStatus         string
	// Resyncs counts slot recreations by this process, each followed by a resync of every target.
	Resyncs int
	// Holding is true while decoding stops for a saturated application (Listener.MaxHold); Holds
	// counts those stops.
	Holding bool
	Holds   int
}

// Stats returns the latest figures.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stats
	s.Slot = l.Slot
	return s
}

func (l *Listener) update(f func(*Stats)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(&l.stats)
}

var errNotLeader = errors.New("another instance holds the slot")

// chunk is how many distinct entries are collected before they are flushed, in the middle of a
// transaction if need be: pgoutput v1 only sends committed transactions, so an early flush is
// never ahead of the data, and memory stays bounded however large the transaction.
const chunk = 5000

// flushDelay bounds how long entries of committed transactions wait to be batched with more.
const flushDelay = 100 * time.Millisecond

func (l *Listener) defaults() {
	if l.MaxRetainedWAL <= 0 {
		l.MaxRetainedWAL = 1 << 30
	}
	if l.GuardInterval <= 0 {
		l.GuardInterval = 10 * time.Second
	}
	if l.StatusInterval <= 0 {
		l.StatusInterval = time.Second
	}
	if l.FollowerRetry <= 0 {
		l.FollowerRetry = 2 * time.Second
	}
}

// Run blocks until ctx ends. It competes for leadership, streams while it leads, and retries
// with capped backoff after any error, including a restart of PostgreSQL.
func (l *Listener) Run(ctx context.Context) error {
	l.defaults()
	if !nameRe.MatchString(l.Slot) {
		return fmt.Errorf("invalidation.slot %q must be 1-63 characters of a-z, 0-9 and _", l.Slot)
	}
	if !nameRe.MatchString(l.Publication) {
		return fmt.Errorf("invalidation.publication %q must be 1-63 characters of a-z, 0-9 and _", l.Publication)
	}
	attempt := 0
	for {
		err := l.lead(ctx, func() { attempt = 0 })
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errNotLeader) {
			if !dial.Sleep(ctx, l.FollowerRetry) {
				return nil
			}
			continue
		}
		// Capped low so that a new leader takes over a dead one's slot within seconds.
		wait := dial.Backoff(attempt, 5*time.Second)
		l.Log.Warn("logical replication stopped; retrying", "error", err, "retry_in", wait.Round(time.Millisecond))
		attempt++
		if !dial.Sleep(ctx, wait) {
			return nil
		}
	}
}

// lead takes the slot's advisory lock on a dedicated session and streams while holding it. The
// lock dies with the session, so a killed leader frees the slot for the others at once.
func (l *Listener) lead(ctx context.Context, streaming func()) error {
	conn, err := dial.Connect(ctx, l.DSN, "listener")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, "matcol slot "+l.Slot).Scan(&got); err != nil {
		return fmt.Errorf("take slot leadership: %w", err)
	}
	if !got {
		return errNotLeader
	}
	l.update(func(s *Stats) { s.Leader = true })
	defer l.update(func(s *Stats) { s.Leader = false })
	l.Log.Info("holding the replication slot", "slot", l.Slot)
	return l.session(ctx, conn, streaming)
}

// resyncKey names the matcol.setting row that records a resync in progress for the slot: set
// before the slot is created, removed in the transaction that queues the resync, so a crash in
// between resyncs again rather than skipping.
func (l *Listener) resyncKey() string { return "logical.resync." + l.Slot }

// SlotKey names the matcol.setting row that says matcol created the slot.
func SlotKey(slot string) string { return "logical.slot." + slot }

// session is the slot handler: it resumes the slot from confirmed_flush_lsn, or creates it and
// resyncs, then streams.
func (l *Listener) session(ctx context.Context, conn *pgx.Conn, streaming func()) error {
	rc, err := connectRepl(ctx, l.DSN)
	if err != nil {
		return err
	}
	defer func() { // the one in use: a hold replaces it
		if rc != nil {
			rc.close(ctx)
		}
	}()
	st, err := readSlot(ctx, conn, l.Slot)
	if err != nil {
		return err
	}
	if st.exists && (st.otherDB || st.wrongPlugin) {
		return fmt.Errorf("replication slot %s belongs to another database or output plugin; set invalidation.slot to another name", l.Slot)
	}
	if st.exists {
		if reason := st.needsRecreate(l.MaxRetainedWAL); reason != "" {
			if st.active {
				return fmt.Errorf("replication slot %s must be recreated (%s) but is still in use", l.Slot, reason)
			}
			l.Log.Error("recreating replication slot; every target will be resynced", "slot", l.Slot, "reason", reason,
				"retained_wal_bytes", st.retained, "wal_status", st.walStatus)
			if err := l.markResync(ctx, conn); err != nil {
				return err
			}
			if err := dropSlot(ctx, conn, l.Slot); err != nil {
				return err
			}
			st.exists = false
		}
	}
	m := newMapper()
	m.setPlan(l.Plan())
	start := st.confirmed
	if !st.exists {
		l.Log.Warn("replication slot missing; creating it and resyncing every target", "slot", l.Slot)
		if err := l.markResync(ctx, conn); err != nil {
			return err
		}
		if start, err = rc.createSlot(ctx, l.Slot); err != nil {
			return err
		}
		// Claims the slot as matcol's, so that trigger mode's apply may retire it.
		if err := execDurable(ctx, conn, `INSERT INTO matcol.setting (name, value) VALUES ($1, 'true')
			ON CONFLICT (name) DO NOTHING`, SlotKey(l.Slot)); err != nil {
			return fmt.Errorf("record slot: %w", err)
		}
		l.update(func(s *Stats) { s.Resyncs++ })
	}
	var pending bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM matcol.setting WHERE name = $1)`, l.resyncKey()).Scan(&pending); err != nil {
		return fmt.Errorf("read resync marker: %w", err)
	}
	if pending {
		m.resync()
		if err := l.flush(ctx, conn, m, true, time.Time{}); err != nil {
			return err
		}
		l.Log.Warn("queued a resync of every target", "targets", len(m.plan.Targets))
	}
	if err := rc.start(ctx, l.Slot, l.Publication, start); err != nil {
		return err
	}
	streaming()
	l.update(func(s *Stats) { s.Streaming = true })
	defer l.update(func(s *Stats) { s.Streaming = false })
	l.Log.Info("streaming invalidations", "slot", l.Slot, "from", start.String())
	for {
		err := l.stream(ctx, conn, rc, m, start)
		var h *holdError
		if !errors.As(err, &h) {
			return err
		}
		// Ending the walsender ends its decoding; the slot keeps the WAL from h.at on.
		rc.close(ctx)
		if err := l.hold(ctx, conn, h.until); err != nil {
			return err
		}
		next, err := connectRepl(ctx, l.DSN)
		if err != nil {
			rc = nil
			return err
		}
		rc, start = next, h.at
		if err := rc.start(ctx, l.Slot, l.Publication, start); err != nil {
			return err
		}
	}
}

// holdError ends a stream for a hold: everything before at is queued and acked, and decoding
// resumes at the latest at until (a local time).
type holdError struct {
	at    pglogrepl.LSN
	until time.Time
}

func (h *holdError) Error() string { return "decoding held for a saturated application" }

// hold waits while the materializer yields, until until at the latest, or until the slot retains
// a quarter of MaxRetainedWAL or leaves wal_status "reserved": a hold never brings the slot near
// its recreation or the server near removing its WAL.
func (l *Listener) hold(ctx context.Context, conn *pgx.Conn, until time.Time) error {
	l.update(func(s *Stats) { s.Holding = true; s.Holds++ })
	defer l.update(func(s *Stats) { s.Holding = false })
	start := time.Now()
	l.Log.Info("holding decoding while the application is saturated", "until", until.Format(time.RFC3339))
	defer func() { l.Log.Info("decoding resumes", "held", time.Since(start).Round(time.Millisecond)) }()
	for time.Now().Before(until) && l.Yielding() {
		if !dial.Sleep(ctx, min(holdCheck, time.Until(until))) {
			return ctx.Err()
		}
		st, err := readSlot(ctx, conn, l.Slot)
		if err != nil {
			return err
		}
		l.update(func(s *Stats) { s.RetainedWALBytes, s.WALStatus = st.retained, st.walStatus })
		// Past "reserved" the slot's WAL outgrows max_wal_size and, with max_slot_wal_keep_size,
		// nears removal.
		if !st.exists || st.retained >= l.MaxRetainedWAL/4 || st.walStatus != "reserved" {
			break
		}
	}
	// The old walsender exits on its own time; starting before it has let go of the slot fails.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		st, err := readSlot(ctx, conn, l.Slot)
		if err != nil {
			return err
		}
		if !st.active {
			return nil
		}
		if !dial.Sleep(ctx, 20*time.Millisecond) {
			return ctx.Err()
		}
	}
	return nil
}

// holdCheck is how often a hold reads the slot and the throttle.
const holdCheck = 250 * time.Millisecond

func (l *Listener) markResync(ctx context.Context, conn *pgx.Conn) error {
	err := execDurable(ctx, conn, `INSERT INTO matcol.setting (name, value) VALUES ($1, 'true')
		ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = now()`, l.resyncKey())
	if err != nil {
		return fmt.Errorf("record resync: %w", err)
	}
	return nil
}

// execDurable commits sql with synchronous_commit on (matcol's sessions have it off): the slot
// is created right after, and a crash must not keep the slot but lose the record.
func execDurable(ctx context.Context, conn *pgx.Conn, sql string, args ...any) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = on`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, sql, args...)
		return err
	})
}

// flush inserts the collected entries into matcol.pending in one transaction, which also clears
// a recorded resync when it carries one, and wakes a sleeping daemon. When it returns nil the
// entries are durable. They are enqueued at committed, the commit time of the earliest transaction
// among them (the server's clock; zero for now).
func (l *Listener) flush(ctx context.Context, conn *pgx.Conn, m *mapper, clearResync bool, committed time.Time) error {
	entries := m.take()
	if len(entries) == 0 && !clearResync {
		return nil
	}
	tids := make([]int32, len(entries))
	deps := make([]int32, len(entries))
	vals := make([]*string, len(entries))
	for i, e := range entries {
		tids[i] = int32(e.target)
		deps[i] = int32(e.dep)
		if !e.all {
			v := e.vals
			vals[i] = &v
		}
	}
	var resync *string // the resync record to remove, if any
	if clearResync {
		k := l.resyncKey()
		resync = &k
	}
	// One statement, so one round trip: it commits on its own (an implicit transaction).
	var at *time.Time
	if !committed.IsZero() {
		at = &committed
	}
	if _, err := conn.Exec(ctx, flushSQL, tids, deps, vals, resync, listener.Channel, listener.PayloadQueue, at); err != nil {
		return fmt.Errorf("queue invalidations: %w", err)
	}
	l.Sink.QueueFilled()
	return nil
}

// flushSQL queues entries $1-$3, enqueued at $7 (never later than now; NULL: now), deletes
// setting $4 (a recorded resync; NULL names none) and wakes a sleeping daemon. The ack that
// follows a flush is only sound if its commit is on disk first: with synchronous_commit off, a
// crash could keep the slot's new position and lose the entries.
// set_config(…, true) holds until the statement's own transaction ends, commit included; the
// CTE that calls it is the first one every branch reads.
const flushSQL = `WITH durable AS MATERIALIZED (SELECT set_config('synchronous_commit', 'on', true) AS sync),
queued AS (
	INSERT INTO matcol.pending (target_id, dependency_id, vals, enqueued_at)
	SELECT t, nullif(d, 0), v::jsonb, least($7::timestamptz, clock_timestamp())
	FROM durable, unnest($1::int[], $2::int[], $3::text[]) AS u(t, d, v)
	RETURNING 1),
cleared AS (
	DELETE FROM matcol.setting WHERE name = $4::text AND (SELECT sync FROM durable) IS NOT NULL
	RETURNING 1)
SELECT pg_notify($5, $6) FROM matcol.wake
WHERE sleeping AND (SELECT sync FROM durable) IS NOT NULL`

// guard reads the slot and reports whether streaming must stop for a recreate.
func (l *Listener) guard(ctx context.Context, conn *pgx.Conn) error {
	st, err := readSlot(ctx, conn, l.Slot)
	if err != nil {
		return err
	}
	if !st.exists {
		return fmt.Errorf("replication slot %s disappeared", l.Slot)
	}
	l.update(func(s *Stats) {
		s.ConfirmedFlushLSN = st.confirmed.String()
		s.RetainedWALBytes = st.retained
		s.WALStatus = st.walStatus
	})
	if reason := st.needsRecreate(l.MaxRetainedWAL); reason != "" {
		return fmt.Errorf("replication slot %s must be recreated: %s", l.Slot, reason)
	}
	return nil
}
