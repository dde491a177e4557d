package logical

import (
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// coalesce is how long a read of the replication stream waits after a read that drained the
// socket. The walsender sends each message as it decodes it, so a listener that reads as soon as
// data arrives wakes and reads once per message, three or four per application transaction; under
// a steady stream those wake-ups were most of the daemon's CPU (half of it in the kernel on a
// virtual machine). After the wait one read takes what came meanwhile. A read that fills its
// buffer does not wait: a backlog streams at full speed. It adds at most this much to the logical
// path's latency.
const coalesce = 10 * time.Millisecond

// coalesceYielding replaces coalesce while the materializer yields to a saturated application:
// nothing is recomputed then, so latency buys nothing, and the daemon's wake-ups take CPU from
// the application (pgbench tpcb-like, paired runs: 75 and 105 ms of daemon CPU per 1,000
// transactions at 10 ms, 58 and 71 at 100 ms).
const coalesceYielding = 100 * time.Millisecond

// coalescingConn is the walsender connection's socket: once coalesce is on (the stream started),
// a read that follows a short read waits until coalesce after it, or until the read deadline,
// whichever comes first. Moving the deadline (a stop does, see replConn.interrupt) ends the wait.
type coalescingConn struct {
	net.Conn
	coalesce atomic.Bool
	long     atomic.Bool // wait coalesceYielding instead of coalesce

	mu       sync.Mutex
	deadline time.Time
	short    time.Time     // when the last read came back short of its buffer; zero after a full one
	moved    chan struct{} // the read deadline moved
}

func newCoalescingConn(c net.Conn) *coalescingConn {
	return &coalescingConn{Conn: c, moved: make(chan struct{}, 1)}
}

func (c *coalescingConn) SetReadDeadline(t time.Time) error {
	c.setDeadline(t)
	return c.Conn.SetReadDeadline(t)
}

func (c *coalescingConn) SetDeadline(t time.Time) error {
	c.setDeadline(t)
	return c.Conn.SetDeadline(t)
}

func (c *coalescingConn) setDeadline(t time.Time) {
	c.mu.Lock()
	same := c.deadline.Equal(t)
	c.deadline = t
	c.mu.Unlock()
	if same { // the stream sets the same deadline for every message
		return
	}
	select {
	case c.moved <- struct{}{}:
	default:
	}
}

func (c *coalescingConn) Read(p []byte) (int, error) {
	if c.coalesce.Load() {
		if err := c.wait(); err != nil {
			return 0, err
		}
	}
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	if n < len(p) {
		c.short = time.Now()
	} else {
		c.short = time.Time{}
	}
	c.mu.Unlock()
	return n, err
}

// wait sleeps until coalesce (or coalesceYielding) after the last short read, or until the read
// deadline.
func (c *coalescingConn) wait() error {
	for {
		c.mu.Lock()
		deadline, short := c.deadline, c.short
		c.mu.Unlock()
		if short.IsZero() {
			return nil
		}
		window := coalesce
		if c.long.Load() {
			window = coalesceYielding
		}
		until := short.Add(window)
		if !deadline.IsZero() && deadline.Before(until) {
			until = deadline
		}
		wait := time.Until(until)
		if wait <= 0 {
			if !deadline.IsZero() && !time.Now().Before(deadline) {
				return os.ErrDeadlineExceeded
			}
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.moved:
			t.Stop()
		}
	}
}
