package logical

import (
	"encoding/json"
	"slices"
	"strconv"

	"github.com/jackc/pglogrepl"

	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/plan"
)

// entry is one row for matcol.pending, the same shape trigger mode writes: dep 0 means
// dependency_id NULL (vals are target keys), all means vals NULL (every row of the target).
type entry struct {
	target int
	dep    int
	vals   string
	all    bool
}

// table is what the plan says about one published table.
type table struct {
	source *plan.Source
	target *plan.Target
	// keyChange: the target's key changes come from the stream (plan.Target.KeyChangeInStream).
	keyChange bool
}

// mapper turns decoded changes into pending entries, deduplicated until the next take. It is
// used by one goroutine.
type mapper struct {
	plan    *plan.Plan
	tables  map[pgident.Table]table
	rels    map[uint32]*pglogrepl.RelationMessage
	entries map[entry]struct{}
	// planAt is the registry version of a registry change just decoded, 0 when none: changes
	// after it must be mapped with a plan at least that new.
	planAt int64
	// identityGaps counts changes whose old values were missing (see oldKnown).
	identityGaps int
}

// versionTable is the registry's version row, published so that the stream tells where in the
// WAL the registry changed.
var versionTable = pgident.Table{Schema: "matcol", Name: "registry_version"}

func newMapper() *mapper {
	return &mapper{rels: map[uint32]*pglogrepl.RelationMessage{}, entries: map[entry]struct{}{}}
}

// setPlan indexes p by table name. Names, not OIDs, so a table recreated under its name keeps
// working once the plan is rebuilt.
func (m *mapper) setPlan(p *plan.Plan) {
	if p == m.plan {
		return
	}
	m.plan = p
	m.tables = map[pgident.Table]table{}
	for _, s := range p.Sources {
		t := m.tables[s.Table]
		t.source = s
		m.tables[s.Table] = t
	}
	for _, tg := range p.Targets {
		t := m.tables[tg.Table]
		t.target = tg
		t.keyChange = tg.KeyChangeInStream()
		m.tables[tg.Table] = t
	}
}

func (m *mapper) len() int { return len(m.entries) }

// take returns the collected entries and forgets them.
func (m *mapper) take() []entry {
	out := make([]entry, 0, len(m.entries))
	for e := range m.entries {
		out = append(out, e)
	}
	clear(m.entries)
	return out
}

func (m *mapper) add(e entry) { m.entries[e] = struct{}{} }

// resync queues every row of every target.
func (m *mapper) resync() {
	for _, t := range m.plan.Targets {
		m.add(entry{target: t.ID, all: true})
	}
}

func (m *mapper) lookup(relID uint32) (*pglogrepl.RelationMessage, table, bool) {
	rel := m.rels[relID]
	if rel == nil {
		return nil, table{}, false
	}
	t, ok := m.tables[pgident.Table{Schema: rel.Namespace, Name: rel.RelationName}]
	return rel, t, ok
}

// handle maps one decoded message. Begin, Commit and the like are the loop's business.
func (m *mapper) handle(msg pglogrepl.Message) {
	switch msg := msg.(type) {
	case *pglogrepl.RelationMessage:
		m.rels[msg.RelationID] = msg
	case *pglogrepl.InsertMessage:
		rel, t, ok := m.lookup(msg.RelationID)
		if !ok {
			return
		}
		nt := tuple{rel, msg.Tuple}
		if t.source != nil {
			for _, d := range t.source.Deps {
				m.dep(d, nt, tuple{})
			}
		}
		m.stale(t, nt)
	case *pglogrepl.UpdateMessage:
		if rel := m.rels[msg.RelationID]; rel != nil && rel.Namespace == versionTable.Schema && rel.RelationName == versionTable.Name {
			if v, known := (tuple{rel, msg.NewTuple}).value("version"); known && v != nil {
				if n, err := strconv.ParseInt(*v, 10, 64); err == nil {
					m.planAt = n
				}
			}
			return
		}
		rel, t, ok := m.lookup(msg.RelationID)
		if !ok {
			return
		}
		nt := tuple{rel, msg.NewTuple}
		ot := tuple{rel, msg.OldTuple}
		if t.source != nil && relevant(t.source, msg.OldTupleType, ot, nt) {
			for _, d := range t.source.Deps {
				m.dep(d, nt, ot)
				switch {
				case msg.OldTuple != nil && oldKnown(rel, msg.OldTupleType, d.Columns):
					m.dep(d, ot, tuple{})
				case msg.OldTuple == nil && oldKnown(rel, 0, d.Columns):
					// The identity did not change: its columns' old values are the new ones.
				default:
					m.oldUnknown(d)
				}
			}
		}
		m.stale(t, nt)
		m.keyChange(t, msg, nt, ot)
	case *pglogrepl.DeleteMessage:
		rel, t, ok := m.lookup(msg.RelationID)
		if !ok || t.source == nil {
			return
		}
		ot := tuple{rel, msg.OldTuple}
		for _, d := range t.source.Deps {
			if oldKnown(rel, msg.OldTupleType, d.Columns) {
				m.dep(d, ot, tuple{})
			} else {
				m.oldUnknown(d)
			}
		}
	case *pglogrepl.TruncateMessage:
		for _, id := range msg.RelationIDs {
			if _, t, ok := m.lookup(id); ok && t.source != nil {
				for _, d := range t.source.Deps {
					m.add(entry{target: d.Target.ID, all: true})
				}
			}
		}
	}
}

