package main_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// The model's schema. Every seed draws the same shape with different names, key layout and
// settings; features switch its parts on and off:
//
//	top ◄─(top_id)── parent ◄─(p_region?, p_id)── child ◄─(c_id)── grand
//	                   ▲  ▲                          ▲
//	                   │  │                          └──(c_id)── extra
//	                   │  └──(p_region?, p_id)── part (partitioned by list)
//	                   └──(ref_region?, ref_id as text)── note
//
// parent, child and top are targets. Every enrichment lists every table it reads in depends_on,
// reads nothing that changes with time, and computes integers or text exactly, so a fresh
// computation has one right answer.
type modelSchema struct {
	f         modelFeatures
	ns        string
	composite bool
	topSelf   bool
	workers   int
	batch     int
	// setupSQL is what created the schema, for the report.
	setupSQL string

	top, parent, child, grand, part, note, extra modelTable

	mu       sync.Mutex
	parts    []modelPartition // attached, writable
	spare    []modelPartition // to attach while writers run
	attached int              // how many of spare are attached
}

type modelTable struct {
	name string
	col  map[string]string // logical name → catalog name
}

type modelPartition struct {
	name  string
	value int
}

// Key domains: parents exist for regions 1..2 × ids 1..12 (or ids 1..24); writers also name
// parents a little past them, which do not exist until a writer inserts one.
const (
	modelRegions = 2
	modelParents = 12
	modelTops    = 5
)

func newModelSchema(r *rand.Rand, f modelFeatures) *modelSchema {
	s := &modelSchema{f: f, ns: "public", composite: f["composite"], topSelf: r.IntN(2) == 0,
		workers: 1 + r.IntN(4), batch: []int{10, 50, 500}[r.IntN(3)]}
	fancy := func(name string, alts ...string) string {
		if !f["quoted"] || r.IntN(5) < 2 {
			return name
		}
		return alts[r.IntN(len(alts))]
	}
	if f["quoted"] && r.IntN(2) == 0 {
		s.ns = []string{"Model Shop", "módel", `sch"ema`}[r.IntN(3)]
	}
	table := func(name string, alts []string, cols ...string) modelTable {
		t := modelTable{name: fancy(name, alts...), col: map[string]string{}}
		for _, c := range cols {
			t.col[c] = fancy(c, strings.ToUpper(c[:1])+c[1:], c+" x", c+`"q`, "é"+c)
		}
		return t
	}
	pkey := []string{"id"}
	if s.composite {
		pkey = []string{"region", "id"}
	}
	s.top = table("top", []string{"Top", "top level"}, "id", "name", "nparents", "total")
	s.parent = table("parent", []string{"Parent", "pärent"}, append(pkey, "name", "w", "top_id",
		"n_children", "qty_total", "g_total", "s_total", "n_notes", "x_total")...)
	s.child = table("child", []string{"Child Row", `child"s`}, "id", "p_region", "p_id", "qty", "note",
		"parent_name", "parent_w", "g_sum")
	s.grand = table("grand", []string{"GrandChild", "grand child"}, "id", "c_id", "amount")
	s.part = table("part", []string{"Part Log", "part-log"}, "id", "part", "p_region", "p_id", "v")
	s.note = table("note", []string{"Note", "nöte"}, "id", "ref_region", "ref_id", "body")
	s.extra = table("extra", []string{"Extra Info", "EXTRA"}, "id", "c_id", "val")
	for v := 0; v < 4; v++ {
		p := modelPartition{name: fmt.Sprintf("%s_%d", s.part.name, v), value: v}
		if v < 2 {
			s.parts = append(s.parts, p)
		} else {
			s.spare = append(s.spare, p)
		}
	}
	return s
}

func qident(s string) string { return pgx.Identifier{s}.Sanitize() }

// q is a table's qualified, quoted name; c a column's quoted name.
func (s *modelSchema) q(t modelTable) string { return pgx.Identifier{s.ns, t.name}.Sanitize() }
func (s *modelSchema) qn(name string) string { return pgx.Identifier{s.ns, name}.Sanitize() }
func (t modelTable) c(logical string) string {
	name, ok := t.col[logical]
	if !ok {
		panic("model: no column " + logical + " in " + t.name)
	}
	return qident(name)
}

// list quotes logical columns of t for a column list.
func (t modelTable) list(logical ...string) string {
	out := make([]string, len(logical))
	for i, l := range logical {
		out[i] = t.c(l)
	}
	return strings.Join(out, ", ")
}

