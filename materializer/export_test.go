package materializer

import (
	"context"
	"time"
)

// DirectToDrainer makes the drainer take every direct entry and set its row stale, as it does for
// mapped ones: tests of how invalidations land against batches in flight use it.
func (m *Materializer) DirectToDrainer() {
	m.mu.Lock()
	m.directOffAll = true
	m.mu.Unlock()
}

// PinThrottle holds the throttle at level, whatever the probe reads.
func (m *Materializer) PinThrottle(level int) { m.pinLevel.Store(int32(level)) }

// QueueBatchOf runs one queue batch of target id, as a worker would.
func (m *Materializer) QueueBatchOf(ctx context.Context, id int) (n int, more bool, err error) {
	return m.queueBatch(ctx, m.byID[id])
}

// SetBatchSize sets target id's current batch size, which batches otherwise adapt.
func (m *Materializer) SetBatchSize(id, n int) {
	m.mu.Lock()
	m.byID[id].batchSize = n
	m.mu.Unlock()
}

// KeysToPassOf hands target id's queued keys to a pass when they are share enough of its rows.
func (m *Materializer) KeysToPassOf(ctx context.Context, id int) (bool, error) {
	return m.keysToPass(ctx, m.byID[id])
}

// Passing reports whether target id has a pass under way.
func (m *Materializer) Passing(id int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.byID[id].walk != nil
}

// NoteDirect runs the drainer's look for tables with direct entries waiting.
func (m *Materializer) NoteDirect(ctx context.Context) (int, error) {
	n, _, err := m.noteDirect(ctx)
	return n, err
}

// Backlog reports whether target id is known to have more than a batch waiting, which lets a
// second worker take it at once.
func (m *Materializer) Backlog(id int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.byID[id].more
}

// Direct reports whether workers take target id's queued keys.
func (m *Materializer) Direct(id int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.byID[id].direct
}

// SetRunning sets how many batches of target id the scheduler counts as running.
func (m *Materializer) SetRunning(id, n int) {
	m.mu.Lock()
	m.byID[id].running = n
	m.mu.Unlock()
}

// SetFlight records a queue batch of target id that took taken entries ago, and rate as the
// table's speed in rows per second.
func (m *Materializer) SetFlight(id, taken int, ago time.Duration, rate float64) {
	m.mu.Lock()
	t := m.byID[id]
	t.flights = append(t.flights, &flight{taken: taken, at: time.Now().Add(-ago)})
	t.rate = rate
	m.mu.Unlock()
}

// CheckBacklogOf reports whether target id's backlog of queued keys is due a check, as a worker
// asks before its batch.
func (m *Materializer) CheckBacklogOf(id int) bool { return m.checkBacklog(m.byID[id]) }

// SetBacklog starts (or ends) a backlog of target id.
func (m *Materializer) SetBacklog(id int, more bool) {
	m.mu.Lock()
	m.setMoreLocked(m.byID[id], more)
	m.mu.Unlock()
}

// AgeBacklog moves target id's backlog start and last check d into the past.
func (m *Materializer) AgeBacklog(id int, d time.Duration) {
	m.mu.Lock()
	t := m.byID[id]
	t.backlogAt = t.backlogAt.Add(-d)
	t.passCheckAt = t.passCheckAt.Add(-d)
	m.mu.Unlock()
}
