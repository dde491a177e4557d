package plan

import (
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/internal/pgident"
)

// checkReads holds the enrichment's reads against its dependencies: every table its SQL or a
// mapping SQL reads, other than its target, must be covered by a depends_on entry, or a change
// there leaves rows stale with nobody the wiser.
func (b *builder) checkReads(e *Enrichment) {
	covered := map[uint32]*Dep{}
	for _, d := range e.deps {
		covered[d.rel.OID] = d
	}
	for _, r := range e.Reads {
		if r.OID == e.Target.OID || covered[r.OID] != nil {
			continue
		}
		b.fail(&e.Enrichment, "its sql reads %s, which no depends_on entry covers, so a change there would leave rows of %s stale; %s",
			describeRead(r), e.Target.Table, b.coverHint(e, r))
	}
	for _, d := range e.deps {
		for _, r := range d.Reads {
			switch {
			case r.OID == e.Target.OID:
			case r.OID == d.rel.OID:
				b.checkReadsOwnSource(d)
			case covered[r.OID] == nil:
				b.fail(&e.Enrichment, "depends_on %s: its sql reads %s, which no depends_on entry covers, so a change there would leave rows of %s stale; %s",
					d.Source, describeRead(r), e.Target.Table, b.coverHint(e, r))
			}
		}
	}
	if e.Schema != "" {
		b.checkTenantCode(e)
	}
	for _, c := range e.Calls {
		b.warn(e, "calls "+c, fmt.Sprintf("its sql calls %s, whose body matcol cannot see: list in depends_on any table it reads", c))
	}
	for _, d := range e.deps {
		for _, c := range d.Calls {
			b.warn(e, "calls "+c, fmt.Sprintf("depends_on %s: its sql calls %s, whose body matcol cannot see: list in depends_on any table it reads", d.Source, c))
		}
	}
}

// checkReadsOwnSource handles mapping SQL that reads its own source table. It runs when the queue
// is drained, after the change: a row that was deleted, or moved to another target row, is found
// as it is now, if at all, so the target row it belonged to is missed.
func (b *builder) checkReadsOwnSource(d *Dep) {
	e := d.Enrichment
	fix := fmt.Sprintf("list the column that holds the key of %s instead, with no sql, so that each change brings its old and new values: %s",
		e.Target.Table, b.depSnippet(d.rel, e.Target))
	byKey := len(d.rel.Key) > 0
	for _, k := range d.rel.Key {
		byKey = byKey && slices.Contains(d.Columns, k.Name)
	}
	if byKey {
		b.fail(&e.Enrichment, "depends_on %s: its sql looks the changed rows of %s up by their key (%s) when the change is processed, after it: a deleted row, or one moved to another row of %s, is no longer found there, and the row it belonged to stays stale; %s",
			d.Source, d.Source, quoteList(columnNames(d.rel.Key)), e.Target.Table, fix)
		return
	}
	b.warn(e, "own source "+d.Source.String(), fmt.Sprintf(
		"depends_on %s: its sql reads %s itself when the change is processed, after it, so it sees deleted or moved rows as they are now; if you can, %s",
		d.Source, d.Source, fix))
}

// coverHint says how to cover table r: the depends_on entry to add.
func (b *builder) coverHint(e *Enrichment, r Read) string {
	static := fmt.Sprintf("{table: %s, static: true}", yamlTable(r.Table))
	if !r.Triggers() {
		return fmt.Sprintf("a %s never fires triggers: add to depends_on %s, and set expires_after if it changes", kindName(r.Kind), static)
	}
	rel, err := b.relation(r.Table)
	if err != nil || rel == nil {
		return "add a depends_on entry for it"
	}
	return fmt.Sprintf("add to depends_on %s, or %s if it never changes", b.depSnippet(rel, e.Target), static)
}

// depSnippet is a depends_on entry on rel for target, in YAML flow style. Its columns are those of
// a foreign key from rel to target's primary key when there is one.
func (b *builder) depSnippet(rel *discovery.Relation, t *Target) string {
	if cols := b.foreignKey(rel, t); cols != nil {
		return fmt.Sprintf("{table: %s, columns: [%s]}", yamlTable(rel.Name), yamlList(cols))
	}
	return fmt.Sprintf("{table: %s, columns: [<its columns that hold %s's key>]} (with sql: to map other columns to keys)",
		yamlTable(rel.Name), t.Table)
}

// foreignKey returns the columns of a foreign key from rel to t's primary key, in key order, or
// nil. Only used to word an error, so a failure is just no suggestion.
func (b *builder) foreignKey(rel *discovery.Relation, t *Target) []string {
	rows, err := b.conn.Query(b.ctx, `
		SELECT (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
		        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum),
		       (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(c.confkey) WITH ORDINALITY k(attnum, ord)
		        JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum)
		FROM pg_constraint c WHERE c.contype = 'f' AND c.conrelid = $1 AND c.confrelid = $2 ORDER BY c.conname`, rel.OID, t.OID)
	if err != nil {
		return nil
	}
	defer rows.Close()
	key := columnNames(t.Key)
	for rows.Next() {
		var from, to []string
		if rows.Scan(&from, &to) != nil {
			return nil
		}
		if slices.Equal(to, key) {
			return from
		}
	}
	return nil
}

