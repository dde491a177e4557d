package plan

import (
	"slices"
)

// SelfWatch says which columns of the target make a row stale when an UPDATE changes them:
//   - self: true on any of its enrichments: every column but materialized_at and the columns
//     matcol writes (all is true);
//   - self: false on all of them: none; only an INSERT makes a row stale;
//   - otherwise, from the enrichments that leave self unset (the default): the target's columns
//     their SQL reads, and the key columns, minus the columns matcol writes. all is true when
//     one of them reads the whole row.
//
// cols lists today's columns, sorted, also when all is true; all also covers columns added later.
func (t *Target) SelfWatch() (all bool, cols []string) {
	none := true
	read := map[string]bool{}
	for _, e := range t.Enrichments {
		switch {
		case e.Self != nil && *e.Self:
			all = true
		case e.Self != nil:
			continue
		}
		none = false
		r := readOf(e.Reads, t.OID)
		switch {
		case e.Reads == nil, r != nil && r.All:
			all = true // not analyzed (never in a built plan), or the whole row
		case r != nil:
			for _, c := range r.Columns {
				read[c] = true
			}
		}
	}
	if none {
		return false, nil
	}
	for _, k := range t.Key {
		read[k.Name] = true
	}
	for _, c := range t.Columns {
		if (all || read[c.Name]) && c.Name != "materialized_at" && !slices.Contains(t.Owned, c.Name) {
			cols = append(cols, c.Name)
		}
	}
	slices.Sort(cols)
	return all, cols
}

// Watch says which columns of the source can change some target when an UPDATE changes them:
// for each dependency on it, its listed columns, the source's columns its enrichment reads, and
// those its mapping SQL reads. all is true when one of them reads the whole row. Columns that
// enrichments of the source's own table compute are included when a dependent reads them
// (chained enrichments): matcol's write to such a column must invalidate the reader.
// materialized_at never counts.
//
// cols lists today's columns, sorted, also when all is true; all also covers columns added later.
func (s *Source) Watch() (all bool, cols []string) {
	read := map[string]bool{}
	add := func(reads []Read) {
		if r := readOf(reads, s.OID); r != nil {
			all = all || r.All
			for _, c := range r.Columns {
				read[c] = true
			}
		}
	}
	for _, d := range s.Deps {
		if d.Static {
			continue
		}
		for _, c := range d.Columns {
			read[c] = true
		}
		if d.Enrichment.Reads == nil || (!d.Direct() && d.Reads == nil) {
			all = true // not analyzed: never in a built plan
		}
		add(d.Enrichment.Reads)
		add(d.Reads)
	}
	for _, c := range s.Relation.Columns {
		if (all || read[c.Name]) && c.Name != "materialized_at" {
			cols = append(cols, c.Name)
		}
	}
	slices.Sort(cols)
	return all, cols
}
