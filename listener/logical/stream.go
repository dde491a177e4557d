package logical

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// stream is the loop: it decodes, flushes entries to matcol.pending, and acks.
//
// Positions: committed is the end of the last commit decoded; acked is what has been reported and
// never passes a commit whose entries are not yet in matcol.pending. Every flush carries all the
// entries of every transaction up to committed, so after a flush acked = committed. A keepalive's
// ServerWALEnd is taken only when nothing is in flight — no open transaction, no unflushed
// entry — which is what lets an idle database advance its slot while other databases write WAL.
func (l *Listener) stream(ctx context.Context, conn *pgx.Conn, rc *replConn, m *mapper, start pglogrepl.LSN) error {
	defer rc.interrupt(ctx)()
	acked, committed := start, start
	inTx := false
	now := time.Now()
	nextStatus := now
	nextGuard := now
	lastFlush := now
	var gapsWarned time.Time
	// For holds: since when the materializer yields; when the last commit decoded arrived, and how
	// long after the commit the server sent it (by the server's clock, which may differ from ours).
	var yieldSince, lastCommit time.Time
	var commitLag time.Duration
	// The commit time of the first transaction whose entries wait for the next flush: the
	// entries' enqueued_at, so that how long a change waits counts from its commit, decoding
	// and holds included.
	var txCommit, oldest time.Time
	flush := func() error {
		if m.identityGaps > 0 && time.Since(gapsWarned) > time.Minute {
			l.Log.Warn("changes without the old values of dependency columns invalidated every row of their target; "+
				"a partition attached since the last apply keeps its default REPLICA IDENTITY: run matcol apply",
				"changes", m.identityGaps)
			m.identityGaps, gapsWarned = 0, time.Now()
		}
		if err := l.flush(ctx, conn, m, false, oldest); err != nil {
			return err
		}
		oldest = time.Time{}
		lastFlush = time.Now()
		if committed > acked {
			acked = committed
		}
		return nil
	}
	report := func(reply bool) error {
		pos := acked
		if l.noAck {
			pos = start
		}
		nextStatus = time.Now().Add(l.StatusInterval)
		return rc.ack(ctx, pos, reply)
	}
	for {
		now = time.Now()
		if !now.Before(nextGuard) {
			if err := l.guard(ctx, conn); err != nil {
				return err
			}
			nextGuard = now.Add(l.GuardInterval)
		}
		if !now.Before(nextStatus) {
			// Ask for a keepalive back: its ServerWALEnd is what an idle slot advances to.
			if err := report(!inTx && m.len() == 0); err != nil {
				return err
			}
		}
		deadline := nextStatus
		if nextGuard.Before(deadline) {
			deadline = nextGuard
		}
		if m.len() > 0 && lastFlush.Add(flushDelay).Before(deadline) {
			deadline = lastFlush.Add(flushDelay)
		}
		yielding := l.Yielding != nil && l.Yielding()
		if rc.sock != nil {
			rc.sock.long.Store(yielding)
		}
		switch {
		case !yielding:
			yieldSince = time.Time{}
		case yieldSince.IsZero():
			yieldSince = now
		case l.MaxHold > 0 && !inTx && now.Sub(yieldSince) >= holdAfter && commitLag < holdCaughtUp &&
			now.Sub(lastCommit) < holdCaughtUp && time.Until(lastCommit.Add(l.MaxHold-commitLag)) >= holdAfter:
			// Caught up with a saturated application: stop decoding until it has room. The
			// changes not yet decoded committed after lastCommit. A hold shorter than holdAfter
			// would cost more in walsender restarts than it spares.
			if err := flush(); err != nil {
				return err
			}
			if err := report(false); err != nil {
				return err
			}
			return &holdError{at: acked, until: lastCommit.Add(l.MaxHold - commitLag)}
		}
		msg, err := rc.receive(ctx, deadline)
		if err != nil {
			return err
		}
		if msg == nil {
			if m.len() > 0 && !time.Now().Before(lastFlush.Add(flushDelay)) {
				if err := flush(); err != nil {
					return err
				}
			}
			continue
		}
		if len(msg.Data) == 0 {
			continue
		}
		switch msg.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
			if err != nil {
				return fmt.Errorf("parse keepalive: %w", err)
			}
			if !inTx && m.len() == 0 && committed == acked && ka.ServerWALEnd > acked {
				acked, committed = ka.ServerWALEnd, ka.ServerWALEnd
			}
			if ka.ReplyRequested {
				if err := report(false); err != nil {
					return err
				}
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
			if err != nil {
				return fmt.Errorf("parse xlog data: %w", err)
			}
			dm, err := pglogrepl.Parse(xld.WALData)
			if err != nil {
				return fmt.Errorf("decode pgoutput: %w", err)
			}
			switch dm := dm.(type) {
			case *pglogrepl.BeginMessage:
				inTx = true
				txCommit = dm.CommitTime
			case *pglogrepl.CommitMessage:
				inTx = false
				lastCommit, commitLag = time.Now(), max(xld.ServerTime.Sub(dm.CommitTime), 0)
				if dm.TransactionEndLSN > committed {
					committed = dm.TransactionEndLSN
				}
				if m.len() == 0 {
					acked = committed
				} else if m.len() >= chunk || !time.Now().Before(lastFlush.Add(flushDelay)) {
					if err := flush(); err != nil {
						return err
					}
				}
			default:
				m.setPlan(l.Plan())
				m.handle(dm)
				if oldest.IsZero() && m.len() > 0 {
					oldest = txCommit
				}
				if m.planAt > 0 {
					// Changes before the registry change are mapped with the plan they were made
					// under; the ones after it wait for the new plan.
					if err := flush(); err != nil {
						return err
					}
					if err := l.awaitPlan(ctx, m.planAt); err != nil {
						return err
					}
					m.planAt = 0
					m.setPlan(l.Plan())
				}
				if m.len() >= chunk {
					if err := flush(); err != nil {
						return err
					}
				}
			}
		}
	}
}

// A hold starts once the materializer has yielded for holdAfter, so that a passing peak does not
// restart the walsender, and only while the last commit decoded is recent (holdCaughtUp): a
// stream behind the application catches up first.
const (
	holdAfter    = time.Second
	holdCaughtUp = time.Second
)

// awaitPlan waits until the plan is at least registry version v, asking for it every few seconds.
// The stream stands still meanwhile: mapping later changes with an older plan could drop the
// invalidations of a dependency it does not know yet.
func (l *Listener) awaitPlan(ctx context.Context, v int64) error {
	var asked time.Time
	warned := false
	for start := time.Now(); ; {
		if p := l.Plan(); p.Version == 0 || p.Version >= v {
			return nil
		}
		if l.Reload != nil && time.Since(asked) > 2*time.Second {
			l.Reload()
			asked = time.Now()
		}
		if !warned && time.Since(start) > 30*time.Second {
			l.Log.Error("the registry changed and its plan is not loaded yet; invalidations wait for it", "version", v)
			warned = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
