// Package plan resolves registered enrichments against the live catalog into what the listener
// and the materializer execute: key columns, owned columns, sources, and generated SQL. Build is
// also the validation behind `matcol apply`: every problem names its enrichment.
package plan

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/registry"
)

// Plan is every target and every source, resolved.
type Plan struct {
	Targets []*Target
	Sources []*Source
	// Warnings are problems that do not stop matcol, such as a missing stale-row index.
	Warnings []string
	// Templates are the registered template enrichments, as registered; Targets hold their
	// instances, one per matching schema.
	Templates []registry.Enrichment
	// Skipped names the template instances left out because they are invalid in their schema,
	// each with its problem.
	Skipped []string
}

// Target is a table with at least one enrichment.
type Target struct {
	ID          int
	Table       pgident.Table
	OID         uint32
	Key         []discovery.Column
	Columns     []discovery.Column
	Enrichments []*Enrichment
	// Owned are all enrichment columns of the table; changes to them never invalidate.
	Owned []string
	// Self is true when changes to the row's other columns make it stale.
	Self       bool
	StaleIndex bool
	// Hash names the target in trigger names and NOTIFY payloads.
	Hash string
	// SearchPath is the quoted schema that a template instance's SQL runs in (search_path set
	// locally for each statement that runs it); empty for other targets.
	SearchPath string
}

// Enrichment is a registered enrichment bound to its target.
type Enrichment struct {
	registry.Enrichment
	Target *Target
	deps   []*Dep // resolved and checked
}

// Source is a table whose changes invalidate targets.
type Source struct {
	Table    pgident.Table
	OID      uint32
	Relation *discovery.Relation
	// Ignored are columns whose changes never invalidate: materialized_at and, when the source is
	// also a target, the columns matcol writes.
	Ignored []string
	Deps    []*Dep
	Hash    string
}

// Dep is one dependency of an enrichment on a source.
type Dep struct {
	registry.Dependency
	Enrichment *Enrichment
	Target     *Target
	rel        *discovery.Relation
}

// Direct reports whether the dependency's values are target keys as they are.
func (d *Dep) Direct() bool { return strings.TrimSpace(d.SQL) == "" }

// Hash returns a short stable name for a table, usable inside identifiers of 63 bytes.
func Hash(t pgident.Table) string {
	h := sha256.Sum256([]byte(t.Schema + "\x00" + t.Name))
	return hex.EncodeToString(h[:8])
}

// ValidationError lists every problem Build found.
type ValidationError struct{ Problems []string }

func (e *ValidationError) Error() string {
	if len(e.Problems) == 1 {
		return e.Problems[0]
	}
	return "invalid enrichments:\n  - " + strings.Join(e.Problems, "\n  - ")
}

// Build resolves defs against the catalog and validates them, inside tx. Statements are only
// prepared, never executed, each under a savepoint so that a failing one leaves tx usable.
func Build(ctx context.Context, tx pgx.Tx, defs []registry.Enrichment) (*Plan, error) {
	return BuildWith(ctx, tx, defs, Options{})
}

// Options tune Build.
type Options struct {
	// Connect, when set, opens a fresh connection for each InstancesPerConn template instances
	// to be validated on, closed afterwards: a backend caches every table it touches, and one
	// backend validating thousands of schemas would hold hundreds of MB.
	Connect func(context.Context) (*pgx.Conn, error)
	// InstancesPerConn defaults to 250.
	InstancesPerConn int
}

// BuildWith is Build with options.
func BuildWith(ctx context.Context, tx pgx.Tx, defs []registry.Enrichment, opts Options) (*Plan, error) {
	if opts.InstancesPerConn <= 0 {
		opts.InstancesPerConn = 250
	}
	b := &builder{ctx: ctx, conn: tx, rels: map[pgident.Table]*discovery.Relation{}, p: &Plan{}, arrays: map[uint32]uint32{}, opts: opts}
	if err := b.build(defs); err != nil {
		return nil, err
	}
	if len(b.problems) > 0 {
		return nil, &ValidationError{Problems: b.problems}
	}
	return b.p, nil
}

type builder struct {
	ctx      context.Context
	conn     pgx.Tx
	rels     map[pgident.Table]*discovery.Relation
	p        *Plan
	problems []string
	stale    map[uint32]bool
	arrays   map[uint32]uint32
	// instance is true while a template instance is checked: it runs under a savepoint of its
	// own, so single checks need none, and it stops at its first problem. trusted skips the
	// statements of an instance validated before (see validated).
	instance, trusted bool
	opts              Options
	// checks is the transaction instance checks run in: conn, or one on a fresh connection.
	checks     pgx.Tx
	checksConn *pgx.Conn
	checked    int
}

