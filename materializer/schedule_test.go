package materializer

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/plan"
)

// While a batch runs on a table, the drainer still sees the queued entries that batch took (they
// are gone only when it commits), and marks the table again. A second worker sent to it would
// find nothing, on the cores the first needs: the table waits for the batch, then runs once more.
// A backlog (a full take) does go to other workers at once.
func TestRunningTableWaitsForItsBatch(t *testing.T) {
	m := &Materializer{byID: map[int]*target{}, ready: make(chan struct{}, 4)}
	tg := &target{plan: &plan.Target{ID: 1}}
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
