package materializer

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/registry"
)

// While a batch runs on a table, the drainer still sees the queued entries that batch took (they
// are gone only when it commits), and marks the table again. A second worker sent to it would
// find nothing, on the cores the first needs: the table waits for the batch, then runs once more.
// A backlog (a full take) does go to other workers at once.
func TestRunningTableWaitsForItsBatch(t *testing.T) {
	m := &Materializer{cfg: Config{Workers: 4, TableWorkers: 4}, byID: map[int]*target{}, ready: make(chan struct{}, 4)}
	tg := &target{plan: &plan.Target{ID: 1}, tableState: &tableState{}}
	m.byID[1] = tg
	mark := func() {
		m.mu.Lock()
		tg.direct = true
		m.nudgeLocked(tg)
		m.mu.Unlock()
	}

	mark()
	require.Same(t, tg, m.next(), "a marked table goes to a worker")
	mark()
	require.Nil(t, m.next(), "marked again while its batch runs: no second worker")
	m.finish(tg, false, false)
	require.Same(t, tg, m.next(), "the mark made while it ran is kept for after the batch")
	m.finish(tg, false, false)
	require.Nil(t, m.next(), "nothing left")

	// A full take: the worker flags a backlog, and the others join.
	mark()
	require.Same(t, tg, m.next())
	m.mu.Lock()
	tg.more = true
	m.pushLocked(tg)
	m.mu.Unlock()
	require.Same(t, tg, m.next(), "a backlog goes to a second worker")
	require.Same(t, tg, m.next(), "and a third")
}

// Batches of one table that ran side by side and report the same rate leave the size that rate
// fits in the target, however many report it; shrinking by a factor per report compounded.
func TestBatchSizeFollowsTheRate(t *testing.T) {
	m := &Materializer{cfg: Config{TargetBatchDuration: 100 * time.Millisecond}}
	tg := &target{tableState: &tableState{batchSize: 1000}}
	for range 4 {
		m.observe(tg, 1000, 1000, 300*time.Millisecond)
	}
	require.Equal(t, 500, tg.batchSize, "1,000 rows in 300 ms: half of them, however many batches say so")
	for range 4 {
		m.observe(tg, 500, 500, 200*time.Millisecond)
	}
	require.Equal(t, 250, tg.batchSize, "half the rows in two thirds of the time: the shrink paid")
	m.observe(tg, 250, 250, 20*time.Millisecond)
	require.Equal(t, 500, tg.batchSize, "a fast full batch doubles the size, no more")
	m.observe(tg, 250, 250, 20*time.Millisecond)
	require.Equal(t, 500, tg.batchSize, "another report from a batch of the old size grows nothing more")
	m.observe(tg, 500, 5, 400*time.Millisecond)
	require.Equal(t, 250, tg.batchSize, "a few rows stuck behind a lock halve it at most")
	m.observe(tg, 250, 100, 30*time.Millisecond)
	require.Equal(t, 250, tg.batchSize, "a short batch that was not full says nothing about a full one")
	m.observe(tg, 250, 250, 180*time.Millisecond)
	require.Equal(t, 138, tg.batchSize, "250 rows in 180 ms: 138 fit")
}

// A statement whose cost is mostly fixed keeps the size that a shrink which did not pay started
// from, rather than shrinking to one row a batch.
func TestBatchSizeStopsShrinkingWhenItDoesNotPay(t *testing.T) {
	m := &Materializer{cfg: Config{TargetBatchDuration: 100 * time.Millisecond}}
	tg := &target{tableState: &tableState{batchSize: 40}}
	m.observe(tg, 40, 40, 200*time.Millisecond)
	require.Equal(t, 20, tg.batchSize)
	m.observe(tg, 20, 20, 190*time.Millisecond)
	require.Equal(t, 40, tg.batchSize, "half the rows took as long: back to 40")
	for range 5 {
		m.observe(tg, 40, 40, 200*time.Millisecond)
	}
	require.Equal(t, 40, tg.batchSize, "no shrink below 40 for a while")
	m.observe(tg, 40, 40, 90*time.Millisecond)
	m.observe(tg, 40, 40, 300*time.Millisecond)
	require.Equal(t, 20, tg.batchSize, "40 rows ran within the target: the floor is gone")
	m.observe(tg, 20, 20, 160*time.Millisecond)
	require.Equal(t, 12, tg.batchSize, "half the rows in about half the time: the shrink paid, and 12 fit")
}

