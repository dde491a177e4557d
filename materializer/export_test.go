package materializer

// DirectToDrainer makes the drainer take every direct entry and set its row stale, as it does for
// mapped ones: tests of how invalidations land against batches in flight use it.
func (m *Materializer) DirectToDrainer() {
	m.mu.Lock()
	m.directOffAll = true
	m.mu.Unlock()
}

// PinThrottle holds the throttle at level, whatever the probe reads.
func (m *Materializer) PinThrottle(level int) { m.pinLevel.Store(int32(level)) }
