// Package materializer recomputes stale rows: it applies queued invalidations to their targets,
// then claims stale rows in small batches, runs every enrichment of the table for them and
// stamps them, each batch one short transaction.
package materializer

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/listener"
	"github.com/matcol/matcol/plan"
)

// Config tunes the materializer.
type Config struct {
	// Workers is the number of concurrent batches. Defaults to 4.
	Workers int
	// TableWorkers caps the concurrent batches of one table's backlog once it has lasted
	// RampAfter; 0 leaves it at Workers.
	TableWorkers int
	// RampAfter is how long one worker has a table's backlog to itself; 0, the default, lets up
	// to TableWorkers share it from its first batch (see tableCap).
	RampAfter time.Duration
	// BatchSize is the starting rows per batch. Defaults to 500.
	BatchSize int
	// TargetBatchDuration is what batch sizing aims for. Defaults to 100ms.
	TargetBatchDuration time.Duration
	// SweepInterval is the safety-net check for work no notification announced. Defaults to 5s.
	SweepInterval time.Duration
	// PollInterval is how often the queue is polled while work keeps arriving. Defaults to 50ms.
	PollInterval time.Duration
	// Linger is how long the drainer keeps polling after the last work before it sleeps and asks
	// writers to notify it. Defaults to 250ms: writers that commit more often than that keep it
	// polling, so NOTIFY's commit lock stays off a busy write path, while a change after a pause
	// wakes it at once instead of waiting up to a poll interval.
	Linger time.Duration
	// MaxReplicaLag holds work while any replica's replay lag exceeds it. 0 disables. Defaults to 0.
	MaxReplicaLag time.Duration
	// LatencyFactor throttles when, while application transactions are in flight, a trivial
	// statement takes this many times its quiet latency; negative disables it. Defaults to 4.
	LatencyFactor float64
	// MaxDelay: at the throttle's highest level workers wait while the oldest waiting change is
	// younger than this, and past it run without pauses; negative never waits. Defaults to 30s.
	MaxDelay time.Duration
	// ExpiryBatch is how many expired rows per table one sweep invalidates, so that rows stamped
	// together do not all expire in one burst. Defaults to 1000.
	ExpiryBatch int
	// PassShare: a table whose queued keys reach this share of its rows (pg_class.reltuples), and
	// at least PassMin of them, has them answered by a pass over every row instead of queue
	// batches. Defaults to passShare; negative never switches.
	PassShare float64
	// PassMin is the fewest queued keys that switch to a pass. Defaults to 10,000.
	PassMin int
}

