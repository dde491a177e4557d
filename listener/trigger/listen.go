package trigger

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/listener"
)

// Listener LISTENs on matcol's channel and forwards wake-ups to its sink. It holds one
// connection and reconnects with backoff; after a reconnect it asks for a resync, since
// notifications sent while it was away are lost.
type Listener struct {
	DSN  string
	Sink listener.Sink
	Log  hclog.Logger
	// OnDDL, when set, is called when the DDL event trigger reports a schema or table change.
	OnDDL func()
	// OnPlan, when set, is called when the registry changed.
	OnPlan func()

	streaming atomic.Bool
}

// Streaming reports whether the listener is connected and listening.
func (l *Listener) Streaming() bool { return l.streaming.Load() }

var _ listener.Listener = (*Listener)(nil)

// Run blocks until ctx ends.
func (l *Listener) Run(ctx context.Context) error {
	attempt := 0
	for {
		err := l.session(ctx, func() { attempt = 0 })
		if ctx.Err() != nil {
			return nil
		}
		wait := dial.Backoff(attempt, 30*time.Second)
		l.Log.Warn("listener disconnected; reconnecting", "error", err, "retry_in", wait.Round(time.Millisecond))
		attempt++
		if !dial.Sleep(ctx, wait) {
			return nil
		}
	}
}

func (l *Listener) session(ctx context.Context, connected func()) error {
	conn, err := dial.Connect(ctx, l.DSN, "listener")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{listener.Channel}.Sanitize()); err != nil {
		return err
	}
	connected()
	l.streaming.Store(true)
	defer l.streaming.Store(false)
	l.Log.Debug("listening for invalidations", "channel", listener.Channel)
	l.Sink.Resync()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, context.DeadlineExceeded) {
				continue
			}
			return err
		}
		switch {
		case n.Payload == listener.PayloadQueue:
			l.Sink.QueueFilled()
		case n.Payload == listener.PayloadDDL:
			if l.OnDDL != nil {
				l.OnDDL()
			}
		case n.Payload == listener.PayloadPlan:
			if l.OnPlan != nil {
				l.OnPlan()
			}
		case strings.HasPrefix(n.Payload, listener.PayloadTargetPrefix):
			l.Sink.TargetStale(strings.TrimPrefix(n.Payload, listener.PayloadTargetPrefix))
		default:
			l.Sink.Resync()
		}
	}
}
