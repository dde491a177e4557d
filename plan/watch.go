package plan

import (
	"slices"

	"github.com/matcol/matcol/discovery"
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
		a, cs, on := e.selfWatch()
		none = none && !on
		all = all || a
		for _, c := range cs {
			read[c] = true
		}
	}
	if none {
		return false, nil
	}
	return all, t.selfColumns(all, read)
}

// KeyChangeInStream reports whether the decoded stream alone tells logical mode when an UPDATE
// makes a row of t stale: only its key is watched (the enrichments read no other column of it),
// t is a plain table, and its replica identity is its key or the whole row, so that an UPDATE
// carries the old key exactly when the key changed. Logical mode then needs no row trigger on
// the application's UPDATEs of t, which would lock and log each updated row.
func (t *Target) KeyChangeInStream() bool {
	rel := t.Relation
	if !t.KeyOnlyWatch() || rel == nil || rel.Kind != 'r' {
		return false
	}
	key := t.keyNames()
	switch rel.ReplicaIdentity {
	case 'f':
		return true
	case 'd', 'i':
		ident := slices.Sorted(slices.Values(rel.IdentityColumns))
		slices.Sort(key)
		return slices.Equal(ident, key)
	}
	return false
}

// KeyOnlyWatch reports whether an UPDATE makes a row of t stale only by changing its key: the
// enrichments read no other column of t. Such a change needs the row under its new key
// recomputed, which a queued key asks for as well as a stale mark, without the mark's BEFORE
// trigger.
func (t *Target) KeyOnlyWatch() bool {
	all, cols := t.SelfWatch()
	if all || len(cols) == 0 {
		return false
	}
	key := t.keyNames()
	for _, c := range cols {
		if !slices.Contains(key, c) {
			return false
		}
	}
	return true
}

func (t *Target) keyNames() []string {
	key := make([]string, len(t.Key))
	for i, k := range t.Key {
		key[i] = k.Name
	}
	return key
}

// SelfWatch is Target.SelfWatch for this enrichment alone.
func (e *Enrichment) SelfWatch() (all bool, cols []string) {
	all, read, on := e.selfWatch()
	if !on {
		return false, nil
	}
	m := map[string]bool{}
	for _, c := range read {
		m[c] = true
	}
	return all, e.Target.selfColumns(all, m)
}

// selfWatch returns the target columns e reads; on is false for self: false.
func (e *Enrichment) selfWatch() (all bool, read []string, on bool) {
	if e.Self != nil {
		return *e.Self, nil, *e.Self
	}
	r := readOf(e.Reads, e.Target.OID)
	switch {
	case e.Reads == nil:
		return true, nil, true // not analyzed: never in a built plan
	case r == nil:
		return false, nil, true
	}
	return r.All, r.Columns, true
}

// selfColumns are the target's columns that read names, and its key, or all of them, minus
// materialized_at and the columns matcol writes.
func (t *Target) selfColumns(all bool, read map[string]bool) []string {
	var cols []string
	for _, c := range t.Columns {
		key := slices.ContainsFunc(t.Key, func(k discovery.Column) bool { return k.Name == c.Name })
		if (all || key || read[c.Name]) && c.Name != "materialized_at" && !slices.Contains(t.Owned, c.Name) {
			cols = append(cols, c.Name)
		}
	}
	slices.Sort(cols)
	return cols
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
	for _, d := range s.Deps {
		a, cs := d.watch(s.Relation)
		all = all || a
		for _, c := range cs {
			read[c] = true
		}
	}
	return all, sourceColumns(s.Relation, all, read)
}

// Watch is Source.Watch for this dependency alone; nothing for a static one.
func (d *Dep) Watch() (all bool, cols []string) { return d.watch(d.rel) }

func (d *Dep) watch(rel *discovery.Relation) (all bool, cols []string) {
	if d.Static || rel == nil {
		return false, nil
	}
	read := map[string]bool{}
	for _, c := range d.Columns {
		read[c] = true
	}
	if d.Enrichment.Reads == nil || (!d.Direct() && d.Reads == nil) {
		all = true // not analyzed: never in a built plan
	}
	for _, reads := range [][]Read{d.Enrichment.Reads, d.Reads} {
		if r := readOf(reads, rel.OID); r != nil {
			all = all || r.All
			for _, c := range r.Columns {
				read[c] = true
			}
		}
	}
	return all, sourceColumns(rel, all, read)
}

func sourceColumns(rel *discovery.Relation, all bool, read map[string]bool) []string {
	var cols []string
	for _, c := range rel.Columns {
		if (all || read[c.Name]) && c.Name != "materialized_at" {
			cols = append(cols, c.Name)
		}
	}
	slices.Sort(cols)
	return cols
}