// checkChains checks enrichments that read columns other enrichments compute. Reading one of
// another table is supported: matcol's write of that column invalidates the reader. Reading one
// of its own table is not (a table's enrichments are written in one statement, so one never sees
// the other's new value), and neither is a cycle.
func (b *builder) checkChains() {
	owners := map[uint32]map[string]*Enrichment{}
	for _, t := range b.p.Targets {
		owners[t.OID] = map[string]*Enrichment{}
		for _, e := range t.Enrichments {
			for _, c := range e.Columns {
				owners[t.OID][c] = e
			}
		}
	}
	edges := map[*Enrichment][]chain{}
	var order []*Enrichment
	for _, t := range b.p.Targets {
		for _, e := range t.Enrichments {
			order = append(order, e)
			reads := slices.Clone(e.Reads)
			for _, d := range e.deps {
				reads = append(reads, d.Reads...)
			}
			for i, r := range reads {
				own := owners[r.OID]
				for _, c := range r.Columns {
					a := own[c]
					if a == nil {
						continue
					}
					if r.OID != e.Target.OID {
						edges[e] = append(edges[e], chain{to: a, table: r.Table, column: c})
						continue
					}
					if i >= len(e.Reads) {
						continue // mapping SQL on the target: which rows, not what they hold
					}
					what := fmt.Sprintf("column %q of %s, which enrichment %s computes", c, r.Table, a.Name)
					if a == e {
						what = fmt.Sprintf("column %q of %s, its own output", c, r.Table)
					}
					if r.All {
						what += " (a whole-row reference reads every column)"
					}
					b.failFolded(e, "own "+c, fmt.Sprintf("its sql reads %s: a table's enrichments are written in one statement, so it would see the value from before; compute them in one enrichment", what))
				}
			}
		}
	}
	b.checkCycles(order, edges)
}

// chain is an edge of the read graph: an enrichment reads column of table, which to computes.
type chain struct {
	to     *Enrichment
	table  pgident.Table
	column string
}

// checkCycles fails each cycle of enrichments reading each other's output, once.
func (b *builder) checkCycles(order []*Enrichment, edges map[*Enrichment][]chain) {
	const (
		unseen = iota
		onPath
		done
	)
	state := map[*Enrichment]int{}
	var path []*Enrichment
	var via []chain
	seen := map[string]bool{}
	var visit func(e *Enrichment)
	visit = func(e *Enrichment) {
		state[e] = onPath
		path = append(path, e)
		for _, c := range edges[e] {
			switch state[c.to] {
			case unseen:
				via = append(via, c)
				visit(c.to)
				via = via[:len(via)-1]
			case onPath:
				start := slices.Index(path, c.to)
				cycle := append(slices.Clone(path[start:]), c.to)
				steps := append(slices.Clone(via[start:]), c)
				b.failCycle(cycle, steps, seen)
			}
		}
		path = path[:len(path)-1]
		state[e] = done
	}
	for _, e := range order {
		if state[e] == unseen {
			visit(e)
		}
	}
}

func (b *builder) failCycle(cycle []*Enrichment, steps []chain, seen map[string]bool) {
	names := make([]string, len(cycle))
	for i, e := range cycle {
		names[i] = e.Name
	}
	// The same cycle found from another start, or in another tenant, is reported once.
	key := slices.Clone(names[:len(names)-1])
	slices.Sort(key)
	if seen[strings.Join(key, "\x00")] {
		return
	}
	seen[strings.Join(key, "\x00")] = true
	why := make([]string, len(steps))
	for i, s := range steps {
		why[i] = fmt.Sprintf("%s reads %s.%s, which %s computes", cycle[i].Name, s.table, pgident.Quote(s.column), s.to.Name)
	}
	b.problems = append(b.problems, fmt.Sprintf("enrichments read each other's output in a cycle, %s (%s): each write would invalidate the next forever; break the cycle",
		strings.Join(names, " → "), strings.Join(why, "; ")))
}

// folded is one warning or problem of template instances, reported once per template.
type folded struct {
	msg     string
	count   int
	pattern string
	problem bool
}

// warn records a warning about e. A template instance's warning is folded with the same warning
// of the template's other instances: one line, not one per tenant.
func (b *builder) warn(e *Enrichment, kind, msg string) {
	b.fold(e, kind, enrichmentPrefix(e)+msg, false)
}

// failFolded is fail, folded across a template's instances like warn; it fails the plan.
func (b *builder) failFolded(e *Enrichment, kind, msg string) {
	b.fold(e, kind, enrichmentPrefix(e)+msg, true)
}

func enrichmentPrefix(e *Enrichment) string {
	if e.Schema != "" {
		return fmt.Sprintf("enrichment %s on %s: ", e.Name, e.Target.Table)
	}
	return fmt.Sprintf("enrichment %s: ", e.Name)
}

