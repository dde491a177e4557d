package plan

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/matcol/matcol/discovery"
)

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
				b.fatal(err)
				return false
			}
			if sd.ParamOIDs[i] != want {
				got, err := b.typeName(sd.ParamOIDs[i])
				if err != nil {
					got = fmt.Sprint(sd.ParamOIDs[i])
				}
				b.fail(&e.Enrichment, "$%d is used as %s; it must be %s[] (the type of key column %q), for example = ANY($%d)",
					i+1, got, k.Type, k.Name, i+1)
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
	if !ok {
		return false
	}
	a, err := b.reads(sd, e.SQL)
	if err != nil {
		b.fail(&e.Enrichment, "cannot tell what its sql reads: %s", err)
		return false
	}
	if a != nil {
		e.Reads, e.Calls, e.viaViews = a.reads, a.calls, len(a.views) > 0
	}
	return true
}

// reads analyzes a statement that prepared as sd. A problem with the statement comes back as
// an error that reads as a message; a failure of the connection is recorded with fatal.
func (b *builder) reads(sd *pgconn.StatementDescription, sql string) (*analysis, error) {
	if b.instance && len(b.problems) > 0 {
		return nil, nil // the transaction is aborted; the instance is skipped anyway
	}
	if b.sameReads {
		return nil, nil // taken from an instance of the same shape (see shapeReads)
	}
	a, problem, err := b.analyze(sql, sd.ParamOIDs, len(sd.Fields))
	if err != nil {
		b.fatal(err)
		return nil, nil
	}
	if problem != "" {
		return nil, errors.New(problem)
	}
	return a, nil
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

func (b *builder) checkDep(d *Dep, rel *discovery.Relation) bool {
	e := &d.Enrichment.Enrichment
	if d.Static {
		if len(d.Columns) > 0 || !d.Direct() {
			b.fail(e, "depends_on %s: a static table takes no columns and no sql; drop them, or drop static", rel.Name)
			return false
		}
		return true
	}
	if b.trusted {
		return true
	}
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
	a, err := b.reads(sd, d.SQL)
	if err != nil {
		b.fail(e, "depends_on %s: cannot tell what its sql reads: %s", rel.Name, err)
		return false
	}
	if a != nil {
		d.Reads, d.Calls, d.viaViews = a.reads, a.calls, len(a.views) > 0
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

// typeName returns the name of type oid, qualified where search_path would not find it.
func (b *builder) typeName(oid uint32) (string, error) {
	if s, ok := b.types[oid]; ok {
		return s, nil
	}
	var s string
	if err := b.conn.QueryRow(b.ctx, `SELECT format_type($1, NULL)`, oid).Scan(&s); err != nil {
		return "", fmt.Errorf("read the name of type %d: %w", oid, err)
	}
	b.types[oid] = s
	return s, nil
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
