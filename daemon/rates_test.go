package daemon

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// rows_per_second is the rate over the last minute, not since the process started.
func TestRatesCoverTheLastMinute(t *testing.T) {
	var r rates
	t0 := time.Now()
	require.Zero(t, r.observe(1, 0, t0))
	// 100 rows/s for two minutes, then idle.
	for s := 5; s <= 120; s += 5 {
		r.observe(1, int64(s*100), t0.Add(time.Duration(s)*time.Second))
	}
	require.InDelta(t, 100, r.observe(1, 12000, t0.Add(120*time.Second)), 1)
	for s := 125; s <= 180; s += 5 {
		r.observe(1, 12000, t0.Add(time.Duration(s)*time.Second))
	}
	require.InDelta(t, 0, r.observe(1, 12000, t0.Add(185*time.Second)), 1, "a minute idle reads 0, not the lifetime average")
	// A count that restarts does not make a negative rate.
	require.GreaterOrEqual(t, r.observe(1, 10, t0.Add(190*time.Second)), 0.0)
	require.InDelta(t, 10, r.observe(1, 60, t0.Add(195*time.Second)), 0.01)
}