// stale queues the "target has new stale rows" marker when a written target row is stale. The
// self trigger nulls materialized_at in the same write for a change to the row's own columns and
// for every new row; matcol's own batch writes always carry a timestamp.
func (m *mapper) stale(t table, nt tuple) {
	if t.target == nil {
		return
	}
	if v, known := nt.value("materialized_at"); known && v == nil {
		m.add(entry{target: t.target.ID, vals: "[]"})
	}
}

// keyChange queues the new key of a target row whose key an UPDATE changed, for targets that
// have no UPDATE trigger in logical mode (plan.Target.KeyChangeInStream): the row keeps values
// computed for its old key. An UPDATE carries the old key ('K') only when the key changed; with
// the whole old row ('O') the key values are compared.
func (m *mapper) keyChange(t table, msg *pglogrepl.UpdateMessage, nt, ot tuple) {
	if !t.keyChange || msg.OldTuple == nil {
		return
	}
	key := make([]*string, len(t.target.Key))
	changed := msg.OldTupleType == pglogrepl.UpdateMessageTupleTypeKey
	for i, k := range t.target.Key {
		v, known := nt.value(k.Name)
		if !known {
			m.add(entry{target: t.target.ID, all: true})
			return
		}
		key[i] = v
		if old, known := ot.value(k.Name); !known || (old == nil) != (v == nil) || (old != nil && *old != *v) {
			changed = true
		}
	}
	if changed {
		b, _ := json.Marshal(key)
		m.add(entry{target: t.target.ID, vals: string(b)})
	}
}

// dep queues the values of d's columns in nt. A column left out as an unchanged TOAST value is
// read from fallback (the old row); when that is unknown too, every row of the target is queued,
// since over-invalidation is safe and a guess is not.
func (m *mapper) dep(d *plan.Dep, nt, fallback tuple) {
	vals := make([]*string, len(d.Columns))
	allNull := true
	for i, c := range d.Columns {
		v, known := nt.value(c)
		if !known {
			v, known = fallback.value(c)
		}
		if !known {
			m.add(entry{target: d.Target.ID, all: true})
			return
		}
		vals[i] = v
		if v != nil {
			allNull = false
		}
	}
	if allNull {
		return
	}
	b, _ := json.Marshal(vals)
	e := entry{target: d.Target.ID, vals: string(b)}
	if !d.Direct() {
		e.dep = d.ID
	}
	m.add(e)
}

// relevant reports whether an UPDATE may change what the source feeds its targets. With the whole
// old row (REPLICA IDENTITY FULL) it compares the columns the source's dependencies watch (see
// plan.Source.Watch), as the trigger does: this is what keeps matcol's own writes to a source
// that is also a target from invalidating anything, except where another enrichment reads the
// column written (invariant 3 and 9). Without the old row it must assume a change; apply
// requires FULL for sources that are also targets.
func relevant(s *plan.Source, oldType uint8, ot, nt tuple) bool {
	if oldType != pglogrepl.UpdateMessageTupleTypeOld || ot.data == nil || nt.data == nil {
		return true
	}
	all, watched := s.Watch()
	for i, c := range nt.rel.Columns {
		if c.Name == "materialized_at" || (!all && !slices.Contains(watched, c.Name)) || i >= len(nt.data.Columns) || i >= len(ot.data.Columns) {
			continue
		}
		n, o := nt.data.Columns[i], ot.data.Columns[i]
		if n.DataType == pglogrepl.TupleDataTypeToast {
			continue // unchanged
		}
		if n.DataType != o.DataType || string(n.Data) != string(o.Data) {
			return true
		}
	}
	return false
}

// tuple is a decoded row with its relation.
type tuple struct {
	rel  *pglogrepl.RelationMessage
	data *pglogrepl.TupleData
}

// value returns column c as text (nil for NULL), and whether it is known: a column missing from
// the relation (dropped, or outside the column list) reads as NULL, as in trigger mode; an
// unchanged TOAST value is unknown.
func (t tuple) value(c string) (*string, bool) {
	if t.data == nil || t.rel == nil {
		return nil, false
	}
	for i, col := range t.rel.Columns {
		if col.Name != c {
			continue
		}
		if i >= len(t.data.Columns) {
			return nil, true
		}
		d := t.data.Columns[i]
		switch d.DataType {
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			s := string(d.Data)
			return &s, true
		case pglogrepl.TupleDataTypeToast:
			return nil, false
		default:
			return nil, true
		}
	}
	return nil, true
}

// oldKnown reports whether an old row of type oldType carries the columns: with REPLICA IDENTITY
// FULL ('O') every column; otherwise only the identity's, flagged in the relation message. apply
// sets the identity each dependency needs, but a partition attached since keeps its own default
// identity until the next apply.
func oldKnown(rel *pglogrepl.RelationMessage, oldType uint8, cols []string) bool {
	if oldType == pglogrepl.UpdateMessageTupleTypeOld {
		return true
	}
	for _, c := range cols {
		key := false
		for _, col := range rel.Columns {
			if col.Name == c {
				key = col.Flags&1 == 1
			}
		}
		if !key {
			return false
		}
	}
	return true
}

// oldUnknown answers a change whose old values of d's columns the stream does not carry: every
// row of the target, since which row they named is unknown.
func (m *mapper) oldUnknown(d *plan.Dep) {
	m.add(entry{target: d.Target.ID, all: true})
	m.identityGaps++
}