func (b *builder) fail(e *registry.Enrichment, format string, args ...any) {
	prefix := fmt.Sprintf("enrichment %s: ", e.Name)
	if e.Schema != "" {
		prefix = fmt.Sprintf("enrichment %s on %s: ", e.Name, e.Target)
	}
	b.problems = append(b.problems, prefix+fmt.Sprintf(format, args...))
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
	for _, t := range targets {
		if len(t.Enrichments) == 0 {
			continue
		}
		b.p.Targets = append(b.p.Targets, t)
		if !t.StaleIndex {
			b.p.Warnings = append(b.p.Warnings, fmt.Sprintf(
				"table %s has no index on stale rows; create one: CREATE INDEX CONCURRENTLY ON %s (%s) WHERE materialized_at IS NULL",
				t.Table, t.Table.Sanitize(), keyList(t.Key, "")))
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
	return b.buildSources(targets)
}

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
	_, trusted := validated.Load(key)
	main := b.conn
	if !trusted {
		tx, err := b.checkTx()
		if err != nil {
			return nil, err
		}
		b.conn = tx
		defer func() { b.conn = main }()
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
			validated.Store(key, true)
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
// what is new or changed. It is cleared when it grows past maxValidated.
var (
	validated      sync.Map
	validatedCount atomic.Int64
)

const maxValidated = 200_000

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

// add validates one enrichment against its target and binds it; it returns nil when the target
// itself is unusable.
func (b *builder) add(d registry.Enrichment, targets map[pgident.Table]*Target, owner map[pgident.Table]map[string]string) *Enrichment {
	rel, err := b.relation(d.Target)
	if err != nil {
		b.problems = append(b.problems, err.Error())
		return nil
	}
	if rel == nil {
		b.fail(&d, "table %s does not exist", d.Target)
		return nil
	}
	d.Target = rel.Name
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
		t = &Target{ID: d.TargetID, Table: rel.Name, OID: rel.OID, Key: rel.Key, Columns: rel.Columns, StaleIndex: b.stale[rel.OID], Hash: Hash(rel.Name)}
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
	if d.Self {
		t.Self = true
	}
	return e
}

// checkSQL prepares the enrichment's SQL and checks its parameters and output columns.
func (b *builder) checkSQL(e *Enrichment, rel *discovery.Relation) bool {
	if b.trusted {
		return true
	}
	sd, err := b.prepare(e.SQL)
	if err != nil {
		b.fail(&e.Enrichment, "sql does not prepare: %s", pgMessage(err))
		return false
	}
	t := e.Target
	ok := true
	if len(sd.ParamOIDs) != len(t.Key) {
		b.fail(&e.Enrichment, "sql uses %d parameters; it must take one array per primary-key column of %s (%s), as $1..$%d",
			len(sd.ParamOIDs), t.Table, keyList(t.Key, ""), len(t.Key))
		ok = false
	} else {
		for i, k := range t.Key {
			want, err := b.arrayOf(k.TypeOID)
			if err != nil {
				b.problems = append(b.problems, err.Error())
				return false
			}
			if sd.ParamOIDs[i] != want {
				b.fail(&e.Enrichment, "$%d is used as %s; it must be %s[] (the type of key column %q), for example = ANY($%d)",
					i+1, b.typeName(sd.ParamOIDs[i]), k.Type, k.Name, i+1)
				ok = false
			}
		}
	}
	want := map[string]bool{}
	for _, k := range t.Key {
		want[k.Name] = true
	}
	for _, c := range e.Columns {
		want[c] = true
	}
	got := map[string]bool{}
	for _, f := range sd.Fields {
		name := f.Name
		if got[name] {
			b.fail(&e.Enrichment, "sql returns column %q twice", name)
			ok = false
		}
		got[name] = true
		if !want[name] {
			b.fail(&e.Enrichment, "sql returns column %q, which is neither a key column of %s nor listed in columns", name, t.Table)
			ok = false
		}
	}
	for _, k := range t.Key {
		if !got[k.Name] {
			b.fail(&e.Enrichment, "sql must return key column %q of %s", k.Name, t.Table)
			ok = false
		}
	}
	for _, c := range e.Columns {
		if !got[c] {
			b.fail(&e.Enrichment, "sql does not return listed column %q", c)
			ok = false
		}
	}
	_ = rel
	return ok
}

// checkWrite prepares the generated write statement, which is where PostgreSQL checks that every
// output type is assignable to its column.
func (b *builder) checkWrite(e *Enrichment) {
	if b.trusted {
		return
	}
	sql := WriteSQL(e.Target, []*Enrichment{e}, true)
	if _, err := b.prepare(sql); err != nil {
		b.fail(&e.Enrichment, "its output cannot be written to %s: %s", e.Target.Table, pgMessage(err))
	}
}

func (b *builder) buildSources(targets map[pgident.Table]*Target) error {
	for _, t := range b.p.Targets {
		for _, e := range t.Enrichments {
			if e.deps == nil && e.Schema == "" {
				if err := b.resolveDeps(e); err != nil {
					return err
				}
			}
		}
	}
	sources := map[pgident.Table]*Source{}
	for _, t := range b.p.Targets {
		for _, e := range t.Enrichments {
			for _, d := range e.deps {
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

func (b *builder) checkDep(d *Dep, rel *discovery.Relation) bool {
	if b.trusted {
		return true
	}
	e := &d.Enrichment.Enrichment
	var cols []discovery.Column
	for _, c := range d.Columns {
		col, ok := rel.Column(c)
		if !ok {
			b.fail(e, "depends_on %s: column %q does not exist", rel.Name, c)
			return false
		}
		cols = append(cols, col)
	}
	if d.Direct() {
		if len(cols) != len(d.Target.Key) {
			b.fail(e, "depends_on %s lists %d columns but %s has %d key columns (%s); give sql to map them",
				rel.Name, len(cols), d.Target.Table, len(d.Target.Key), keyList(d.Target.Key, ""))
			return false
		}
		for i, c := range cols {
			k := d.Target.Key[i]
			probe := fmt.Sprintf("SELECT NULL::%s::%s", c.Type, k.Type)
			if _, err := b.prepare(probe); err != nil {
				b.fail(e, "depends_on %s: column %q (%s) cannot be a value of key column %q (%s)", rel.Name, c.Name, c.Type, k.Name, k.Type)
				return false
			}
		}
		return true
	}
	sd, err := b.prepare(d.SQL)
	if err != nil {
		b.fail(e, "depends_on %s: sql does not prepare: %s", rel.Name, pgMessage(err))
		return false
	}
	if len(sd.ParamOIDs) != len(cols) {
		b.fail(e, "depends_on %s: sql uses %d parameters; it takes one array per listed column (%d)", rel.Name, len(sd.ParamOIDs), len(cols))
		return false
	}
	if len(sd.Fields) != len(d.Target.Key) {
		b.fail(e, "depends_on %s: sql returns %d columns; it must return the %d key columns of %s (%s)",
			rel.Name, len(sd.Fields), len(d.Target.Key), d.Target.Table, keyList(d.Target.Key, ""))
		return false
	}
	if _, err := b.prepare(InvalidateMappedSQL(d)); err != nil {
		b.fail(e, "depends_on %s: sql output does not match the key of %s: %s", rel.Name, d.Target.Table, pgMessage(err))
		return false
	}
	return true
}

// prepare parses sql without running it, under a savepoint.
func (b *builder) prepare(sql string) (*pgconn.StatementDescription, error) {
	if b.instance {
		if len(b.problems) > 0 {
			return nil, errors.New("skipped after the first problem")
		}
		return b.conn.Conn().PgConn().Prepare(b.ctx, "", sql, nil)
	}
	if _, err := b.conn.Exec(b.ctx, "SAVEPOINT matcol_check"); err != nil {
		return nil, err
	}
	sd, err := b.conn.Conn().PgConn().Prepare(b.ctx, "", sql, nil)
	// Rolled back even on success: that releases the locks preparing took, which would otherwise
	// pile up in the lock table for the rest of the transaction.
	if _, rbErr := b.conn.Exec(b.ctx, "ROLLBACK TO SAVEPOINT matcol_check; RELEASE SAVEPOINT matcol_check"); rbErr != nil {
		return nil, rbErr
	}
	return sd, err
}

// TemplateTable names the template an instance comes from, as written (tenant_*.item); empty
// for other enrichments.
func (e *Enrichment) TemplateTable() string {
	if e.Schema == "" {
		return ""
	}
	return e.Pattern + "." + pgident.Quote(e.Target.Table.Name)
}

// Definitions returns the enrichments with every table name resolved as in the catalog, and the
// templates as registered (not their instances).
func (p *Plan) Definitions() []registry.Enrichment {
	out := slices.Clone(p.Templates)
	for _, t := range p.Targets {
		for _, e := range t.Enrichments {
			if e.Schema == "" {
				out = append(out, e.Enrichment)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (b *builder) arrayOf(oid uint32) (uint32, error) {
	if arr, ok := b.arrays[oid]; ok {
		return arr, nil
	}
	var arr uint32
	defer func() { b.arrays[oid] = arr }()
	if err := b.conn.QueryRow(b.ctx, `SELECT typarray FROM pg_type WHERE oid = $1`, oid).Scan(&arr); err != nil {
		return 0, fmt.Errorf("read array type of %d: %w", oid, err)
	}
	return arr, nil
}

func (b *builder) typeName(oid uint32) string {
	var s string
	if err := b.conn.QueryRow(b.ctx, `SELECT format_type($1, NULL)`, oid).Scan(&s); err != nil {
		return fmt.Sprint(oid)
	}
	return s
}

func pgMessage(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		msg := pe.Message
		if pe.Position > 0 {
			msg += fmt.Sprintf(" (at character %d)", pe.Position)
		}
		if pe.Hint != "" {
			msg += "; hint: " + pe.Hint
		}
		return msg
	}
	return err.Error()
}

func keyList(cols []discovery.Column, prefix string) string {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = prefix + pgx.Identifier{c.Name}.Sanitize()
	}
	return strings.Join(parts, ", ")
}
