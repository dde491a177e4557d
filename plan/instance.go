package plan

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/registry"
)

// Instance binds a template to one schema: its target is the table of that name there, and
// unqualified dependency tables resolve there too. Qualified ones (public.currency) are shared.
func Instance(d registry.Enrichment, schema string) registry.Enrichment {
	d.Template = false
	d.Schema, d.Pattern = schema, d.Target.Schema
	d.Target = pgident.Table{Schema: schema, Name: d.Target.Name}
	deps := make([]registry.Dependency, len(d.DependsOn))
	for i, dep := range d.DependsOn {
		if dep.Source.Schema == "" {
			dep.Source.Schema = schema
		}
		deps[i] = dep
	}
	d.DependsOn = deps
	return d
}

// addInstance validates one template instance with search_path set to its schema, inside a
// savepoint that is rolled back: the locks its checks take are released at once, so validating
// thousands of schemas never fills the lock table. It returns the instance's problems; an
// instance with problems is left out of the plan.
func (b *builder) addInstance(d registry.Enrichment, targets map[pgident.Table]*Target, owner map[pgident.Table]map[string]string) ([]string, error) {
	key := b.instanceKey(d)
	known, trusted := validated.Load(key)
	main := b.conn
	if !trusted {
		tx, err := b.checkTx()
		if err != nil {
			return nil, err
		}
		b.conn = tx
		defer func() { b.conn = main }()
		if err := b.tempSchema(); err != nil {
			return nil, err
		}
		if _, err := b.conn.Exec(b.ctx, "SAVEPOINT matcol_instance; SET LOCAL search_path TO "+pgx.Identifier{d.Schema}.Sanitize()); err != nil {
			return nil, err
		}
	}
	saved := b.problems
	b.problems = nil
	b.instance, b.trusted = true, trusted
	shape := b.shapeKey(d)
	var same *instanceReads
	if s := b.shapes[shape]; !trusted && s != nil {
		same = s.reads.moved(s.schema, d.Schema, b.rels)
	}
	b.sameReads = same != nil
	e := b.add(d, targets, owner)
	if e != nil && len(b.problems) == 0 {
		if err := b.resolveDeps(e); err != nil {
			return nil, err
		}
		switch {
		case trusted:
			known.(*instanceReads).restore(e)
		case same != nil:
			same.restore(e)
		}
		if len(b.problems) == 0 {
			b.checkReads(e)
		}
	}
	b.instance, b.trusted, b.sameReads = false, false, false
	if b.err != nil {
		return nil, b.err
	}
	probs := b.problems
	b.problems = saved
	if !trusted {
		if _, err := b.conn.Exec(b.ctx, "ROLLBACK TO SAVEPOINT matcol_instance; RELEASE SAVEPOINT matcol_instance"); err != nil {
			return nil, err
		}
		if len(probs) == 0 {
			if validatedCount.Add(1) > maxValidated {
				validated.Clear()
				validatedCount.Store(0)
			}
			validated.Store(key, readsOf(e))
			if shape != "" && b.shapes[shape] == nil && sameEverywhere(e) {
				b.shapes[shape] = &shapeReads{schema: d.Schema, reads: readsOf(e)}
			}
		}
	}
	if len(probs) > 0 && e != nil {
		t := e.Target
		t.Enrichments = slices.DeleteFunc(t.Enrichments, func(x *Enrichment) bool { return x == e })
		t.Owned = slices.DeleteFunc(t.Owned, func(c string) bool { return slices.Contains(d.Columns, c) })
		for _, c := range d.Columns {
			if owner[t.Table][c] == d.Name {
				delete(owner[t.Table], c)
			}
		}
	}
	return probs, nil
}

// checkTx returns the transaction the next instance is checked in, opening a fresh connection
// every InstancesPerConn instances when Options.Connect is set.
func (b *builder) checkTx() (pgx.Tx, error) {
	if b.opts.Connect == nil {
		return b.conn, nil
	}
	if b.checks != nil && b.checked < b.opts.InstancesPerConn {
		b.checked++
		return b.checks, nil
	}
	b.closeChecks()
	conn, err := b.opts.Connect(b.ctx)
	if err != nil {
		return nil, err
	}
	tx, err := conn.Begin(b.ctx)
	if err != nil {
		conn.Close(b.ctx)
		return nil, err
	}
	b.checks, b.checksConn, b.checked = tx, conn, 1
	return tx, nil
}

func (b *builder) closeChecks() {
	if b.checksConn != nil {
		_ = b.checks.Rollback(b.ctx)
		_ = b.checksConn.Close(b.ctx)
		b.checks, b.checksConn = nil, nil
	}
}

// validated remembers instances that passed validation in this process, by instanceKey: the
// definition, and the OIDs and columns of its target and dependency tables. A rebuild (the
// second pass of apply, the daemon's start, a rescan after a new tenant) then validates only
// what is new or changed, and takes what the instance reads from here instead of creating a
// view again. It is cleared when it grows past maxValidated. A view between the SQL and its
// tables is not in the key: redefining it takes effect at the next process start (a table it
// newly reads must be covered, so it changes the key when the depends_on entry is added).
var (
	validated      sync.Map
	validatedCount atomic.Int64
)

const maxValidated = 200_000

// instanceReads is what a validated instance reads: its SQL, and each dependency's mapping SQL.
type instanceReads struct {
	reads    []Read
	calls    []string
	deps     [][]Read
	depCalls [][]string
}

