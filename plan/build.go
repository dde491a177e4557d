package plan

import (
	"context"
	"fmt"
	"slices"
	"sort"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/registry"
)

type builder struct {
	ctx      context.Context
	conn     pgx.Tx
	rels     map[pgident.Table]*discovery.Relation
	p        *Plan
	problems []string
	stale    map[uint32]bool
	arrays   map[uint32]uint32
	types    map[uint32]string
	// folded gathers the warnings of template instances, one per template and kind.
	folded    map[string]*folded
	foldOrder []string
	// instance is true while a template instance is checked: it runs under a savepoint of its
	// own, so single checks need none, and it stops at its first problem. trusted skips the
	// statements of an instance validated before (see validated).
	instance, trusted bool
	opts              Options
	// checks is the transaction instance checks run in: conn, or one on a fresh connection.
	checks     pgx.Tx
	checksConn *pgx.Conn
	checked    int
	// temp holds the transactions whose backend has its temporary schema (see tempSchema).
	temp map[pgx.Tx]bool
	// err is the first failure that is not the enrichments' (see fatal).
	err error
	// shapes, code and sameReads let template instances share what they read (see shapeReads).
	shapes    map[string]*shapeReads
	code      map[string]bool
	sameReads bool
}

func (b *builder) fail(e *registry.Enrichment, format string, args ...any) {
	prefix := fmt.Sprintf("enrichment %s: ", e.Name)
	if e.Schema != "" {
		prefix = fmt.Sprintf("enrichment %s on %s: ", e.Name, e.Target)
	}
	b.problems = append(b.problems, prefix+fmt.Sprintf(format, args...))
}

// fatal records a failure that is not a problem of the enrichments, such as a lost connection:
// Build returns the first one as its error, so that callers can tell it from invalid input.
func (b *builder) fatal(err error) {
	if b.err == nil {
		b.err = err
	}
	b.problems = append(b.problems, err.Error()) // stops a template instance at once
}

func (b *builder) relation(t pgident.Table) (*discovery.Relation, error) {
	if r, ok := b.rels[t]; ok {
		return r, nil
	}
	r, err := discovery.LookupRelation(b.ctx, b.conn, t)
	if err != nil {
		return nil, err
	}
	b.rels[t] = r
	return r, nil
}