func (c *Config) defaults() {
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.TableWorkers <= 0 || c.TableWorkers > c.Workers {
		c.TableWorkers = c.Workers
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.TargetBatchDuration <= 0 {
		c.TargetBatchDuration = 100 * time.Millisecond
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = 5 * time.Second
	}
	if c.PassShare == 0 {
		c.PassShare = passShare
	}
	if c.PassMin <= 0 {
		c.PassMin = 10000
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 50 * time.Millisecond
	}
	if c.Linger <= 0 {
		c.Linger = 250 * time.Millisecond
	}
	if c.LatencyFactor == 0 {
		c.LatencyFactor = 4
	}
	if c.ExpiryBatch <= 0 {
		c.ExpiryBatch = 1000
	}
	if c.MaxDelay == 0 {
		c.MaxDelay = 30 * time.Second
	}
}

// Stats are running totals, safe to read at any time.
type Stats struct {
	RowsMaterialized atomic.Int64
	Batches          atomic.Int64
	BatchErrors      atomic.Int64
	RowsInvalidated  atomic.Int64
	RowsFailed       atomic.Int64
	RowsExpired      atomic.Int64
	Throttled        atomic.Int64
	LastBatchNanos   atomic.Int64
	// EntriesDropped counts queued invalidations that could not be applied as they were: values
	// that are no key (dropped), or values mapping SQL failed on (the whole table invalidated).
	EntriesDropped atomic.Int64
	// BacklogsToPass counts backlogs of queued keys handed to a pass (Config.PassShare).
	BacklogsToPass atomic.Int64
	// HarmProbes counts the throttle's reads of the database's activity (harm.go).
	HarmProbes atomic.Int64
}

// Materializer runs the workers and the queue drainer. It implements listener.Sink.
type Materializer struct {
	pool *pgxpool.Pool
	// Control, when set, serves the drainer and the periodic checks, so that the worker pool
	// serves batches alone. pgxpool hands out the connection released last: a batch then runs on
	// the backend that ran the one before, whose caches and mapped shared memory are warm,
	// instead of on one the drainer's polls just took turns with.
	Control *pgxpool.Pool
	log     hclog.Logger
	cfg     Config
	Stats   Stats

	mu      sync.Mutex
	plan    *plan.Plan
	byHash  map[string]*target
	byID    map[int]*target
	queue   []*target
	ready   chan struct{} // a token per push, so idle workers wake
	drainCh chan struct{}

	sweepNext     int          // the target id the next sweep starts at
	drainSize     int          // entries the next drain takes
	directOffAll  bool         // tests: the drainer takes every direct entry, setting rows stale
	pinLevel      atomic.Int32 // tests: the throttle level, whatever the probe says
	paused        atomic.Bool
	asleep        atomic.Bool // the drainer found no work and waits for a NOTIFY
	replicaBehind atomic.Bool
	harm          harm         // owned by watchLoad
	level         atomic.Int32 // the throttle level, from harm
	oldest        atomic.Int64 // nanoseconds the oldest waiting change has waited, from watchLoad
	walQueue      atomic.Bool  // the throttle's level comes from the application queueing for the WAL
	upkeep        upkeep

	// OnGone, when set before Run, is called when a target's table turns out to be gone (a tenant
	// schema dropped), so that the catalog is read again.
	OnGone func()

	// OnFresh, when set before Run, receives the latency from a change's commit to its row's
	// stamp, for each change the materializer can attribute.
	OnFresh func(time.Duration)

	// OnPlanChanged, when set before Run, is called when work finds the registry newer than the
	// plan: the caller builds the new plan and hands it to SetPlan.
	OnPlanChanged func()
	// wantVersion is the newest registry version work has seen; gateBusyUntil holds work while a
	// registry change commits.
	wantVersion   int64
	gateBusyUntil time.Time
}

// TargetStats returns the rows this process materialized for a target, and its last batch time.
func (m *Materializer) TargetStats(id int) (int64, time.Duration) {
	m.mu.Lock()
	t := m.byID[id]
	m.mu.Unlock()
	if t == nil {
		return 0, 0
	}
	return t.rows.Load(), time.Duration(t.lastBatch.Load())
}

// Paused reports whether materialization is paused.
func (m *Materializer) Paused() bool { return m.paused.Load() }

var _ listener.Sink = (*Materializer)(nil)

type target struct {
	plan     *plan.Target
	version  int64 // the registry version of the plan this target comes from
	claimSQL string
	writeSQL string
	// With min_interval: how long rows are held, and the statements that hold and find them.
	minInterval time.Duration
	debounceSQL string
	nextDueSQL  string
	expiredSQL  string      // claims expired rows
	passSQL     string      // writes a pass's chunk of locked rows
	passStep    string      // a pass's chunk in one statement, locking nothing; "" when the SQL cannot take it
	passStepOff atomic.Bool // set when passStep does not plan
	takeSQL     string      // takes direct entries (plan.QueueTakeSQL)

	// The table's scheduling state outlives plan changes: SetPlan hands it to the new target of
	// the same table, so a worker that ends a batch begun under the old plan records its end,
	// rows and sizing where the scheduler looks.
	*tableState
}

// tableState is what the scheduler knows of one table's work; the materializer's mutex guards
// it, except the atomics.
type tableState struct {
	batchSize int
	queued    bool
	claim     bool // a claim of stale rows may find some; queued keys alone do not set it
	running   int
	more      bool // the last batch was full
	dirty     bool // marked while a batch ran
	// The last shrink of batchSize, and the size it may not shrink below until floorUntil
	// (observe).
	shrunk     shrink
	floor      int
	floorUntil time.Time
	// backlogAt is when more last became true (setMoreLocked).
	backlogAt time.Time
	backoff   int // consecutive failures
	retryAt   time.Time
	wake      *time.Timer // marks the target when rows held by min_interval come due
	wakeAt    time.Time

	entryWarnedAt time.Time // the last warning about a bad queued entry

	walk      *walk // a pass over every row, after a whole-table invalidation
	expireDue int   // expired rows this sweep's round still recomputes
	expiring  bool  // a worker recomputes expired rows
	// direct is true while direct entries may wait for a queue batch; until directOffUntil the
	// drainer takes them instead.
	direct         bool
	directOffUntil time.Time
	passCheckAt    time.Time // when the size of a backlog of queued keys was last checked
	// The table's queue batches computing now, and the rows per second of the last one to end: a
	// take counts the rows those batches have likely done (doneLocked).
	flights []*flight
	rate    float64

	rows      atomic.Int64 // materialized by this process
	lastBatch atomic.Int64 // nanoseconds
	fresh     freshness
}

// New returns a materializer for p.
func New(pool *pgxpool.Pool, p *plan.Plan, cfg Config, log hclog.Logger) *Materializer {
	cfg.defaults()
	m := &Materializer{pool: pool, log: log, cfg: cfg,
		ready: make(chan struct{}, cfg.Workers), drainCh: make(chan struct{}, 1)}
	m.harm.factor = cfg.LatencyFactor
	m.SetPlan(p)
	return m
}

// control returns the pool of the drainer and the periodic checks.
func (m *Materializer) control() *pgxpool.Pool {
	if m.Control != nil {
		return m.Control
	}
	return m.pool
}

// SetPlan swaps in a new plan, keeping the state of targets that stay.
func (m *Materializer) SetPlan(p *plan.Plan) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.byID
	m.plan = p
	m.byHash = map[string]*target{}
	m.byID = map[int]*target{}
	m.queue = nil
	for _, pt := range p.Targets {
		size := m.cfg.BatchSize
		if n := pt.BatchSettings().BatchSize; n > 0 {
			size = n
		}
		t := &target{plan: pt, version: p.Version, claimSQL: plan.ClaimSQL(pt), writeSQL: plan.WriteSQL(pt, pt.Enrichments, true),
			minInterval: pt.MinInterval()}
		if t.minInterval > 0 {
			t.debounceSQL, t.nextDueSQL = plan.DebounceSQL(pt), plan.NextDueSQL(pt)
		}
		if expiry(pt) > 0 {
			t.expiredSQL = plan.ExpiredClaimSQL(pt)
		}
		t.passSQL = plan.PassWriteSQL(pt)
		t.takeSQL = plan.QueueTakeSQL(pt)
		if step, err := plan.PassStepSQL(pt); err == nil {
			t.passStep = step
		}
		if o := old[pt.ID]; o != nil && o.plan.Table == pt.Table {
			// Its batches, pass and sizing go on; what the old plan's failures taught does not.
			t.tableState = o.tableState
			t.queued, t.backoff, t.retryAt = false, 0, time.Time{}
		} else {
			t.tableState = &tableState{batchSize: size}
		}
		t.claim = true
		m.byHash[pt.Hash] = t
		m.byID[pt.ID] = t
	}
	for _, t := range m.byID {
		m.pushLocked(t)
	}
}