// listAs is list with each column qualified by alias.
func (t modelTable) listAs(alias string, logical ...string) string {
	out := make([]string, len(logical))
	for i, l := range logical {
		out[i] = alias + "." + t.c(l)
	}
	return strings.Join(out, ", ")
}

// pkey is the parent's key; refs the columns of another table that point at a parent, in key order.
func (s *modelSchema) pkey() []string {
	if s.composite {
		return []string{"region", "id"}
	}
	return []string{"id"}
}

func (s *modelSchema) refs(prefix string) []string {
	if s.composite {
		return []string{prefix + "region", prefix + "id"}
	}
	return []string{prefix + "id"}
}

// join matches table alias a's reference columns (refs(prefix)) to parent alias p; cast, when set,
// compares the parent's key as that type.
func (s *modelSchema) join(t modelTable, a, prefix, cast string) string {
	var parts []string
	for i, k := range s.pkey() {
		parts = append(parts, fmt.Sprintf("%s.%s = p.%s%s", a, t.c(s.refs(prefix)[i]), s.parent.c(k), cast))
	}
	return strings.Join(parts, " AND ")
}

func (s *modelSchema) pcols(alias string) string { return s.parent.listAs(alias, s.pkey()...) }

// pfilter restricts alias p to the enrichment's parameter arrays.
func (s *modelSchema) pfilter() string {
	if s.composite {
		return fmt.Sprintf("(p.%s, p.%s) IN (SELECT * FROM unnest($1::int[], $2::int[]))", s.parent.c("region"), s.parent.c("id"))
	}
	return fmt.Sprintf("p.%s = ANY($1)", s.parent.c("id"))
}

func (s *modelSchema) refCols(t modelTable, prefix string) []string {
	var out []string
	for _, c := range s.refs(prefix) {
		out = append(out, t.col[c])
	}
	return out
}

// ddl creates the schema; grantee, when set, gets what docs/security.md lists for matcol.
func (s *modelSchema) ddl() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+";\n", args...) }
	if s.ns != "public" {
		w("CREATE SCHEMA %s", qident(s.ns))
	}
	col := func(t modelTable, name, typ string) string { return t.c(name) + " " + typ }
	stamp := "materialized_at timestamptz"
	top := []string{col(s.top, "id", "int PRIMARY KEY"), col(s.top, "name", "text"), col(s.top, "nparents", "bigint")}
	if s.f["chain"] {
		top = append(top, col(s.top, "total", "bigint"))
	}
	w("CREATE TABLE %s (%s, %s)", s.q(s.top), strings.Join(top, ", "), stamp)

	var parent []string
	for _, k := range s.pkey() {
		parent = append(parent, col(s.parent, k, "int"))
	}
	parent = append(parent, col(s.parent, "name", "text"), col(s.parent, "w", "int"), col(s.parent, "top_id", "int"),
		col(s.parent, "n_children", "bigint"), col(s.parent, "qty_total", "bigint"), col(s.parent, "s_total", "bigint"),
		col(s.parent, "x_total", "bigint"))
	if s.f["mapped"] {
		parent = append(parent, col(s.parent, "g_total", "bigint"))
	}
	if s.f["textkeys"] {
		parent = append(parent, col(s.parent, "n_notes", "bigint"))
	}
	w("CREATE TABLE %s (%s, %s, PRIMARY KEY (%s))", s.q(s.parent), strings.Join(parent, ", "), stamp, s.parent.list(s.pkey()...))
	w("CREATE INDEX ON %s (%s)", s.q(s.parent), s.parent.c("top_id"))

	refDefs := func(t modelTable, prefix, typ string) []string {
		var out []string
		for _, c := range s.refs(prefix) {
			out = append(out, col(t, c, typ))
		}
		return out
	}
	refList := func(t modelTable, prefix string) string { return t.list(s.refs(prefix)...) }
	child := append([]string{col(s.child, "id", "int PRIMARY KEY")}, refDefs(s.child, "p_", "int")...)
	child = append(child, col(s.child, "qty", "int"), col(s.child, "note", "text"))
	if s.f["lookup"] {
		child = append(child, col(s.child, "parent_name", "text"), col(s.child, "parent_w", "int"))
	}
	if s.f["mapped"] {
		child = append(child, col(s.child, "g_sum", "bigint"))
	}
	if s.childIsTarget() {
		child = append(child, stamp)
	}
	w("CREATE TABLE %s (%s)", s.q(s.child), strings.Join(child, ", "))
	w("CREATE INDEX ON %s (%s)", s.q(s.child), refList(s.child, "p_"))
	if s.f["mapped"] {
		w("CREATE TABLE %s (%s, %s, %s)", s.q(s.grand), col(s.grand, "id", "int PRIMARY KEY"), col(s.grand, "c_id", "int"), col(s.grand, "amount", "int"))
		w("CREATE INDEX ON %s (%s)", s.q(s.grand), s.grand.c("c_id"))
	}

	part := append([]string{col(s.part, "id", "int"), col(s.part, "part", "int")}, refDefs(s.part, "p_", "int")...)
	part = append(part, col(s.part, "v", "int"))
	if s.f["partition"] {
		w("CREATE TABLE %s (%s, PRIMARY KEY (%s, %s)) PARTITION BY LIST (%s)", s.q(s.part), strings.Join(part, ", "),
			s.part.c("id"), s.part.c("part"), s.part.c("part"))
		for _, p := range s.parts {
			w("CREATE TABLE %s PARTITION OF %s FOR VALUES IN (%d)", s.qn(p.name), s.q(s.part), p.value)
		}
	} else {
		w("CREATE TABLE %s (%s, PRIMARY KEY (%s, %s))", s.q(s.part), strings.Join(part, ", "), s.part.c("id"), s.part.c("part"))
	}
	w("CREATE INDEX ON %s (%s)", s.q(s.part), refList(s.part, "p_"))
	if s.f["textkeys"] {
		note := append([]string{col(s.note, "id", "int PRIMARY KEY")}, refDefs(s.note, "ref_", "text")...)
		w("CREATE TABLE %s (%s, %s)", s.q(s.note), strings.Join(note, ", "), col(s.note, "body", "text"))
	}
	w("CREATE TABLE %s (%s, %s, %s)", s.q(s.extra), col(s.extra, "id", "int PRIMARY KEY"), col(s.extra, "c_id", "int"), col(s.extra, "val", "int"))
	w("CREATE INDEX ON %s (%s)", s.q(s.extra), s.extra.c("c_id"))
	for _, t := range s.targets() {
		w("CREATE INDEX ON %s (materialized_at) WHERE materialized_at IS NULL", s.q(t))
	}
	return b.String()
}