func (b *builder) build(defs []registry.Enrichment) error {
	tables, err := discovery.Scan(b.ctx, b.conn)
	if err != nil {
		return err
	}
	b.stale = map[uint32]bool{}
	for _, t := range tables {
		b.stale[t.OID] = t.StaleIndex
	}
	targets := map[pgident.Table]*Target{}
	owner := map[pgident.Table]map[string]string{}
	var instances []registry.Enrichment
	var instanceTables []pgident.Table
	for i := range defs {
		d := defs[i]
		if !d.Template {
			b.add(d, targets, owner)
			continue
		}
		b.p.Templates = append(b.p.Templates, d)
		n := 0
		for _, t := range tables {
			// A table of that name without materialized_at is not discovered, so not matched.
			if t.Name.Name != d.Target.Name || !pgident.MatchSchema(d.Target.Schema, t.Name.Schema) || t.Name.Schema == "matcol" {
				continue
			}
			instances = append(instances, Instance(d, t.Name.Schema))
			instanceTables = append(instanceTables, t.Name)
			n++
		}
		if n == 0 {
			b.p.Warnings = append(b.p.Warnings, fmt.Sprintf("enrichment %s: no schema matching %s has a table %s with materialized_at yet",
				d.Name, d.Target.Schema, pgident.Quote(d.Target.Name)))
		}
	}
	if len(instances) > 0 {
		ids, err := registry.EnsureTargets(b.ctx, b.conn, instanceTables)
		if err != nil {
			return err
		}
		// Every instance's tables in one catalog read rather than two queries each.
		want := slices.Clone(instanceTables)
		for _, d := range instances {
			for _, dep := range d.DependsOn {
				want = append(want, dep.Source)
			}
		}
		rels, err := discovery.LookupRelations(b.ctx, b.conn, want)
		if err != nil {
			return err
		}
		for _, t := range want {
			b.rels[t] = rels[t] // nil: does not exist
		}
		schemas := make([]string, len(instances))
		for i, d := range instances {
			schemas[i] = d.Schema
		}
		if b.code, err = schemasWithCode(b.ctx, b.conn, schemas); err != nil {
			return err
		}
		b.shapes = map[string]*shapeReads{}
		valid := map[string]int{}
		var first = map[string]string{}
		defer b.closeChecks()
		for _, d := range instances {
			d.TargetID = ids[d.Target]
			probs, err := b.addInstance(d, targets, owner)
			if err != nil {
				return err
			}
			if len(probs) == 0 {
				valid[d.Name]++
				continue
			}
			b.p.Skipped = append(b.p.Skipped, probs...)
			if first[d.Name] == "" {
				first[d.Name] = probs[0]
			}
		}
		// A template valid nowhere is a broken template, not a broken tenant.
		for _, d := range b.p.Templates {
			if valid[d.Name] == 0 && first[d.Name] != "" {
				b.problems = append(b.problems, fmt.Sprintf("enrichment %s: invalid in every schema matching %s; the first problem: %s",
					d.Name, d.Target.Schema, first[d.Name]))
			}
		}
	}
	comparable := map[string]bool{} // by type
	for _, t := range targets {
		if len(t.Enrichments) == 0 {
			continue
		}
		b.p.Targets = append(b.p.Targets, t)
		t.Comparable = true
		for _, c := range t.Columns {
			if !slices.Contains(t.Owned, c.Name) {
				continue
			}
			ok, seen := comparable[c.Type]
			if !seen {
				_, err := b.prepare(fmt.Sprintf("SELECT NULL::%s OPERATOR(pg_catalog.=) NULL::%s", c.Type, c.Type))
				ok = err == nil
				comparable[c.Type] = ok
			}
			t.Comparable = t.Comparable && ok
		}
	}
	sort.Slice(b.p.Targets, func(i, j int) bool { return b.p.Targets[i].Table.String() < b.p.Targets[j].Table.String() })
	seen := map[string]bool{}
	for _, t := range b.p.Targets {
		for _, p := range t.SettingsProblems() { // a template's instances share theirs
			if !seen[p] {
				seen[p] = true
				b.problems = append(b.problems, p)
			}
		}
	}
	for _, t := range b.p.Targets {
		if t.StaleIndex {
			continue
		}
		msg := fmt.Sprintf("table %s has no index on stale rows; create one: CREATE INDEX CONCURRENTLY ON %s (%s) WHERE materialized_at IS NULL",
			t.Table, t.Table.Sanitize(), keyList(t.Key, ""))
		if t.SearchPath == "" {
			b.p.Warnings = append(b.p.Warnings, msg)
		} else {
			// One line per template, not one per tenant.
			b.fold(t.Enrichments[0], "stale index", msg, false)
		}
	}
	if err := b.buildSources(targets); err != nil {
		return err
	}
	b.checkChains()
	b.unfold()
	return nil
}

// add validates one enrichment against its target and binds it; it returns nil when the target
// itself is unusable.
func (b *builder) add(d registry.Enrichment, targets map[pgident.Table]*Target, owner map[pgident.Table]map[string]string) *Enrichment {
	rel, err := b.relation(d.Target)
	if err != nil {
		b.fatal(err)
		return nil
	}
	if rel == nil {
		b.fail(&d, "table %s does not exist", d.Target)
		return nil
	}
	d.Target = rel.Name
	if rel.Kind != 'r' && rel.Kind != 'p' {
		b.fail(&d, "%s is a %s; matcol materializes columns of tables", rel.Name, kindName(rel.Kind))
		return nil
	}
	stamp, ok := rel.Column("materialized_at")
	switch {
	case !ok:
		b.fail(&d, "table %s has no materialized_at column; add one: ALTER TABLE %s ADD COLUMN materialized_at timestamptz",
			rel.Name, rel.Name.Sanitize())
		return nil
	case stamp.Type != "timestamp with time zone":
		b.fail(&d, "%s.materialized_at is %s; it must be timestamptz", rel.Name, stamp.Type)
		return nil
	case stamp.NotNull:
		b.fail(&d, "%s.materialized_at is NOT NULL; it must be nullable (NULL means stale)", rel.Name)
		return nil
	}
	if len(rel.Key) == 0 {
		b.fail(&d, "table %s has no primary key; matcol addresses rows by primary key", rel.Name)
		return nil
	}
	t := targets[rel.Name]
	if t == nil {
		t = &Target{ID: d.TargetID, Table: rel.Name, OID: rel.OID, Key: rel.Key, Columns: rel.Columns, StaleIndex: b.stale[rel.OID], Hash: Hash(rel.Name), Relation: rel}
		targets[rel.Name] = t
		owner[rel.Name] = map[string]string{}
	}
	if d.Schema != "" {
		t.SearchPath = pgx.Identifier{d.Schema}.Sanitize()
	}
	colsOK := true
	for _, c := range d.Columns {
		if _, ok := rel.Column(c); !ok {
			b.fail(&d, "column %q does not exist in %s", c, rel.Name)
			colsOK = false
			continue
		}
		if slices.ContainsFunc(rel.Key, func(k discovery.Column) bool { return k.Name == c }) {
			b.fail(&d, "column %q is part of the primary key of %s and cannot be materialized", c, rel.Name)
			colsOK = false
			continue
		}
		if other, taken := owner[rel.Name][c]; taken {
			b.fail(&d, "column %q of %s is already owned by enrichment %s", c, rel.Name, other)
			colsOK = false
			continue
		}
		owner[rel.Name][c] = d.Name
	}
	e := &Enrichment{Enrichment: d, Target: t}
	if colsOK && b.checkSQL(e, rel) {
		b.checkWrite(e)
	}
	t.Enrichments = append(t.Enrichments, e)
	t.Owned = append(t.Owned, d.Columns...)
	// Unset self is read-based (SelfWatch); until every consumer reads SelfWatch, Self keeps
	// meaning "some update of the row invalidates it".
	if d.Self == nil || *d.Self {
		t.Self = true
	}
	return e
}

