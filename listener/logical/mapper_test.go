package logical

import (
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/registry"
)

func col(s string) *pglogrepl.TupleDataColumn {
	return &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeText, Data: []byte(s)}
}

var (
	null  = &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeNull}
	toast = &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeToast}
)

func tup(cols ...*pglogrepl.TupleDataColumn) *pglogrepl.TupleData {
	return &pglogrepl.TupleData{ColumnNum: uint16(len(cols)), Columns: cols}
}

// A table that is both target and source: node(id, parent_id, weight, child_weight, materialized_at).
// The enrichment, child_weight = sum of the children's weight, reads parent_id and weight.
func nodePlan() *plan.Plan {
	tbl := pgident.Table{Schema: "public", Name: "node"}
	rel := &discovery.Relation{OID: 42, Name: tbl, Kind: 'r'}
	for _, c := range []string{"id", "parent_id", "weight", "child_weight", "materialized_at"} {
		rel.Columns = append(rel.Columns, discovery.Column{Name: c})
	}
	tg := &plan.Target{ID: 1, Table: tbl, Owned: []string{"child_weight"}, Self: true}
	e := &plan.Enrichment{Target: tg, Reads: []plan.Read{{Table: tbl, OID: 42, Kind: 'r', Columns: []string{"id", "parent_id", "weight"}}}}
	d := &plan.Dep{Dependency: registry.Dependency{ID: 9, Source: tbl, Columns: []string{"parent_id"}}, Target: tg, Enrichment: e}
	s := &plan.Source{Table: tbl, Relation: rel, Ignored: []string{"materialized_at", "child_weight"}, Deps: []*plan.Dep{d}}
	return &plan.Plan{Targets: []*plan.Target{tg}, Sources: []*plan.Source{s}}
}

func nodeMapper() *mapper {
	m := newMapper()
	m.setPlan(nodePlan())
	m.handle(&pglogrepl.RelationMessage{RelationID: 7, Namespace: "public", RelationName: "node",
		Columns: []*pglogrepl.RelationMessageColumn{{Name: "id"}, {Name: "parent_id"}, {Name: "weight"}, {Name: "child_weight"}, {Name: "materialized_at"}}})
	return m
}

func keys(m *mapper) map[entry]bool {
	out := map[entry]bool{}
	for _, e := range m.take() {
		out[e] = true
	}
	return out
}

func TestMapperUpdate(t *testing.T) {
	m := nodeMapper()
	// matcol's own write: only owned columns and materialized_at change.
	m.handle(&pglogrepl.UpdateMessage{RelationID: 7, OldTupleType: pglogrepl.UpdateMessageTupleTypeOld,
		OldTuple: tup(col("5"), col("2"), col("1"), null, null),
		NewTuple: tup(col("5"), col("2"), col("1"), col("3"), col("2026-01-01"))})
	require.Empty(t, keys(m))

	// The application moves node 5 from parent 2 to 3: both parents, and the row itself is stale.
	m.handle(&pglogrepl.UpdateMessage{RelationID: 7, OldTupleType: pglogrepl.UpdateMessageTupleTypeOld,
		OldTuple: tup(col("5"), col("2"), col("1"), col("3"), col("2026-01-01")),
		NewTuple: tup(col("5"), col("3"), col("1"), col("3"), null)})
	require.Equal(t, map[entry]bool{
		{target: 1, vals: `["3"]`}: true,
		{target: 1, vals: `["2"]`}: true,
		{target: 1, vals: "[]"}:    true,
	}, keys(m))

	// An unchanged TOAST value is read from the old row; all-NULL values are skipped.
	m.handle(&pglogrepl.UpdateMessage{RelationID: 7, OldTupleType: pglogrepl.UpdateMessageTupleTypeOld,
		OldTuple: tup(col("6"), col("4"), col("1"), null, col("t")),
		NewTuple: tup(col("6"), toast, col("2"), null, col("t"))})
	require.Equal(t, map[entry]bool{{target: 1, vals: `["4"]`}: true}, keys(m))
	m.handle(&pglogrepl.InsertMessage{RelationID: 7, Tuple: tup(col("8"), null, col("1"), null, null)})
	require.Equal(t, map[entry]bool{{target: 1, vals: "[]"}: true}, keys(m))
}

func TestMapperUnknownOldValueQueuesWholeTarget(t *testing.T) {
	m := nodeMapper()
	m.handle(&pglogrepl.UpdateMessage{RelationID: 7, NewTuple: tup(col("6"), toast, col("2"), null, col("t"))})
	require.Equal(t, map[entry]bool{{target: 1, all: true}: true}, keys(m))
	m.handle(&pglogrepl.TruncateMessage{RelationIDs: []uint32{7}})
	require.Equal(t, map[entry]bool{{target: 1, all: true}: true}, keys(m))
	m.handle(&pglogrepl.DeleteMessage{RelationID: 7, OldTupleType: pglogrepl.UpdateMessageTupleTypeOld,
		OldTuple: tup(col("6"), col("4"), col("1"), null, col("t"))})
	require.Equal(t, map[entry]bool{{target: 1, vals: `["4"]`}: true}, keys(m))
}