// seedSQL fills the tables; the same for every seed of a layout.
func (s *modelSchema) seedSQL() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+";\n", args...) }
	w("INSERT INTO %s (%s, %s) SELECT g, 'top ' || g FROM generate_series(1, %d) g", s.q(s.top), s.top.c("id"), s.top.c("name"), modelTops)
	// A seeded row g points at parent (1 + g % 2, 1 + g % 12), or 1 + g % 24 with a one-column key.
	refVals := func(cast string) string {
		if s.composite {
			return fmt.Sprintf("(1 + g %% %d)%s, (1 + g %% %d)%s", modelRegions, cast, modelParents, cast)
		}
		return fmt.Sprintf("(1 + g %% %d)%s", modelParents*modelRegions, cast)
	}
	if s.composite {
		w("INSERT INTO %s (%s) SELECT r, g, 'parent ' || r || '/' || g, g %% 7, 1 + g %% %d FROM generate_series(1, %d) r, generate_series(1, %d) g",
			s.q(s.parent), s.parent.list("region", "id", "name", "w", "top_id"), modelTops, modelRegions, modelParents)
	} else {
		w("INSERT INTO %s (%s) SELECT g, 'parent ' || g, g %% 7, 1 + g %% %d FROM generate_series(1, %d) g",
			s.q(s.parent), s.parent.list("id", "name", "w", "top_id"), modelTops, modelParents*modelRegions)
	}
	w("INSERT INTO %s (%s, %s) SELECT g, %s, g %% 13 - 3, 'note ' || g FROM generate_series(1, 100) g",
		s.q(s.child), s.child.c("id"), s.child.list(append(s.refs("p_"), "qty", "note")...), refVals(""))
	if s.f["mapped"] {
		w("INSERT INTO %s (%s) SELECT g, 1 + g %% 100, g %% 17 FROM generate_series(1, 200) g",
			s.q(s.grand), s.grand.list("id", "c_id", "amount"))
	}
	w("INSERT INTO %s (%s, %s) SELECT g, g %% 2, %s, g %% 11 FROM generate_series(1, 100) g",
		s.q(s.part), s.part.list("id", "part"), s.part.list(append(s.refs("p_"), "v")...), refVals(""))
	if s.f["textkeys"] {
		w("INSERT INTO %s (%s, %s) SELECT g, %s, 'body ' || g FROM generate_series(1, 50) g",
			s.q(s.note), s.note.c("id"), s.note.list(append(s.refs("ref_"), "body")...), refVals("::text"))
	}
	w("INSERT INTO %s (%s) SELECT g, 1 + g %% 100, g %% 9 FROM generate_series(1, 100) g",
		s.q(s.extra), s.extra.list("id", "c_id", "val"))
	return b.String()
}

