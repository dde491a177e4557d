package materializer

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"
)

// upkeep is what the materializer keeps to say things once (whether replicas' lag can be read,
// each table's batch error until its batches succeed again) and to tidy now and then.
type upkeep struct {
	lagUnknown atomic.Bool
	lagWarned  atomic.Bool

	mu        sync.Mutex
	batchErrs map[int]string // by target id, the batch error logged last
	nErrs     atomic.Int32   // len(batchErrs), read without the lock on every batch

	sweeps int // sweeps so far, for tidy; only the sweep touches it
}

const (
	lagFix = "GRANT pg_read_all_stats (or pg_monitor) to matcol's role"
)

// noteLagKnown records whether the standbys' replay lag could be read. Standbys whose lag this
// role cannot see would leave max_replica_lag silently idle: that is said once, and
// ReplicaLagKnown reports it for as long as it lasts.
func (m *Materializer) noteLagKnown(known bool) {
	was := !m.upkeep.lagUnknown.Swap(!known)
	switch {
	case !known && was && m.cfg.MaxReplicaLag > 0 && !m.upkeep.lagWarned.Swap(true):
		m.log.Warn("cannot read the standbys' replay lag; throttle.max_replica_lag is not enforced", "fix", lagFix)
	case known && !was && m.upkeep.lagWarned.Load():
		m.log.Info("standbys' replay lag known again; throttle.max_replica_lag enforced")
	}
}

// ReplicaLagKnown reports whether the standbys' replay lag could be read at the last look (true
// also when there are no standbys).
func (m *Materializer) ReplicaLagKnown() bool { return !m.upkeep.lagUnknown.Load() }

// batchFailed records a failed batch of target id and reports whether its error is new for the
// table: an error that fails every batch (a missing privilege) is logged once, not at every
// retry. The SQLSTATE and message identify it; the row count in the text varies.
func (u *upkeep) batchFailed(id int, err error) bool {
	sig := err.Error()
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		sig = pe.Code + " " + pe.Message
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.batchErrs == nil {
		u.batchErrs = map[int]string{}
	}
	if u.batchErrs[id] == sig {
		return false
	}
	u.batchErrs[id] = sig
	u.nErrs.Store(int32(len(u.batchErrs)))
	return true
}

// batchOK records a successful batch of target id and reports whether its last one had failed
// with a logged error.
func (u *upkeep) batchOK(id int) bool {
	if u.nErrs.Load() == 0 {
		return false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.batchErrs[id]; !ok {
		return false
	}
	delete(u.batchErrs, id)
	u.nErrs.Store(int32(len(u.batchErrs)))
	return true
}
