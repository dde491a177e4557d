package logical

import (
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
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

// TestCoalescingHelperWriter is the other process of TestCoalescingSleepsThroughArrivals: it
// writes small messages as a walsender does, each sent at once (TCP_NODELAY, Go's default).
func TestCoalescingHelperWriter(t *testing.T) {
	addr := os.Getenv("MATCOL_COALESCE_WRITER")
	if addr == "" {
		t.Skip("run by TestCoalescingSleepsThroughArrivals")
	}
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	for range arrivals {
		_, err := c.Write([]byte("0123456789"))
		require.NoError(t, err)
		time.Sleep(300 * time.Microsecond)
	}
}

const arrivals = 1000

// switchesReading reads the helper's stream through a coalescing socket and returns the context
// switches of this process meanwhile: the wake-ups the stream cost it.
func switchesReading(t *testing.T, lowat bool) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCoalescingHelperWriter$")
	cmd.Env = append(os.Environ(), "MATCOL_COALESCE_WRITER="+ln.Addr().String())
	require.NoError(t, cmd.Start())
	defer cmd.Wait() //nolint:errcheck // its failures show in the stream's length
	raw, err := ln.Accept()
	require.NoError(t, err)
	c := newCoalescingConn(raw)
	defer c.Close()
	if !lowat {
		c.raw = nil
	}
	c.coalesce.Store(true)
	before := contextSwitches(t)
	buf := make([]byte, 1<<16)
	for got := 0; got < 10*arrivals; {
		n, err := c.Read(buf)
		require.NoError(t, err)
		got += n
	}
	return contextSwitches(t) - before
}

func contextSwitches(t *testing.T) int {
	tasks, err := os.ReadDir("/proc/self/task")
	require.NoError(t, err)
	total := 0
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/status")
		if err != nil {
			continue // the thread ended
		}
		for _, line := range strings.Split(string(b), "\n") {
			if name, v, ok := strings.Cut(line, ":"); ok && name == "voluntary_ctxt_switches" {
				n, err := strconv.Atoi(strings.TrimSpace(v))
				require.NoError(t, err)
				total += n
			}
		}
	}
	return total
}

// Segments that arrive while a read waits out its window do not wake the process: without
// SO_RCVLOWAT each one woke Go's network poller for nothing, more than one context switch per
// message of the stream.
func TestCoalescingSleepsThroughArrivals(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts context switches in /proc")
	}
	woken, quiet := switchesReading(t, false), switchesReading(t, true)
	t.Logf("context switches over %d messages: %d with every arrival waking, %d with SO_RCVLOWAT", arrivals, woken, quiet)
	require.Less(t, quiet*10, woken*7, "the window sleeps through arrivals")
}