func (s *modelSchema) childIsTarget() bool { return s.f["lookup"] || s.f["mapped"] }

func (s *modelSchema) targets() []modelTable {
	if s.childIsTarget() {
		return []modelTable{s.top, s.parent, s.child}
	}
	return []modelTable{s.top, s.parent}
}

// grants is what docs/security.md asks for in trigger mode, for every table of the schema.
func (s *modelSchema) grants(role string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "GRANT USAGE ON SCHEMA %s TO %s;\n", qident(s.ns), qident(role))
	fmt.Fprintf(&b, "GRANT SELECT, TRIGGER ON ALL TABLES IN SCHEMA %s TO %s;\n", qident(s.ns), qident(role))
	var targets []string
	for _, t := range s.targets() {
		targets = append(targets, s.q(t))
	}
	fmt.Fprintf(&b, "GRANT UPDATE ON %s TO %s;\n", strings.Join(targets, ", "), qident(role))
	return b.String()
}

// modelVersion is what apply events have changed so far: the children enrichment's SQL, and
// how far the extra enrichment has come (1 and 2 read the extra table, which 0 does not).
type modelVersion struct {
	children int
	extra    int
}

const modelChildrenVariants = 4

type modelEnrichment struct {
	name    string
	table   modelTable
	columns []string // logical
	sql     string
	self    *bool
	deps    []modelDep
}

type modelDep struct {
	table   modelTable
	columns []string // catalog names
	sql     string
}