// Plan returns the current plan.
func (m *Materializer) Plan() *plan.Plan {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.plan
}

// TargetStale implements listener.Sink.
func (m *Materializer) TargetStale(hash string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t := m.byHash[hash]; t != nil {
		m.markLocked(t)
	}
}

// QueueFilled implements listener.Sink.
func (m *Materializer) QueueFilled() {
	select {
	case m.drainCh <- struct{}{}:
	default:
	}
}

// Resync implements listener.Sink: every target is checked and the queue drained.
func (m *Materializer) Resync() {
	m.mu.Lock()
	for _, t := range m.byID {
		m.markLocked(t)
	}
	m.mu.Unlock()
	m.QueueFilled()
}

// SweepTargets is how many tables one safety-net sweep checks for stale rows. Each check is a
// short transaction on the table; with thousands of tenant tables, checking all of them every
// sweep_interval would keep the workers busy with empty claims, so they take turns.
const SweepTargets = 500

// sweepSome marks the next n targets, in turn, for a check.
func (m *Materializer) sweepSome(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.byID) <= n {
		for _, t := range m.byID {
			m.markLocked(t)
		}
		return
	}
	ids := make([]int, 0, len(m.byID))
	for id := range m.byID {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	start, _ := slices.BinarySearch(ids, m.sweepNext)
	for i := 0; i < n; i++ {
		id := ids[(start+i)%len(ids)]
		m.markLocked(m.byID[id])
		m.sweepNext = ids[(start+i+1)%len(ids)]
	}
}