func readsOf(e *Enrichment) *instanceReads {
	r := &instanceReads{reads: e.Reads, calls: e.Calls}
	for _, d := range e.deps {
		r.deps = append(r.deps, d.Reads)
		r.depCalls = append(r.depCalls, d.Calls)
	}
	return r
}

// restore gives a trusted instance what it read when it was validated: its dependencies are
// then the same, all of them resolved.
func (r *instanceReads) restore(e *Enrichment) {
	e.Reads, e.Calls = r.reads, r.calls
	for i, d := range e.deps {
		if i < len(r.deps) {
			d.Reads, d.Calls = r.deps[i], r.depCalls[i]
		}
	}
}

func (b *builder) instanceKey(d registry.Enrichment) string {
	h := sha256.New()
	_ = json.NewEncoder(h).Encode(d)
	for _, t := range append([]pgident.Table{d.Target}, depSources(d)...) {
		r := b.rels[t]
		if r == nil {
			fmt.Fprintf(h, "missing %s\n", t.Sanitize())
			continue
		}
		fmt.Fprintf(h, "%d %s\n", r.OID, t.Sanitize())
		for _, c := range r.Columns {
			fmt.Fprintf(h, "%s %d %t\n", pgx.Identifier{c.Name}.Sanitize(), c.TypeOID, c.NotNull)
		}
		for _, c := range r.Key {
			fmt.Fprintf(h, "key %s\n", pgx.Identifier{c.Name}.Sanitize())
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

func depSources(d registry.Enrichment) []pgident.Table {
	out := make([]pgident.Table, len(d.DependsOn))
	for i, dep := range d.DependsOn {
		out[i] = dep.Source
	}
	return out
}

// A template's instances differ only in their schema, and most tenants' tables are alike. An
// instance takes what another instance of its template reads, moved to its own schema, instead
// of a view of its own, when the result cannot differ: the same target and dependency tables,
// by name within the schema, with the same kinds and the same column names and types; no
// function or operator in either schema (overload resolution could pick one in one schema and
// not the other); and the first instance's SQL read nothing but those tables, through no view
// and no function outside pg_catalog. Its search_path holds only its own schema, so names
// resolve there or outside every tenant, alike for both.
type shapeReads struct {
	schema string
	reads  *instanceReads
}

// shapeKey says what an instance's reads depend on besides its schema; "" when it may not
// share them.
func (b *builder) shapeKey(d registry.Enrichment) string {
	if b.code[d.Schema] {
		return ""
	}
	rel := func(t pgident.Table) pgident.Table {
		if t.Schema == d.Schema {
			t.Schema = ""
		}
		return t
	}
	def := d
	def.Schema, def.Target, def.TargetID = "", rel(d.Target), 0
	def.DependsOn = make([]registry.Dependency, len(d.DependsOn))
	for i, dep := range d.DependsOn {
		dep.Source = rel(dep.Source)
		def.DependsOn[i] = dep
	}
	h := sha256.New()
	_ = json.NewEncoder(h).Encode(def)
	for _, t := range append([]pgident.Table{d.Target}, depSources(d)...) {
		r := b.rels[t]
		if r == nil {
			return ""
		}
		fmt.Fprintf(h, "%q %c\n", rel(t), r.Kind)
		if t.Schema != d.Schema {
			fmt.Fprintf(h, "%d\n", r.OID) // shared: the same table for every instance
		}
		for _, c := range r.Columns {
			fmt.Fprintf(h, "%q %d\n", c.Name, c.TypeOID)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// sameEverywhere reports whether what e reads may be lent to instances of the same shape.
func sameEverywhere(e *Enrichment) bool {
	if e.viaViews || len(e.Calls) > 0 {
		return false
	}
	for _, d := range e.deps {
		if d.viaViews || len(d.Calls) > 0 {
			return false
		}
	}
	return true
}

// moved returns r with the tables of schema from taken from schema to; nil when one is missing.
func (r *instanceReads) moved(from, to string, rels map[pgident.Table]*discovery.Relation) *instanceReads {
	move := func(reads []Read) ([]Read, bool) {
		if reads == nil {
			return nil, true
		}
		out := make([]Read, len(reads))
		for i, x := range reads {
			if x.Table.Schema == from {
				t := pgident.Table{Schema: to, Name: x.Table.Name}
				rel := rels[t]
				if rel == nil {
					return nil, false
				}
				x.Table, x.OID = t, rel.OID
			}
			out[i] = x
		}
		return out, true
	}
	m := &instanceReads{calls: r.calls, depCalls: r.depCalls}
	var ok bool
	if m.reads, ok = move(r.reads); !ok {
		return nil
	}
	for _, d := range r.deps {
		reads, ok := move(d)
		if !ok {
			return nil
		}
		m.deps = append(m.deps, reads)
	}
	return m
}

// schemasWithCode returns the schemas among schemas that hold functions or operators.
func schemasWithCode(ctx context.Context, tx pgx.Tx, schemas []string) (map[string]bool, error) {
	rows, err := tx.Query(ctx, `
		SELECT n.nspname FROM pg_namespace n WHERE n.nspname = ANY($1)
		  AND (EXISTS (SELECT FROM pg_proc p WHERE p.pronamespace = n.oid)
		       OR EXISTS (SELECT FROM pg_operator o WHERE o.oprnamespace = n.oid))`, schemas)
	if err != nil {
		return nil, fmt.Errorf("find schemas with functions: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("find schemas with functions: %w", err)
	}
	out := make(map[string]bool, len(names))
	for _, n := range names {
		out[n] = true
	}
	return out, nil
}