// enrichments returns the registered enrichments at version v.
func (s *modelSchema) enrichments(v modelVersion) []modelEnrichment {
	p, c, pk, filter := s.parent, s.child, s.pcols("p"), s.pfilter()
	childDep := modelDep{table: c, columns: s.refCols(c, "p_")}
	children := [modelChildrenVariants]string{
		fmt.Sprintf("count(c.%s)::bigint AS %s, coalesce(sum(c.%s), 0)::bigint AS %s", c.c("id"), p.c("n_children"), c.c("qty"), p.c("qty_total")),
		fmt.Sprintf("(count(c.%s) FILTER (WHERE c.%s > 0))::bigint AS %s, coalesce(sum(c.%s) FILTER (WHERE c.%s > 0), 0)::bigint AS %s",
			c.c("id"), c.c("qty"), p.c("n_children"), c.c("qty"), c.c("qty"), p.c("qty_total")),
		fmt.Sprintf("count(DISTINCT c.%s)::bigint AS %s, coalesce(sum(c.%s * 2), 0)::bigint AS %s", c.c("qty"), p.c("n_children"), c.c("qty"), p.c("qty_total")),
		fmt.Sprintf("count(c.%s)::bigint AS %s, coalesce(max(c.%s), -1)::bigint AS %s", c.c("note"), p.c("n_children"), c.c("qty"), p.c("qty_total")),
	}
	out := []modelEnrichment{{
		name: "children", table: p, columns: []string{"n_children", "qty_total"},
		sql: fmt.Sprintf("SELECT %s, %s\nFROM %s p LEFT JOIN %s c ON %s\nWHERE %s\nGROUP BY %s",
			pk, children[v.children%modelChildrenVariants], s.q(p), s.q(c), s.join(c, "c", "p_", ""), filter, pk),
		deps: []modelDep{childDep},
	}, {
		name: "parts", table: p, columns: []string{"s_total"},
		sql: fmt.Sprintf("SELECT %s, coalesce(sum(s.%s), 0)::bigint AS %s\nFROM %s p LEFT JOIN %s s ON %s\nWHERE %s\nGROUP BY %s",
			pk, s.part.c("v"), p.c("s_total"), s.q(p), s.q(s.part), s.join(s.part, "s", "p_", ""), filter, pk),
		deps: []modelDep{{table: s.part, columns: s.refCols(s.part, "p_")}},
	}}
	// Through child, like grand; which shows that an added mapped dependency is heard at once.
	x := s.extra
	throughChild := modelDep{table: x, columns: []string{x.col["c_id"]},
		sql: fmt.Sprintf("SELECT %s FROM %s c WHERE c.%s = ANY($1)", c.listAs("c", s.refs("p_")...), s.q(c), c.c("id"))}
	switch v.extra {
	case 0:
		out = append(out, modelEnrichment{name: "extra", table: p, columns: []string{"x_total"},
			sql: fmt.Sprintf("SELECT %s, (p.%s * 10)::bigint AS %s\nFROM %s p\nWHERE %s", pk, p.c("w"), p.c("x_total"), s.q(p), filter)})
	default:
		expr := fmt.Sprintf("(coalesce(sum(x.%s), 0) + p.%s)::bigint", x.c("val"), p.c("w"))
		if v.extra > 1 {
			expr = fmt.Sprintf("(count(x.%s) * 100 + coalesce(max(x.%s), 0) - p.%s)::bigint", x.c("id"), x.c("val"), p.c("w"))
		}
		out = append(out, modelEnrichment{name: "extra", table: p, columns: []string{"x_total"},
			sql: fmt.Sprintf("SELECT %s, %s AS %s\nFROM %s p LEFT JOIN %s c ON %s LEFT JOIN %s x ON x.%s = c.%s\nWHERE %s\nGROUP BY %s, p.%s",
				pk, expr, p.c("x_total"), s.q(p), s.q(c), s.join(c, "c", "p_", ""), s.q(x), x.c("c_id"), c.c("id"), filter, pk, p.c("w")),
			deps: []modelDep{childDep, throughChild}})
	}
	if s.f["mapped"] {
		g := s.grand
		// grand's c_id is not a parent key: mapped through child, which is itself a dependency, so
		// a child that moves invalidates both its old and its new parent.
		out = append(out, modelEnrichment{
			name: "grand_total", table: p, columns: []string{"g_total"},
			sql: fmt.Sprintf("SELECT %s, coalesce(sum(g.%s), 0)::bigint AS %s\nFROM %s p LEFT JOIN %s c ON %s LEFT JOIN %s g ON g.%s = c.%s\nWHERE %s\nGROUP BY %s",
				pk, g.c("amount"), p.c("g_total"), s.q(p), s.q(c), s.join(c, "c", "p_", ""), s.q(g), g.c("c_id"), c.c("id"), filter, pk),
			deps: []modelDep{childDep, {table: g, columns: []string{g.col["c_id"]}, sql: throughChild.sql}},
		}, modelEnrichment{
			name: "child_grand", table: c, columns: []string{"g_sum"},
			sql: fmt.Sprintf("SELECT c.%s, coalesce(sum(g.%s), 0)::bigint AS %s\nFROM %s c LEFT JOIN %s g ON g.%s = c.%s\nWHERE c.%s = ANY($1)\nGROUP BY c.%s",
				c.c("id"), g.c("amount"), c.c("g_sum"), s.q(c), s.q(g), g.c("c_id"), c.c("id"), c.c("id"), c.c("id")),
			deps: []modelDep{{table: g, columns: []string{g.col["c_id"]}}},
		})
	}
	if s.f["lookup"] {
		// parent's key values map to the children that point at it now; a child that moves makes
		// itself stale (self), so the mapping may read the current child table.
		var mapSQL string
		if s.composite {
			mapSQL = fmt.Sprintf("SELECT c.%s FROM %s c JOIN unnest($1::int[], $2::int[]) AS k(r, i) ON c.%s = k.r AND c.%s = k.i",
				c.c("id"), s.q(c), c.c("p_region"), c.c("p_id"))
		} else {
			mapSQL = fmt.Sprintf("SELECT c.%s FROM %s c WHERE c.%s = ANY($1)", c.c("id"), s.q(c), c.c("p_id"))
		}
		var keys []string
		for _, k := range s.pkey() {
			keys = append(keys, p.col[k])
		}
		out = append(out, modelEnrichment{
			name: "lookup", table: c, columns: []string{"parent_name", "parent_w"},
			sql: fmt.Sprintf("SELECT c.%s, p.%s AS %s, p.%s AS %s\nFROM %s c LEFT JOIN %s p ON %s\nWHERE c.%s = ANY($1)",
				c.c("id"), p.c("name"), c.c("parent_name"), p.c("w"), c.c("parent_w"), s.q(c), s.q(p), s.join(c, "c", "p_", ""), c.c("id")),
			deps: []modelDep{{table: p, columns: keys, sql: mapSQL}},
		})
	}
	if s.f["textkeys"] {
		n := s.note
		out = append(out, modelEnrichment{
			name: "notes", table: p, columns: []string{"n_notes"},
			sql: fmt.Sprintf("SELECT %s, count(n.%s)::bigint AS %s\nFROM %s p LEFT JOIN %s n ON %s\nWHERE %s\nGROUP BY %s",
				pk, n.c("id"), p.c("n_notes"), s.q(p), s.q(n), s.join(n, "n", "ref_", "::text"), filter, pk),
			deps: []modelDep{{table: n, columns: s.refCols(n, "ref_")}},
		})
	}
	t := s.top
	var self *bool
	if !s.topSelf {
		self = new(bool)
	}
	parentDep := modelDep{table: p, columns: []string{p.col["top_id"]}}
	out = append(out, modelEnrichment{
		name: "top_count", table: t, columns: []string{"nparents"}, self: self,
		sql: fmt.Sprintf("SELECT t.%s, count(p.%s)::bigint AS %s\nFROM %s t LEFT JOIN %s p ON p.%s = t.%s\nWHERE t.%s = ANY($1)\nGROUP BY t.%s",
			t.c("id"), p.c("top_id"), t.c("nparents"), s.q(t), s.q(p), p.c("top_id"), t.c("id"), t.c("id"), t.c("id")),
		deps: []modelDep{parentDep},
	})
	if s.f["chain"] {
		// parent.qty_total is the children enrichment's output: a chain.
		out = append(out, modelEnrichment{
			name: "top_chain", table: t, columns: []string{"total"}, self: self,
			sql: fmt.Sprintf("SELECT t.%s, coalesce(sum(p.%s), 0)::bigint AS %s\nFROM %s t LEFT JOIN %s p ON p.%s = t.%s\nWHERE t.%s = ANY($1)\nGROUP BY t.%s",
				t.c("id"), p.c("qty_total"), t.c("total"), s.q(t), s.q(p), p.c("top_id"), t.c("id"), t.c("id"), t.c("id")),
			deps: []modelDep{parentDep},
		})
	}
	return out
}

