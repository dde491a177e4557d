package daemon

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/matcol/matcol/internal/dial"
)

// reporter elects the one instance of a database that exports the figures read from the
// database (stale rows, ages, failures, the slot, backfills) to /metrics. Every instance reads
// the same figures, so if each exported them, a sum over instances in Prometheus, as in a
// rolling update, would count them twice. The reporter holds a session advisory lock on a
// connection of its own; the others try again every few seconds, so another takes over soon
// after the reporter stops.
type reporter struct {
	dsn string
	log hclog.Logger
	// every is how often a non-reporter tries the lock and the reporter checks its connection.
	// Defaults to 5s.
	every time.Duration
	held  atomic.Bool
}

const reporterLock = "matcol metrics"

// Leader reports whether this instance is the reporter.
func (r *reporter) Leader() bool { return r.held.Load() }

// Run keeps trying to be the reporter until ctx ends.
func (r *reporter) Run(ctx context.Context) {
	if r.every <= 0 {
		r.every = 5 * time.Second
	}
	for attempt := 0; ; attempt++ {
		connected, err := r.session(ctx)
		if r.held.Swap(false) {
			r.log.Info("no longer exporting the database's figures")
		}
		if ctx.Err() != nil {
			return
		}
		if connected {
			attempt = 0
		}
		r.log.Debug("metrics election connection failed; retrying", "error", err)
		if !dial.Sleep(ctx, dial.Backoff(attempt, 30*time.Second)) {
			return
		}
	}
}

// session holds one connection: it takes the lock when free and then keeps checking the
// connection, which holds the lock until it closes.
func (r *reporter) session(ctx context.Context) (bool, error) {
	conn, err := dial.Connect(ctx, r.dsn, "metrics")
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		if r.held.Load() {
			if _, err := conn.Exec(ctx, `SELECT 1`); err != nil {
				return true, err
			}
		} else {
			var got bool
			if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, reporterLock).Scan(&got); err != nil {
				return true, err
			}
			if got {
				r.held.Store(true)
				r.log.Info("exporting the database's figures to /metrics")
			}
		}
		if !dial.Sleep(ctx, r.every) {
			return true, ctx.Err()
		}
	}
}
