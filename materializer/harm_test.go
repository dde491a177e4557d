package materializer

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Application backends queueing for the WAL throttle matcol, as the probe's latency does, only
// while the application keeps nearly all its connections in a transaction (it runs as fast as the
// database lets it) and the load signals are on.
func TestWALWaitsThrottle(t *testing.T) {
	now := time.Now()
	second := func(h *harm, s sample) int {
		for i := 0; i < 3; i++ {
			h.add(s, now)
		}
		s.latency = time.Millisecond
		level, _ := h.add(s, now)
		now = now.Add(time.Second)
		return level
	}
	h := &harm{factor: 4}
	require.Zero(t, second(h, sample{appTx: 8, appConns: 8}), "busy, but nobody waits")
	require.Zero(t, second(h, sample{appTx: 4, walWaits: 3, appConns: 16}),
		"writers that idle between transactions wait for the WAL at a rate they reach: no harm")
	// A WAL queue is read every half second (two samples), timed or not.
	half := func(h *harm, s sample) int {
		h.add(s, now)
		level, _ := h.add(s, now)
		now = now.Add(500 * time.Millisecond)
		return level
	}
	level := half(h, sample{appTx: 8, walWaits: 2, appConns: 8})
	require.Equal(t, maxLevel/2, level, "half a second of it may be connections opening")
	require.Contains(t, h.reason, "wait for the WAL")
	level = half(h, sample{appTx: 8, walWaits: 2, appConns: 8})
	require.Equal(t, maxLevel, level, "a WAL queue that lasts throttles fully: any write of matcol's lengthens it")
	require.Equal(t, maxLevel, second(h, sample{appTx: 7, walWaits: 1, appConns: 8}))
	// Seconds whose samples miss the queue while the application stays saturated keep the yield,
	// a few of them.
	for range walGrace {
		require.Equal(t, maxLevel, second(h, sample{appTx: 8, appConns: 8}))
		require.True(t, h.walHeld)
	}
	require.Equal(t, maxLevel/2, second(h, sample{appTx: 8, appConns: 8}), "and then halves each quiet second")
	require.False(t, h.walHeld)
	// The load ending releases the yield at once.
	require.Equal(t, maxLevel/2, half(h, sample{appTx: 8, walWaits: 2, appConns: 8}))
	require.Equal(t, maxLevel, half(h, sample{appTx: 8, walWaits: 2, appConns: 8}))
	require.Equal(t, maxLevel/2, second(h, sample{appTx: 1, appConns: 8}), "an application no longer saturated")
	require.False(t, h.walHeld)
	require.Zero(t, second(h, sample{appConns: 8}), "an idle application leaves nothing to spare")

	h = &harm{factor: 4}
	half(h, sample{appTx: 6, walWaits: 2, appConns: 11})
	require.Equal(t, maxLevel, half(h, sample{appTx: 6, walWaits: 2, appConns: 11}),
		"8 closed-loop clients, 6 of them in a transaction, beside 3 idle connections: saturated")

	h = &harm{factor: 4}
	require.Zero(t, second(h, sample{appTx: 1, walWaits: 1, appConns: 1}), "a lone writer waiting on its own commits is not a queue")
	h = &harm{factor: -1}
	require.Zero(t, second(h, sample{appTx: 8, walWaits: 4, appConns: 8}), "latency_factor: 0 turns the load signals off")
}
