package refresh

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRetryDelayDoublesUpToTheCap(t *testing.T) {
	for n, want := range map[int]time.Duration{1: 5 * time.Second, 2: 10 * time.Second, 3: 20 * time.Second,
		4: 40 * time.Second, 5: time.Minute, 50: time.Minute} {
		for range 100 {
			d := retryDelay(n, 5*time.Second, time.Minute)
			require.GreaterOrEqual(t, d, want*9/10, "failure %d", n)
			require.LessOrEqual(t, d, want*11/10, "failure %d", n)
		}
	}
}
