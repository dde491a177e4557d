package materializer

import (
	"encoding/json"
	"time"
)

// freshness remembers when invalidations were queued, so that the batch that materializes a row
// can report how long the change took to land: source commit (the trigger's clock) to stamp.
// Keys are known for direct dependencies; a statement that left stale rows on the target itself
// is known only by its marker, which the target's next batch answers. Mapped dependencies are not
// tracked. Memory is capped per table.
type freshness struct {
	keys    map[string]time.Time
	markers []time.Time
}

const freshnessCap = 100_000

func (m *Materializer) noteQueued(t *target, vals string, at time.Time) {
	if m.OnFresh == nil {
		return
	}
	if vals == "[]" {
		if len(t.fresh.markers) < freshnessCap {
			t.fresh.markers = append(t.fresh.markers, at)
		}
		return
	}
	var arr []json.RawMessage
	if json.Unmarshal([]byte(vals), &arr) != nil {
		return
	}
	k := ""
	for _, raw := range arr {
		if s := jsonText(raw); s != nil {
			k += *s
		}
		k += "\x00"
	}
	if t.fresh.keys == nil {
		t.fresh.keys = map[string]time.Time{}
	}
	if old, ok := t.fresh.keys[k]; (!ok && len(t.fresh.keys) < freshnessCap) || (ok && at.Before(old)) {
		t.fresh.keys[k] = at
	}
}

// noteMaterialized reports the latency of every remembered invalidation the batch answered.
func (m *Materializer) noteMaterialized(t *target, keys [][]*string) {
	if m.OnFresh == nil {
		return
	}
	now := time.Now()
	m.mu.Lock()
	var lat []time.Duration
	for i := range keys[0] {
		k := keyString(keys, i)
		if at, ok := t.fresh.keys[k]; ok {
			lat = append(lat, now.Sub(at))
			delete(t.fresh.keys, k)
		}
	}
	for _, at := range t.fresh.markers {
		lat = append(lat, now.Sub(at))
	}
	t.fresh.markers = t.fresh.markers[:0]
	m.mu.Unlock()
	for _, d := range lat {
		m.OnFresh(d)
	}
}