func (m *Materializer) markLocked(t *target) {
	t.claim = true
	m.nudgeLocked(t)
}

// nudgeLocked queues t for a worker without a claim of stale rows: queued keys are taken by
// queue batches, and a claim on a table without an index on stale rows scans it whole. A table
// a batch is running on waits for it (finish queues it again): the drainer sees that batch's
// entries until it commits, and a second batch would find nothing, on cores the first needs. A
// backlog gets more workers through more.
func (m *Materializer) nudgeLocked(t *target) {
	if t.running > 0 {
		t.dirty = true
		return
	}
	m.pushLocked(t)
}

func (m *Materializer) pushLocked(t *target) {
	// The queue holds the current plan's targets: a worker runs the SQL of the one it pops.
	live := m.byID[t.plan.ID]
	if live == nil || live.tableState != t.tableState || live.queued {
		return // dropped from the plan, or queued already
	}
	t = live
	t.queued = true
	m.queue = append(m.queue, t)
	if t.running < m.tableCap(t, time.Now()) {
		m.wakeLocked()
	}
}

// wakeLocked wakes an idle worker, if any.
func (m *Materializer) wakeLocked() {
	select {
	case m.ready <- struct{}{}:
	default:
	}
}

// next pops the next target that may run now, or returns nil. Among those, the highest priority
// wins; equal priorities take turns, one batch each, so one table's flood cannot starve the rest.
// A table already running as many batches as tableCap allows waits for one of them (finish
// wakes a worker).
func (m *Materializer) next() *target {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	best := -1
	for i, t := range m.queue {
		if now.Before(t.retryAt) || t.running >= m.tableCap(t, now) {
			continue
		}
		if best < 0 || t.priority() > m.queue[best].priority() {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	t := m.queue[best]
	m.queue = append(m.queue[:best:best], m.queue[best+1:]...)
	t.queued = false
	t.running++
	if t.more && t.running < m.tableCap(t, now) {
		// A backlog: let another worker take the same table meanwhile.
		m.pushLocked(t)
	}
	return t
}

// tableCap is how many batches of t may run at once: for a backlog, up to TableWorkers from its
// first batch (after RampAfter when set). Rows no worker has touched are as cold for one backend
// as for two, and two on two cores share the page faults (docs/architecture.md has the figures).
func (m *Materializer) tableCap(t *target, now time.Time) int {
	if !t.more || now.Sub(t.backlogAt) < m.cfg.RampAfter {
		return 1
	}
	return m.cfg.TableWorkers
}

// setMoreLocked records whether t has a backlog, and since when.
func (m *Materializer) setMoreLocked(t *target, more bool) {
	if more && !t.more {
		t.backlogAt = time.Now()
	}
	t.more = more
}

func (t *target) priority() int {
	p := 0
	for i, e := range t.plan.Enrichments {
		if i == 0 || e.Settings.Priority > p {
			p = e.Settings.Priority
		}
	}
	return p
}

// finish ends a batch of t; full says the claim got all the rows it asked for.
func (m *Materializer) finish(t *target, full, failed bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t.running--
	if t.queued {
		// It may have waited at its cap.
		m.wakeLocked()
	}
	if failed {
		t.backoff++
		t.retryAt = time.Now().Add(dial.Backoff(t.backoff, 30*time.Second))
		m.setMoreLocked(t, false)
		m.pushLocked(t)
		return
	}
	t.backoff = 0
	m.setMoreLocked(t, full)
	if t.more || t.dirty {
		t.dirty = false
		m.pushLocked(t)
	}
}

// Run blocks until ctx ends. A batch in flight when ctx ends is allowed to commit.
func (m *Materializer) Run(ctx context.Context) error {
	// Know the pause switch and replica lag before the first batch, not a second after it.
	m.checkLoad(ctx)
	m.warm(ctx)
	g, ctx := errgroup.WithContext(ctx)
	for i := 0; i < m.cfg.Workers; i++ {
		g.Go(func() error { m.worker(ctx, i); return nil })
	}
	g.Go(func() error { m.drainLoop(ctx); return nil })
	g.Go(func() error { m.watchLoad(ctx); return nil })
	g.Go(func() error {
		tick := time.NewTicker(m.cfg.SweepInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
				m.sweepSome(SweepTargets)
				m.QueueFilled()
				if !m.holding() {
					m.sweep(ctx)
				}
			}
		}
	})
	return g.Wait()
}

func (m *Materializer) worker(ctx context.Context, id int) {
	poll := time.NewTicker(time.Second) // picks up targets whose retry time has come
	defer poll.Stop()
	for ctx.Err() == nil {
		if m.planBehind() {
			dial.Sleep(ctx, 20*time.Millisecond)
			continue
		}
		var t *target
		if !m.holding() && !m.yielding() && (id == 0 || m.level.Load() == 0 || m.overdue()) {
			t = m.next()
		}
		if t == nil {
			select {
			case <-ctx.Done():
				return
			case <-m.ready:
			case <-poll.C:
			}
			continue
		}
		start := time.Now()
		n, full, err := m.work(dial.Touching(ctx, t.plan.Relations()), t)
		if errors.Is(err, errPlanChanged) {
			m.finish(t, true, false)
			continue
		}
		if err != nil {
			m.Stats.BatchErrors.Add(1)
			if ctx.Err() == nil {
				m.logBatchError(t, err)
			}
		} else if m.upkeep.batchOK(t.plan.ID) {
			m.log.Info("batches succeed again", "table", t.plan.Table.String())
		}
		m.finish(t, full, err != nil)
		if n > 0 {
			if wait := m.throttle(time.Since(start)); wait > 0 {
				dial.Sleep(ctx, wait)
			}
		}
	}
}

func (m *Materializer) logBatchError(t *target, err error) {
	if dial.IsConnectionError(err) {
		m.log.Warn("database unreachable; retrying", "table", t.plan.Table.String(), "error", err)
		return
	}
	if !m.upkeep.batchFailed(t.plan.ID, err) {
		m.log.Debug("batch failed again", "table", t.plan.Table.String(), "error", err)
		return
	}
	m.log.Error("batch failed; retrying with backoff", "table", t.plan.Table.String(), "error", err)
}

// work runs one unit of work on t: a batch of stale rows and, when that finds no backlog, a
// chunk of a pass over every row or of expired rows. more says t has work left.
func (m *Materializer) work(ctx context.Context, t *target) (n int, more bool, err error) {
	if m.takeDirect(t) {
		if m.checkBacklog(t) {
			if switched, err := m.keysToPass(ctx, t); err != nil || switched {
				return 0, switched, err
			}
		}
		if n, more, err = m.queueBatch(ctx, t); err != nil || more {
			return n, more, err
		}
	}
	if m.takeClaim(t) {
		var claimed int
		claimed, more, err = m.batch(ctx, t)
		n += claimed
		if err != nil || more {
			m.mu.Lock()
			t.claim = true
			m.mu.Unlock()
			return n, more, err
		}
	}
	if w := m.takeWalk(t); w != nil {
		return m.walkChunk(ctx, t, w)
	}
	if m.takeExpiry(t) {
		defer m.doneExpiry(t)
		return m.expireChunk(ctx, t)
	}
	return n, false, nil
}

// takeClaim reports whether t's next unit of work claims stale rows, clearing the flag unless t
// has a backlog: then other workers, up to the table's cap, claim stale rows beside this one
// (SKIP LOCKED keeps them apart), where they found the flag gone and did nothing.
func (m *Materializer) takeClaim(t *target) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := t.claim
	if !t.more {
		t.claim = false
	}
	return c
}

// MaterializeAll runs batches on every target until none has stale rows left, in the calling
// goroutine. Tests and one-shot catch-ups use it.
func (m *Materializer) MaterializeAll(ctx context.Context) (int, error) {
	total := 0
	for {
		m.mu.Lock()
		targets := make([]*target, 0, len(m.byID))
		for _, t := range m.byID {
			t.claim = true
			targets = append(targets, t)
		}
		m.mu.Unlock()
		did := 0
		for _, t := range targets {
			n, more, err := m.work(ctx, t)
			if err != nil {
				return total, err
			}
			total += n
			if n > 0 || more {
				did++
			}
		}
		if did == 0 {
			return total, nil
		}
	}
}