// Workers join a table while its takes come back full; once one comes back short, at most the
// one already sent follows, and no more are sent to take nothing.
func TestShortTakeEndsTheFanOut(t *testing.T) {
	m, tg := markedTable(Config{Workers: 4, TableWorkers: 4})
	require.Same(t, tg, m.next())
	m.noteTake(tg, true)
	require.Same(t, tg, m.next(), "a full take: a second worker joins")
	require.Same(t, tg, m.next(), "and a third")
	m.noteTake(tg, false)
	m.next() // may already be on its way
	require.Nil(t, m.next(), "the queue's end was seen: no more workers for this table")
	m.finish(tg, true, false)
	require.Same(t, tg, m.next(), "a batch that ends full hands the table on again")
}

// A backlog has one worker until it has lasted RampAfter, then up to TableWorkers.
func TestBacklogRampsUpToTableWorkers(t *testing.T) {
	m, tg := markedTable(Config{Workers: 4, TableWorkers: 2, RampAfter: time.Hour})
	require.Same(t, tg, m.next())
	m.noteTake(tg, true)
	require.Nil(t, m.next(), "a new backlog stays with its one worker")
	m.mu.Lock()
	tg.backlogAt = time.Now().Add(-2 * time.Hour)
	m.mu.Unlock()
	require.Same(t, tg, m.next(), "a backlog past RampAfter gets a second worker")
	require.Nil(t, m.next(), "and no more than TableWorkers")
	m.finish(tg, true, false)
	require.Same(t, tg, m.next(), "a finished batch frees a place")
	m.finish(tg, false, false)
	m.finish(tg, false, false)
	m.noteTake(tg, true)
	require.Same(t, tg, m.next())
	m.noteTake(tg, true)
	require.Nil(t, m.next(), "a backlog that ended and came back starts over with one worker")
}

// markedTable returns a materializer of one table, marked for a queue batch.
func markedTable(cfg Config) (*Materializer, *target) {
	m := &Materializer{cfg: cfg, byID: map[int]*target{}, ready: make(chan struct{}, 4)}
	tg := &target{plan: &plan.Target{ID: 1}, tableState: &tableState{}}
	m.byID[1] = tg
	m.mu.Lock()
	tg.direct = true
	m.nudgeLocked(tg)
	m.mu.Unlock()
	return m, tg
}

// A plan change (apply, a rescan) swaps every target, but a table's work goes on: the batch that
// began under the old plan ends on the table's state, where the scheduler counts it, its sizing
// and pass carry over, and the queue hands workers the new plan's target, with its SQL.
func TestPlanChangeKeepsTheTableState(t *testing.T) {
	planOf := func(version int64) *plan.Plan {
		tbl := pgident.Table{Schema: "public", Name: "venue"}
		key := []discovery.Column{{Name: "id", Type: "bigint"}}
		tg := &plan.Target{ID: 1, Table: tbl, Key: key, Owned: []string{"seat_count"}}
		tg.Enrichments = []*plan.Enrichment{{Enrichment: registry.Enrichment{Name: "seats", Columns: []string{"seat_count"}, SQL: "SELECT 1"}, Target: tg}}
		return &plan.Plan{Version: version, Targets: []*plan.Target{tg}}
	}
	m := &Materializer{cfg: Config{Workers: 2, TableWorkers: 2, BatchSize: 100, TargetBatchDuration: 100 * time.Millisecond},
		ready: make(chan struct{}, 2)}
	m.SetPlan(planOf(1))
	old := m.byID[1]
	require.Same(t, old, m.next(), "a new plan's table is checked")
	m.startWalk(old, 7, []int64{7})
	m.observe(old, 100, 100, 10*time.Millisecond)

	m.SetPlan(planOf(2))
	live := m.byID[1]
	require.NotSame(t, old, live)
	require.Equal(t, 1, live.running, "the batch in flight counts on the new target")
	require.NotNil(t, live.walk, "the pass goes on")
	require.Equal(t, 200, live.batchSize, "so does the sizing")

	m.finish(old, true, false)
	require.Equal(t, 0, live.running, "the old plan's batch ends where it was counted")
	m.observe(old, 200, 200, 10*time.Millisecond)
	require.Equal(t, 400, live.batchSize)
	for range 2 {
		if got := m.next(); got != nil {
			require.Same(t, live, got, "workers get the new plan's target, never the old one")
			m.finish(got, false, false)
		}
	}
	m.mu.Lock()
	m.pushLocked(old)
	m.mu.Unlock()
	require.Same(t, live, m.next(), "pushing the old target queues the live one")
}
