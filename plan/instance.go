package plan

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"

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
	e := b.add(d, targets, owner)
	if e != nil && len(b.problems) == 0 {
		if err := b.resolveDeps(e); err != nil {
			return nil, err
		}
		if trusted {
			known.(*instanceReads).restore(e)
		}
		if len(b.problems) == 0 {
			b.checkReads(e)
		}
	}
	b.instance, b.trusted = false, false
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
