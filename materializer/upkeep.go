package materializer

import "sync/atomic"

// upkeep is what the materializer keeps to say things once: whether replicas' lag can be read.
type upkeep struct {
	lagUnknown atomic.Bool
	lagWarned  atomic.Bool
}

const (
	lagUnknownMessage = "cannot read the standbys' replay lag; throttle.max_replica_lag is not enforced"
	lagFix            = "GRANT pg_read_all_stats (or pg_monitor) to matcol's role"
)

// noteLagKnown records whether the standbys' replay lag could be read. Standbys whose lag this
// role cannot see would leave max_replica_lag silently idle: that is said once, and
// ReplicaLagKnown reports it for as long as it lasts.
func (m *Materializer) noteLagKnown(known bool) {
	was := !m.upkeep.lagUnknown.Swap(!known)
	switch {
	case !known && was && m.cfg.MaxReplicaLag > 0 && !m.upkeep.lagWarned.Swap(true):
		m.log.Warn(lagUnknownMessage, "fix", lagFix)
	case known && !was && m.upkeep.lagWarned.Load():
		m.log.Info("standbys' replay lag known again; throttle.max_replica_lag enforced")
	}
}

// ReplicaLagKnown reports whether the standbys' replay lag could be read at the last look (true
// also when there are no standbys).
func (m *Materializer) ReplicaLagKnown() bool { return !m.upkeep.lagUnknown.Load() }