func (b *builder) buildSources(targets map[pgident.Table]*Target) error {
	for _, t := range b.p.Targets {
		for _, e := range t.Enrichments {
			if e.deps == nil && e.Schema == "" {
				n := len(b.problems)
				if err := b.resolveDeps(e); err != nil {
					return err
				}
				if len(b.problems) == n {
					b.checkReads(e) // a failed depends_on entry would read as a missing one
				}
			}
		}
	}
	sources := map[pgident.Table]*Source{}
	for _, t := range b.p.Targets {
		for _, e := range t.Enrichments {
			for _, d := range e.deps {
				if d.Static {
					continue // never fires: no trigger, no publication entry
				}
				rel := d.rel
				s := sources[rel.Name]
				if s == nil {
					s = &Source{Table: rel.Name, OID: rel.OID, Relation: rel, Hash: Hash(rel.Name), Ignored: []string{"materialized_at"}}
					if tt := targets[rel.Name]; tt != nil {
						s.Ignored = append(s.Ignored, tt.Owned...)
					}
					sources[rel.Name] = s
				}
				s.Deps = append(s.Deps, d)
			}
		}
	}
	for _, s := range sources {
		b.p.Sources = append(b.p.Sources, s)
	}
	sort.Slice(b.p.Sources, func(i, j int) bool { return b.p.Sources[i].Table.String() < b.p.Sources[j].Table.String() })
	return nil
}

// resolveDeps finds and checks the enrichment's dependency tables.
func (b *builder) resolveDeps(e *Enrichment) error {
	e.deps = []*Dep{}
	for i := range e.DependsOn {
		d := &Dep{Dependency: e.DependsOn[i], Enrichment: e, Target: e.Target}
		rel, err := b.relation(d.Source)
		if err != nil {
			return err
		}
		if rel == nil {
			b.fail(&e.Enrichment, "depends_on table %s does not exist", d.Source)
			continue
		}
		if rel.Name.Schema == "matcol" {
			b.fail(&e.Enrichment, "depends_on table %s is matcol's own", rel.Name)
			continue
		}
		switch {
		case rel.Kind == 'v':
			b.fail(&e.Enrichment, "depends_on %s is a view, which never fires triggers; name the tables it reads instead, each in a depends_on entry of its own", rel.Name)
			continue
		case !d.Static && (rel.Kind == 'm' || rel.Kind == 'f'):
			b.fail(&e.Enrichment, "depends_on %s is a %s, which never fires triggers; mark it static: true (with no columns), and set expires_after if it changes",
				rel.Name, kindName(rel.Kind))
			continue
		}
		d.Source = rel.Name
		e.DependsOn[i].Source = rel.Name
		if !b.checkDep(d, rel) {
			continue
		}
		d.rel = rel
		e.deps = append(e.deps, d)
	}
	return nil
}
