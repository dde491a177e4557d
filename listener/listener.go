// Package listener turns changes in the database into "these target rows are stale". Its
// backends, trigger and logical, all end in rows of matcol.pending (or stale rows set directly)
// and a wake-up for the materializer.
package listener

import "context"

// Channel is the NOTIFY channel matcol's triggers signal on.
const Channel = "matcol"

// Payloads on Channel.
const (
	// PayloadQueue means matcol.pending has new entries.
	PayloadQueue = "q"
	// PayloadTargetPrefix, followed by a target's hash, means rows of that target became stale.
	PayloadTargetPrefix = "t:"
	// PayloadDDL means a schema or table was created, altered or dropped (matcol's event trigger).
	PayloadDDL = "ddl"
	// PayloadPlan means the registry changed (matcol.bump_registry_version).
	PayloadPlan = "plan"
)

// Sink is told when there is work.
type Sink interface {
	// TargetStale says rows of the target with this hash became stale.
	TargetStale(hash string)
	// QueueFilled says matcol.pending has entries to apply.
	QueueFilled()
	// Resync says notifications may have been missed, so everything must be checked.
	Resync()
}

// Listener is one invalidation source. Run blocks until ctx ends and reconnects by itself.
type Listener interface {
	Run(ctx context.Context) error
}