// fold records msg, a warning or a problem about e; kind tells the same message of another
// instance of e's template, with the instance's schema left out.
func (b *builder) fold(e *Enrichment, kind, msg string, problem bool) {
	if e.Schema == "" {
		if problem {
			b.problems = append(b.problems, msg)
		} else {
			b.p.Warnings = append(b.p.Warnings, msg)
		}
		return
	}
	key := e.Name + "\x00" + strings.ReplaceAll(kind, pgident.Quote(e.Schema)+".", "")
	if f := b.folded[key]; f != nil {
		f.count++
		return
	}
	b.folded[key] = &folded{msg: msg, count: 1, pattern: e.Pattern, problem: problem}
	b.foldOrder = append(b.foldOrder, key)
}

// unfold adds the folded lines to the plan.
func (b *builder) unfold() {
	for _, key := range b.foldOrder {
		f := b.folded[key]
		msg := f.msg
		if f.count > 1 {
			msg += fmt.Sprintf(" (and the same in %d more schemas matching %s)", f.count-1, f.pattern)
		}
		if f.problem {
			b.problems = append(b.problems, msg)
		} else {
			b.p.Warnings = append(b.p.Warnings, msg)
		}
	}
	clear(b.folded)
	b.foldOrder = nil
}

func describeRead(r Read) string {
	switch {
	case r.All:
		return fmt.Sprintf("%s (the whole row)", r.Table)
	case len(r.Columns) == 0:
		return fmt.Sprintf("%s (which rows exist)", r.Table)
	}
	return fmt.Sprintf("%s (%s)", r.Table, quoteList(r.Columns))
}

func columnNames(cols []discovery.Column) []string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = c.Name
	}
	return out
}

func kindName(kind byte) string {
	switch kind {
	case 'r', 'p':
		return "table"
	case 'm':
		return "materialized view"
	case 'f':
		return "foreign table"
	case 'v':
		return "view"
	}
	return "relation of kind " + string(kind)
}

// yamlTable writes a table name as the config takes it: quoted when it needs quotes.
func yamlTable(t pgident.Table) string {
	s := t.String()
	if strings.ContainsAny(s, `"':#{}[],&*!|>%@`+"`") {
		return "'" + strings.ReplaceAll(s, "'", "''") + "'"
	}
	return s
}

func yamlList(cols []string) string {
	out := make([]string, len(cols))
	for i, c := range cols {
		if c == strings.ToLower(c) && !strings.ContainsAny(c, ` "':#{}[],&*!|>%@`+"`") && c != "" {
			out[i] = c
		} else {
			out[i] = `"` + strings.ReplaceAll(c, `"`, `\"`) + `"`
		}
	}
	return strings.Join(out, ", ")
}

func quoteList(cols []string) string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = pgident.Quote(c)
	}
	return strings.Join(out, ", ")
}

// checkTenantCode refuses a template instance whose SQL, resolved with search_path set to the
// tenant's schema, calls a function or operator of that schema named like a built-in: a tenant
// could define one that matches better than the built-in (an = on varchar, a lower(varchar)) and
// so run code of its choosing with matcol's rights. A tenant function the template names on
// purpose (no built-in has its name) is the template author's choice, and only warned about.
func (b *builder) checkTenantCode(e *Enrichment) {
	calls := slices.Clone(e.Calls)
	for _, d := range e.deps {
		calls = append(calls, d.Calls...)
	}
	for _, c := range calls {
		name, operator, ok := tenantCall(c, e.Schema)
		if !ok {
			continue
		}
		sql := `SELECT EXISTS (SELECT FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace AND proname = $1)`
		if operator {
			sql = `SELECT EXISTS (SELECT FROM pg_operator WHERE oprnamespace = 'pg_catalog'::regnamespace AND oprname = $1)`
		}
		var builtin bool
		if err := b.conn.QueryRow(b.ctx, sql, name).Scan(&builtin); err != nil {
			b.problems = append(b.problems, fmt.Sprintf("enrichment %s on %s: look up %s: %v", e.Name, e.Target.Table, c, err))
			return
		}
		if builtin {
			b.fail(&e.Enrichment, "its sql resolves to %s, which schema %s itself defines in place of the built-in %s, and which would run with matcol's rights; "+
				"matcol skips this schema: drop or rename that function, or write the built-in with its schema (pg_catalog.%s)",
				c, pgident.Quote(e.Schema), name, name)
			return
		}
	}
}

// tenantCall returns the name of a call as the analysis lists it ("s.f(args)" or "operator
// s.op(l, r)") when it lives in schema, and whether it is an operator.
func tenantCall(c, schema string) (name string, operator, ok bool) {
	rest, operator := strings.CutPrefix(c, "operator ")
	for _, q := range []string{pgident.Quote(schema), pgx.Identifier{schema}.Sanitize()} {
		if after, found := strings.CutPrefix(rest, q+"."); found {
			name, _, _ = strings.Cut(after, "(")
			if len(name) > 1 && name[0] == '"' {
				name = strings.ReplaceAll(name[1:len(name)-1], `""`, `"`)
			}
			return name, operator, true
		}
	}
	return "", false, false
}
