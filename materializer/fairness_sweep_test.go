package materializer

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/plan"
)

func TestSweepTakesTargetsInTurn(t *testing.T) {
	m := &Materializer{byID: map[int]*target{}, ready: make(chan struct{}, 1)}
	for id := 1; id <= 10; id++ {
		m.byID[id] = &target{plan: &plan.Target{ID: id}, tableState: &tableState{}}
	}
	seen := map[int]int{}
	for round := 0; round < 5; round++ {
		m.sweepSome(4)
		for _, q := range m.queue {
			seen[q.plan.ID]++
			q.queued = false
		}
		m.queue = nil
	}
	require.Len(t, seen, 10, "every target is swept")
	for id, n := range seen {
		require.Equal(t, 2, n, "target %d: 20 checks over 10 targets, two each", id)
	}
}
