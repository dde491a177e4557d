// Package discovery reads the catalog: the tables that carry materialized_at, their keys and
// columns, and the indexes that make stale rows cheap to find. Every rescan is one query, however
// many schemas the database has.
package discovery

import (
	"context"
	_ "embed"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/internal/pgident"
)

// Querier is the narrow database interface discovery needs.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Column is one table column.
type Column struct {
	Name    string
	Type    string // format_type output, safe to splice into SQL
	TypeOID uint32
	NotNull bool
}

// Table is a table that carries materialized_at.
type Table struct {
	OID  uint32
	Name pgident.Table
	// StampOK is true when materialized_at is a nullable timestamptz.
	StampOK   bool
	StampType string
	Key       []Column // primary key columns in key order; empty when there is none
	// StaleIndex is true when a partial index WHERE materialized_at IS NULL exists.
	StaleIndex      bool
	ReplicaIdentity byte // d, n, f or i
	Partitioned     bool
}

//go:embed scan.sql
var scanSQL string

// Scan returns every table with a materialized_at column, in one catalog query.
func Scan(ctx context.Context, q Querier) ([]Table, error) {
	rows, err := q.Query(ctx, scanSQL)
	if err != nil {
		return nil, fmt.Errorf("scan catalog: %w", err)
	}
	defer rows.Close()
	var out []Table
	for rows.Next() {
		var t Table
		var keyNames, keyTypes []string
		var keyOIDs []uint32
		var relkind, ident string
		if err := rows.Scan(&t.OID, &t.Name.Schema, &t.Name.Name, &relkind, &t.StampType, &t.StampOK,
			&keyNames, &keyTypes, &keyOIDs, &t.StaleIndex, &ident); err != nil {
			return nil, fmt.Errorf("scan catalog: %w", err)
		}
		t.Partitioned = relkind == "p"
		if ident != "" {
			t.ReplicaIdentity = ident[0]
		}
		for i := range keyNames {
			t.Key = append(t.Key, Column{Name: keyNames[i], Type: keyTypes[i], TypeOID: keyOIDs[i], NotNull: true})
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("scan catalog: %w", err)
	}
	return out, nil
}

// Relation describes any table, for validating enrichments and dependencies.
type Relation struct {
	OID  uint32
	Name pgident.Table
	// Kind is pg_class.relkind: 'r' or 'p' for tables; 'm' (materialized view) and 'f' (foreign
	// table) never fire triggers; 'v' is a view.
	Kind            byte
	Columns         []Column
	Key             []Column
	ReplicaIdentity byte
	// IdentityColumns are the columns a logged old row carries (the key or replica-identity index).
	IdentityColumns []string
}

// Column returns the named column, or false.
func (r *Relation) Column(name string) (Column, bool) {
	for _, c := range r.Columns {
		if c.Name == name {
			return c, true
		}
	}
	return Column{}, false
}

//go:embed relation.sql
var relationSQL string

// LookupRelation finds a table, materialized view, foreign table or view by name (Kind tells
// which). An empty schema resolves through search_path. It returns nil, nil when there is none.
func LookupRelation(ctx context.Context, q Querier, name pgident.Table) (*Relation, error) {
	var oid uint32
	var err error
	if name.Schema == "" {
		err = q.QueryRow(ctx, `SELECT coalesce(to_regclass($1)::oid, 0)`, pgx.Identifier{name.Name}.Sanitize()).Scan(&oid)
	} else {
		err = q.QueryRow(ctx, `SELECT coalesce((SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r','p','m','f','v')), 0)`, name.Schema, name.Name).Scan(&oid)
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	if oid == 0 {
		return nil, nil
	}
	r := &Relation{OID: oid}
	var kind, ident string
	rows, err := q.Query(ctx, relationSQL, oid)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", name, err)
	}
	defer rows.Close()
	for rows.Next() {
		var c Column
		var keyPos, identPos int
		if err := rows.Scan(&r.Name.Schema, &r.Name.Name, &kind, &ident, &c.Name, &c.Type, &c.TypeOID, &c.NotNull, &keyPos, &identPos); err != nil {
			return nil, fmt.Errorf("read columns of %s: %w", name, err)
		}
		r.addColumn(c, keyPos, identPos)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", name, err)
	}
	if ident != "" {
		r.ReplicaIdentity = ident[0]
	}
	if kind != "" {
		r.Kind = kind[0]
	}
	return r, nil
}

// addColumn appends a column read from relation.sql; keyPos and identPos are its 1-based
// positions in the primary key and the replica identity, 0 when not in them.
func (r *Relation) addColumn(c Column, keyPos, identPos int) {
	r.Columns = append(r.Columns, c)
	if keyPos > 0 {
		for len(r.Key) < keyPos {
			r.Key = append(r.Key, Column{})
		}
		r.Key[keyPos-1] = c
	}
	if identPos > 0 {
		r.IdentityColumns = append(r.IdentityColumns, c.Name)
	}
}

// LookupRelations finds many schema-qualified tables in one catalog query. Tables that do not
// exist are missing from the result.
func LookupRelations(ctx context.Context, q Querier, names []pgident.Table) (map[pgident.Table]*Relation, error) {
	out := make(map[pgident.Table]*Relation, len(names))
	if len(names) == 0 {
		return out, nil
	}
	schemas := make([]string, len(names))
	tables := make([]string, len(names))
	for i, n := range names {
		schemas[i], tables[i] = n.Schema, n.Name
	}
	rows, err := q.Query(ctx, `WITH want AS (SELECT DISTINCT c.oid FROM unnest($1::text[], $2::text[]) AS w(s, n)
			JOIN pg_namespace ns ON ns.nspname = w.s JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = w.n
			WHERE c.relkind IN ('r', 'p', 'm', 'f', 'v'))
		SELECT "matcol want".oid, q.* FROM want AS "matcol want" CROSS JOIN LATERAL (`+
		strings.Replace(strings.TrimSpace(relationSQLBody()), "$1", `"matcol want".oid`, 1)+`) q`,
		schemas, tables)
	if err != nil {
		return nil, fmt.Errorf("read tables: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var oid uint32
		var name pgident.Table
		var kind, ident string
		var c Column
		var keyPos, identPos int
		if err := rows.Scan(&oid, &name.Schema, &name.Name, &kind, &ident, &c.Name, &c.Type, &c.TypeOID, &c.NotNull, &keyPos, &identPos); err != nil {
			return nil, fmt.Errorf("read tables: %w", err)
		}
		r := out[name]
		if r == nil {
			r = &Relation{OID: oid, Name: name, Kind: kind[0]}
			if ident != "" {
				r.ReplicaIdentity = ident[0]
			}
			out[name] = r
		}
		r.addColumn(c, keyPos, identPos)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read tables: %w", err)
	}
	return out, nil
}

// relationSQLBody is relation.sql without its comment lines.
func relationSQLBody() string {
	var b strings.Builder
	for _, line := range strings.Split(relationSQL, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// Partitions returns every partition under a partitioned table, at any depth, with whether it
// is a leaf (it holds rows, and its own replica identity decides what its WAL carries). It is
// empty for other tables.
func Partitions(ctx context.Context, q Querier, oid uint32) ([]Partition, error) {
	rows, err := q.Query(ctx, `SELECT n.nspname, c.relname, t.isleaf
		FROM pg_partition_tree($1::oid::regclass) t JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE t.level > 0 ORDER BY t.level, n.nspname, c.relname`, oid)
	if err != nil {
		return nil, fmt.Errorf("read partitions: %w", err)
	}
	defer rows.Close()
	var out []Partition
	for rows.Next() {
		var p Partition
		if err := rows.Scan(&p.Name.Schema, &p.Name.Name, &p.Leaf); err != nil {
			return nil, fmt.Errorf("read partitions: %w", err)
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// Partition is one partition of a partitioned table.
type Partition struct {
	Name pgident.Table
	Leaf bool
}

// Attached identifies a partition as attached now: its OID, and the xmin of the pg_inherits rows
// that attach it and its ancestors under the root. ATTACH writes that row anew, so a partition
// detached and attached again reads as another, while ALTER TABLE of the parent, which rewrites
// every partition's pg_class row, changes nothing here.
type Attached struct {
	OID uint32 `json:"oid"`
	By  string `json:"by"`
}

// AttachedTrees returns, for each partitioned table in roots, its partitions at every level in
// OID order, in one query however many roots there are. A root without partitions maps to an
// empty list.
func AttachedTrees(ctx context.Context, q Querier, roots []uint32) (map[uint32][]Attached, error) {
	out := make(map[uint32][]Attached, len(roots))
	for _, r := range roots {
		out[r] = []Attached{}
	}
	if len(roots) == 0 {
		return out, nil
	}
	rows, err := q.Query(ctx, `WITH RECURSIVE tree AS (
		SELECT r.root, i.inhrelid AS part, i.xmin::text AS path
		FROM unnest($1::oid[]) AS r(root) JOIN pg_catalog.pg_inherits i ON i.inhparent = r.root
		UNION ALL
		SELECT t.root, i.inhrelid, t.path || '.' || i.xmin::text
		FROM tree t JOIN pg_catalog.pg_inherits i ON i.inhparent = t.part)
	SELECT root, part, path FROM tree ORDER BY 1, 2`, roots)
	if err != nil {
		return nil, fmt.Errorf("read partitions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var root uint32
		var a Attached
		if err := rows.Scan(&root, &a.OID, &a.By); err != nil {
			return nil, fmt.Errorf("read partitions: %w", err)
		}
		out[root] = append(out[root], a)
	}
	return out, rows.Err()
}

// FilledPartition is a table partition that holds pages, with the condition its bounds imply
// (ancestors' included) as PostgreSQL renders it, over columns every partition shares with the
// root.
type FilledPartition struct {
	Name, Cond string
}

// FilledPartitions returns those of oids that are plain tables with pages: partitions that may
// hold rows. A foreign table's contents are not known and it is left out.
//
// Reading a partition's size and bounds locks the partition, then its parent. DETACH PARTITION
// locks them the other way round, so the partitions' ancestors are locked first, root down, in
// the same transaction: a DETACH that comes between then waits or is waited for, and neither it
// nor this read dies in a deadlock.
func FilledPartitions(ctx context.Context, db interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, oids []uint32) ([]FilledPartition, error) {
	var out []FilledPartition
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		// pg_relation_size locks a relation for the transaction and needs no privilege on it.
		if _, err := tx.Exec(ctx, `WITH anc AS (
				SELECT DISTINCT a.relid FROM unnest($1::oid[]) AS p(oid), pg_catalog.pg_partition_ancestors(p.oid) AS a
				WHERE a.relid <> p.oid)
			SELECT count(pg_catalog.pg_relation_size(l.relid)) FROM (
				SELECT relid FROM anc ORDER BY (SELECT count(*) FROM pg_catalog.pg_partition_ancestors(anc.relid)), relid) AS l`, oids); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT c.oid::pg_catalog.regclass::pg_catalog.text, pg_catalog.pg_get_partition_constraintdef(c.oid)
		FROM pg_catalog.pg_class c WHERE c.oid = ANY ($1::oid[]) AND c.relkind = 'r'
		  AND pg_catalog.pg_relation_size(c.oid) > 0
		  AND pg_catalog.pg_get_partition_constraintdef(c.oid) IS NOT NULL
		ORDER BY c.oid`, oids)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (FilledPartition, error) {
			var p FilledPartition
			return p, r.Scan(&p.Name, &p.Cond)
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read partitions: %w", err)
	}
	return out, nil
}
