package logical

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// readsOver counts the reads a coalescing socket needs for a stream of small messages, one every
// millisecond for 300 ms, as a walsender sends them.
func readsOver(t *testing.T, long bool) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		for range 300 {
			if _, err := c.Write([]byte("0123456789")); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	c := newCoalescingConn(raw)
	defer c.Close()
	c.coalesce.Store(true)
	c.long.Store(long)
	reads, got := 0, 0
	buf := make([]byte, 1<<16)
	for got < 3000 {
		n, err := c.Read(buf)
		require.NoError(t, err)
		got += n
		reads++
	}
	return reads
}

// While the materializer yields, the stream is read in a tenth of the wake-ups.
func TestCoalescingReadsLessWhileYielding(t *testing.T) {
	short, long := readsOver(t, false), readsOver(t, true)
	t.Logf("reads: %d at %s, %d at %s", short, coalesce, long, coalesceYielding)
	require.LessOrEqual(t, long, 6, "100 ms windows over a 300 ms stream")
	require.Greater(t, short, 2*long, "10 ms windows read far more often")
}
