package logical

import (
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
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

	raw   syscall.RawConn // for SO_RCVLOWAT; nil where the socket has none
	quiet bool            // SO_RCVLOWAT is up: arrivals do not wake the poller

	mu       sync.Mutex
	deadline time.Time
	short    time.Time     // when the last read came back short of its buffer; zero after a full one
	moved    chan struct{} // the read deadline moved
}

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c, moved: make(chan struct{}, 1)}
	if sc, ok := c.(syscall.Conn); ok {
		cc.raw, _ = sc.SyscallConn()
	}
	return cc
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
	on := c.coalesce.Load()
	if on {
		if err := c.wait(); err != nil {
			return 0, err
		}
		// Should this read find nothing and park, the next byte must wake it.
		c.setQuiet(false)
	}
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	if n < len(p) {
		c.short = time.Now()
	} else {
		c.short = time.Time{}
	}
	c.mu.Unlock()
	if on && n < len(p) && err == nil {
		c.setQuiet(true)
	}
	return n, err
}

// quietLowat is the socket's SO_RCVLOWAT while the next read waits out its window. Every segment
// that arrives otherwise wakes Go's network poller, whether or not a read waits: with the
// walsender's send per message that was one idle wake-up per message, on the cores the
// application runs on. The kernel still wakes a reader early when the receive buffer fills.
const quietLowat = 1 << 20

// setQuiet raises SO_RCVLOWAT for the coalescing window or lowers it back to one byte, where the
// platform has it (TCP on Linux; elsewhere it changes nothing).
func (c *coalescingConn) setQuiet(quiet bool) {
	if c.raw == nil || c.quiet == quiet {
		return
	}
	n := 1
	if quiet {
		n = quietLowat
	}
	var serr error
	if err := c.raw.Control(func(fd uintptr) { serr = setRcvLowat(fd, n) }); err != nil || serr != nil {
		c.raw = nil // not a socket that has it: coalesce by the timer alone
		return
	}
	c.quiet = quiet
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
