package materializer

import (
	"errors"
	"fmt"
	"time"

	"github.com/matcol/matcol/registry"
)

// gateSQL takes the plan lock shared, without waiting, and reads the registry version, as columns
// of a transaction's first statement. A registry change holds the lock exclusively until it
// commits, so a transaction that got the lock and read version v either sees the change (v is
// new) or finishes before the change can commit (DESIGN invariant 8).
var gateSQL = fmt.Sprintf(`pg_try_advisory_xact_lock_shared(%d), (SELECT version FROM matcol.registry_version)`, registry.LockPlan)

// errPlanChanged means work was put back because the registry changed, or is changing, under the
// plan it would have used. It is not a failure.
var errPlanChanged = errors.New("the registry changed; work waits for the new plan")

// gate checks what a transaction's gateSQL columns returned against version, the version of the
// plan the work comes from (0: unchecked). On a mismatch it asks for the new plan and holds work
// until it arrives.
func (m *Materializer) gate(locked bool, seen, version int64) error {
	if version == 0 {
		return nil
	}
	if !locked {
		// A registry change is committing: a moment from now its version is visible.
		m.mu.Lock()
		m.gateBusyUntil = time.Now().Add(50 * time.Millisecond)
		m.mu.Unlock()
		return errPlanChanged
	}
	if seen == version {
		return nil
	}
	m.mu.Lock()
	if seen > m.wantVersion {
		m.wantVersion = seen
	}
	m.mu.Unlock()
	if m.OnPlanChanged != nil {
		m.OnPlanChanged()
	}
	return errPlanChanged
}

// PlanBehind reports whether work waits for a newer plan than the current one.
func (m *Materializer) PlanBehind() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.wantVersion > m.plan.Version
}

// planBehind reports whether a newer registry version was seen than the plan's: work waits for
// the new plan, or for a registry change to commit.
func (m *Materializer) planBehind() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.wantVersion > m.plan.Version || time.Now().Before(m.gateBusyUntil)
}