// config renders the YAML at version v. Names are JSON strings, which YAML reads as they are.
func (s *modelSchema) config(v modelVersion, mode, slot string) string {
	str := func(x any) string {
		var b strings.Builder
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(x)
		return strings.TrimSpace(b.String())
	}
	block := func(indent, sql string) string {
		return "|\n" + indent + strings.ReplaceAll(sql, "\n", "\n"+indent) + "\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "invalidation:\n  mode: %s\n", mode)
	if mode == "logical" {
		fmt.Fprintf(&b, "  slot: %s\n  publication: %s\n  fix_replica_identity: true\n", slot, slot)
	}
	fmt.Fprintf(&b, "status:\n  listen: \"\"\nmaterializer:\n  workers: %d\n  batch_size: %d\nenrichments:\n", s.workers, s.batch)
	for _, e := range s.enrichments(v) {
		cols := make([]string, len(e.columns))
		for i, c := range e.columns {
			cols[i] = e.table.col[c]
		}
		fmt.Fprintf(&b, "  - name: %s\n    table: %s\n    columns: %s\n    sql: %s", e.name, str(s.q(e.table)), str(cols), block("      ", e.sql))
		if e.self != nil {
			fmt.Fprintf(&b, "    self: %t\n", *e.self)
		}
		if len(e.deps) > 0 {
			b.WriteString("    depends_on:\n")
		}
		for _, d := range e.deps {
			fmt.Fprintf(&b, "      - table: %s\n        columns: %s\n", str(s.q(d.table)), str(d.columns))
			if d.sql != "" {
				fmt.Fprintf(&b, "        sql: %s", block("          ", d.sql))
			}
		}
	}
	return b.String()
}

// writableParts returns the partitions writers may name.
func (s *modelSchema) writableParts() []modelPartition {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]modelPartition(nil), s.parts...)
}
