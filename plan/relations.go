package plan

import "slices"

// Relations returns the OIDs of the tables a batch of t reads, as far as the plan knows them: the
// target and every dependency's source. Enrichment SQL may read more.
func (t *Target) Relations() []uint32 {
	out := []uint32{t.OID}
	for _, e := range t.Enrichments {
		for _, d := range e.deps {
			if d.rel != nil && !slices.Contains(out, d.rel.OID) {
				out = append(out, d.rel.OID)
			}
		}
	}
	return out
}
