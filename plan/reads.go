package plan

import (
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/matcol/matcol/internal/pgident"
)

// Read is a table that a statement reads, as PostgreSQL resolved it: views are followed to the
// tables they read, and are not listed themselves.
type Read struct {
	Table pgident.Table
	OID   uint32
	// Kind is pg_class.relkind: 'r' or 'p' for a table; 'm' (materialized view) and 'f'
	// (foreign table) never fire triggers.
	Kind byte
	// Columns are the columns read, catalog names, sorted; every column when All. Empty when the
	// statement reads only which rows exist (count(*)).
	Columns []string
	// All is true for a whole-row reference (to_jsonb(t), count(t), a view that does one): every
	// column counts, including columns added later.
	All bool
}

// Triggers reports whether the table fires triggers, so that changes to it can be heard.
func (r Read) Triggers() bool { return r.Kind == 'r' || r.Kind == 'p' }

// Reads reports whether the read includes column c.
func (r Read) Reads(c string) bool { return r.All || slices.Contains(r.Columns, c) }

// readOf returns the read of table oid in reads, or nil.
func readOf(reads []Read, oid uint32) *Read {
	for i := range reads {
		if reads[i].OID == oid {
			return &reads[i]
		}
	}
	return nil
}

// tempSchema makes the backend set up its temporary schema in the transaction itself rather
// than under a savepoint: set up and rolled back each time, it would be created again for every
// analysis, and creating a schema makes PostgreSQL plan every cached statement again, readsSQL
// included. What remains is what any use of a temporary table leaves: the pg_temp_N schema that
// the backends of this slot share.
func (b *builder) tempSchema() error {
	if b.temp[b.conn] {
		return nil
	}
	if _, err := b.conn.Exec(b.ctx, "CREATE TEMPORARY VIEW matcol_reads AS SELECT 1 AS x; DROP VIEW matcol_reads"); err != nil {
		return fmt.Errorf("set up the temporary schema: %w", err)
	}
	if b.temp == nil {
		b.temp = map[pgx.Tx]bool{}
	}
	b.temp[b.conn] = true
	return nil
}

// analysis is what one statement reads.
type analysis struct {
	reads []Read
	// calls are functions and operators outside pg_catalog, not written in C: their bodies can
	// read tables that reads cannot show.
	calls []string
	// views are the views followed to the tables in reads.
	views []pgident.Table
}

//go:embed reads.sql
var readsSQL string

// analyze asks PostgreSQL what sql reads. It creates a temporary view over the statement, with
// each parameter replaced by a NULL of its type, reads the view's dependencies from the catalog,
// and rolls the view back: nothing is left behind. problem is set when the statement cannot be
// made a view; err only for failures of the connection.
//
// EXPLAIN (VERBOSE) costs about as much, but it shows a plan, not the query: it needs concrete
// parameters (a generic plan only from PostgreSQL 16), the planner leaves out what it proves
// irrelevant for those values, and what it prints are expressions that would have to be parsed.
// A view's dependencies are the query's own, on every version from 13.
func (b *builder) analyze(sql string, params []uint32, width int) (a *analysis, problem string, err error) {
	nulls := make([]string, len(params))
	for i, oid := range params {
		name, err := b.typeName(oid)
		if err != nil {
			return nil, "", err
		}
		nulls[i] = "NULL::" + name
	}
	body, err := ReplaceParams(sql, nulls)
	if err != nil {
		return nil, err.Error(), nil
	}
	// Columns named by position: a mapping statement may return two columns of one name.
	cols := make([]string, width)
	for i := range cols {
		cols[i] = fmt.Sprintf("c%d", i+1)
	}
	if err := b.tempSchema(); err != nil {
		return nil, "", err
	}
	defer func() {
		// Also when the view failed: the savepoint was made first, in the same round trip. If
		// it was not, this fails too, and the failure is the connection's, not the statement's.
		if _, rbErr := b.conn.Exec(b.ctx, "ROLLBACK TO SAVEPOINT matcol_reads; RELEASE SAVEPOINT matcol_reads"); rbErr != nil {
			a, problem, err = nil, "", rbErr
		}
	}()
	// Simple protocol (no arguments): the statement is not worth a prepared-statement slot. The
	// search_path set after it, reverted with the savepoint, lets every analysis reuse one plan
	// of readsSQL: PostgreSQL plans a cached statement again when search_path differs, as it does
	// from one template instance to the next.
	if _, err := b.conn.Exec(b.ctx, "SAVEPOINT matcol_reads; CREATE TEMPORARY VIEW matcol_reads ("+strings.Join(cols, ", ")+") AS "+
		body+"\n;\nSET LOCAL search_path TO pg_catalog, pg_temp"); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return nil, pgMessage(err), nil
		}
		return nil, "", err
	}
	rows, err := b.conn.Query(b.ctx, readsSQL)
	if err != nil {
		return nil, "", fmt.Errorf("read what a statement reads: %w", err)
	}
	a = &analysis{}
	var (
		oid                uint32
		schema, name, kind string
		whole              bool
		columns            []string
	)
	_, err = pgx.ForEachRow(rows, []any{&oid, &schema, &name, &kind, &whole, &columns}, func() error {
		switch {
		case oid == 0:
			a.calls = append(a.calls, name)
			return nil
		case kind == "v":
			a.views = append(a.views, pgident.Table{Schema: schema, Name: name})
			return nil
		}
		a.reads = append(a.reads, Read{Table: pgident.Table{Schema: schema, Name: name}, OID: oid, Kind: kind[0],
			Columns: slices.Clone(columns), All: whole})
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("read what a statement reads: %w", err)
	}
	slices.SortFunc(a.reads, func(x, y Read) int { return strings.Compare(x.Table.String(), y.Table.String()) })
	slices.Sort(a.calls)
	return a, "", nil
}
