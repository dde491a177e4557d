package logical

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/plan"
)

// IdentityError lists the ALTER TABLE statements logical mode needs before it can know the old
// values of every dependency column.
type IdentityError struct{ Statements []string }

func (e *IdentityError) Error() string {
	return "logical mode cannot see the old values of some dependency columns; run (or set invalidation.fix_replica_identity: true):\n  " +
		strings.Join(e.Statements, "\n  ")
}

// pubTable is one table of the publication and the columns it publishes (nil: all); leaves are
// the leaf partitions of a partitioned table.
type pubTable struct {
	rel     *discovery.Relation
	columns []string
	leaves  []*discovery.Relation
}

// SyncPublication makes publication name cover exactly p's sources and targets, inside tx, after
// checking each table's REPLICA IDENTITY (fixing it when fix is set). It returns what it changed.
//
// Old values: an UPDATE or DELETE must invalidate through the old dependency values, so those
// columns must be in the replica identity; a source that is also a target needs FULL, because
// telling matcol's own writes from the application's takes the whole old row (see mapper.go).
// Column lists (PostgreSQL 15+) carry only the identity, dependency and materialized_at columns;
// a FULL identity publishes every column, as PostgreSQL requires.
func SyncPublication(ctx context.Context, tx pgx.Tx, p *plan.Plan, name string, fix bool) ([]string, error) {
	if !nameRe.MatchString(name) {
		return nil, fmt.Errorf("invalidation.publication %q must be 1-63 characters of a-z, 0-9 and _", name)
	}
	tables, err := wantedTables(ctx, tx, p)
	if err != nil {
		return nil, err
	}
	var changes, fixes []string
	for _, t := range tables {
		src, isTarget := roles(t.rel.Name, p)
		// A partitioned table's WAL comes from its leaves: their replica identity is what counts.
		rels := []*discovery.Relation{t.rel}
		if len(t.leaves) > 0 {
			rels = t.leaves
		}
		for _, rel := range rels {
			if stmt := identityFix(rel, src, isTarget); stmt != "" {
				fixes = append(fixes, stmt)
			}
		}
	}
	if len(fixes) > 0 {
		if !fix {
			return nil, &IdentityError{Statements: fixes}
		}
		for _, stmt := range fixes {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return nil, fmt.Errorf("fix replica identity: %w", err)
			}
			changes = append(changes, "ran "+stmt)
		}
		if tables, err = wantedTables(ctx, tx, p); err != nil {
			return nil, err
		}
	}
	var version int
	if err := tx.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return nil, fmt.Errorf("read server version: %w", err)
	}
	lists := version >= 150000
	for _, t := range tables {
		if lists && t.rel.ReplicaIdentity != 'f' && !slices.ContainsFunc(t.leaves, func(r *discovery.Relation) bool { return r.ReplicaIdentity == 'f' }) {
			t.columns = publishedColumns(t.rel, p)
		}
	}

	pub := pgx.Identifier{name}.Sanitize()
	var all *bool
	err = tx.QueryRow(ctx, `SELECT puballtables FROM pg_publication WHERE pubname = $1`, name).Scan(&all)
	if err != nil && err != pgx.ErrNoRows {
		return nil, fmt.Errorf("read publication %s: %w", name, err)
	}
	// Changes to a partition are published as changes to its partitioned table, the name the
	// plan knows (publish_via_partition_root, PostgreSQL 13+).
	if all == nil {
		if _, err := tx.Exec(ctx, "CREATE PUBLICATION "+pub+" WITH (publish_via_partition_root = true)"); err != nil {
			return nil, fmt.Errorf("create publication %s: %w", name, err)
		}
		changes = append(changes, "created publication "+name)
	} else if *all {
		return nil, fmt.Errorf("publication %s is FOR ALL TABLES; matcol needs its own publication (invalidation.publication)", name)
	} else {
		var viaRoot bool
		if err := tx.QueryRow(ctx, `SELECT pubviaroot FROM pg_publication WHERE pubname = $1`, name).Scan(&viaRoot); err != nil {
			return nil, fmt.Errorf("read publication %s: %w", name, err)
		}
		if !viaRoot {
			if _, err := tx.Exec(ctx, "ALTER PUBLICATION "+pub+" SET (publish_via_partition_root = true)"); err != nil {
				return nil, fmt.Errorf("update publication %s: %w", name, err)
			}
			changes = append(changes, "set publish_via_partition_root on publication "+name)
		}
	}

	have, err := publishedNow(ctx, tx, name, lists)
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	var items []string
	for _, t := range tables {
		cols := t.columns
		if cols == nil && lists {
			cols = allColumns(t.rel)
		}
		want[describe(t.rel.Name, cols)] = true
		item := t.rel.Name.Sanitize()
		if t.columns != nil {
			quoted := make([]string, len(t.columns))
			for i, c := range t.columns {
				quoted[i] = pgx.Identifier{c}.Sanitize()
			}
			item += " (" + strings.Join(quoted, ", ") + ")"
		}
		items = append(items, item)
	}
	if equalSets(want, have) {
		return changes, nil
	}
	if len(items) == 0 {
		for desc := range have {
			tbl := strings.SplitN(desc, "|", 2)[0]
			if _, err := tx.Exec(ctx, "ALTER PUBLICATION "+pub+" DROP TABLE "+tbl); err != nil {
				return nil, fmt.Errorf("update publication %s: %w", name, err)
			}
		}
	} else if _, err := tx.Exec(ctx, "ALTER PUBLICATION "+pub+" SET TABLE "+strings.Join(items, ", ")); err != nil {
		return nil, fmt.Errorf("update publication %s: %w", name, err)
	}
	return append(changes, fmt.Sprintf("set publication %s to %d tables", name, len(items))), nil
}

func wantedTables(ctx context.Context, tx pgx.Tx, p *plan.Plan) ([]*pubTable, error) {
	seen := map[pgident.Table]*pubTable{}
	var out []*pubTable
	add := func(name pgident.Table) error {
		if seen[name] != nil {
			return nil
		}
		rel, err := discovery.LookupRelation(ctx, tx, name)
		if err != nil {
			return fmt.Errorf("read table %s: %w", name, err)
		}
		if rel == nil {
			return fmt.Errorf("table %s does not exist", name)
		}
		t := &pubTable{rel: rel}
		parts, err := discovery.Partitions(ctx, tx, rel.OID)
		if err != nil {
			return err
		}
		for _, part := range parts {
			if !part.Leaf {
				continue
			}
			leaf, err := discovery.LookupRelation(ctx, tx, part.Name)
			if err != nil {
				return fmt.Errorf("read partition %s: %w", part.Name, err)
			}
			if leaf != nil {
				t.leaves = append(t.leaves, leaf)
			}
		}
		seen[name] = t
		out = append(out, t)
		return nil
	}
	for _, s := range p.Sources {
		if err := add(s.Table); err != nil {
			return nil, err
		}
	}
	for _, t := range p.Targets {
		if err := add(t.Table); err != nil {
			return nil, err
		}
	}
	// The registry's version row tells the stream where the registry changed.
	if err := add(versionTable); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rel.Name.String() < out[j].rel.Name.String() })
	return out, nil
}

// roles returns the plan's source of that name, if any, and whether it is a target.
func roles(name pgident.Table, p *plan.Plan) (*plan.Source, bool) {
	var src *plan.Source
	for _, s := range p.Sources {
		if s.Table == name {
			src = s
		}
	}
	return src, slices.ContainsFunc(p.Targets, func(t *plan.Target) bool { return t.Table == name })
}

// identityFix returns the ALTER TABLE a table (or a leaf partition of one) needs, or "".
func identityFix(rel *discovery.Relation, src *plan.Source, isTarget bool) string {
	full := "ALTER TABLE " + rel.Name.Sanitize() + " REPLICA IDENTITY FULL;"
	if src == nil {
		// A target alone needs an identity only so that its UPDATEs stay allowed once published.
		if rel.ReplicaIdentity == 'n' || len(rel.IdentityColumns) == 0 {
			return "ALTER TABLE " + rel.Name.Sanitize() + " REPLICA IDENTITY DEFAULT;"
		}
		return ""
	}
	if rel.ReplicaIdentity == 'f' {
		return ""
	}
	if isTarget {
		return full
	}
	for _, d := range src.Deps {
		for _, c := range d.Columns {
			if !slices.Contains(rel.IdentityColumns, c) {
				return full
			}
		}
	}
	return ""
}

func publishedColumns(rel *discovery.Relation, p *plan.Plan) []string {
	if rel.Name == versionTable {
		return allColumns(rel)
	}
	want := map[string]bool{}
	for _, c := range rel.IdentityColumns {
		want[c] = true
	}
	for _, s := range p.Sources {
		if s.Table == rel.Name {
			for _, d := range s.Deps {
				for _, c := range d.Columns {
					want[c] = true
				}
			}
		}
	}
	for _, t := range p.Targets {
		if t.Table == rel.Name {
			want["materialized_at"] = true
		}
	}
	var out []string
	for _, c := range rel.Columns { // in column order
		if want[c.Name] {
			out = append(out, c.Name)
		}
	}
	return out
}

func allColumns(rel *discovery.Relation) []string {
	out := make([]string, len(rel.Columns))
	for i, c := range rel.Columns {
		out[i] = c.Name
	}
	return out
}

func describe(t pgident.Table, cols []string) string {
	c := slices.Clone(cols)
	sort.Strings(c)
	return t.Sanitize() + "|" + strings.Join(c, ",")
}

func publishedNow(ctx context.Context, tx pgx.Tx, name string, lists bool) (map[string]bool, error) {
	sql := `SELECT schemaname::text, tablename::text, NULL::text[] FROM pg_publication_tables WHERE pubname = $1`
	if lists {
		sql = `SELECT schemaname::text, tablename::text, attnames::text[] FROM pg_publication_tables WHERE pubname = $1`
	}
	rows, err := tx.Query(ctx, sql, name)
	if err != nil {
		return nil, fmt.Errorf("read publication %s: %w", name, err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var t pgident.Table
		var cols []string
		if err := rows.Scan(&t.Schema, &t.Name, &cols); err != nil {
			return nil, fmt.Errorf("read publication %s: %w", name, err)
		}
		out[describe(t, cols)] = true
	}
	return out, rows.Err()
}

func equalSets(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// Retire undoes logical mode when apply runs in trigger mode, inside tx: a forgotten slot would
// hold WAL back until the disk fills. An inactive pgoutput slot of this database named slot is
// dropped, with a resync of every target queued in the same transaction (the changes it still
// held are not lost), and the publication is dropped. An active slot is left alone: a logical-mode
// daemon still runs.
func Retire(ctx context.Context, tx pgx.Tx, p *plan.Plan, slot, publication string) ([]string, error) {
	var changes []string
	var active, dropped bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active)`, slot).Scan(&active); err != nil {
		return nil, fmt.Errorf("read replication slot %s: %w", slot, err)
	}
	if active {
		return nil, nil
	}
	// Only a slot matcol created: a user's own slot of the same name is none of its business.
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots
		WHERE slot_name = $1 AND plugin = 'pgoutput' AND database = current_database())
		AND EXISTS (SELECT 1 FROM matcol.setting WHERE name = $2)`, slot, SlotKey(slot)).Scan(&dropped)
	if err != nil {
		return nil, fmt.Errorf("read replication slot %s: %w", slot, err)
	}
	if dropped {
		if _, err := tx.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
			return nil, fmt.Errorf("drop replication slot %s: %w", slot, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM matcol.setting WHERE name = $1`, SlotKey(slot)); err != nil {
			return nil, fmt.Errorf("drop replication slot %s: %w", slot, err)
		}
	}
	if dropped {
		ids := make([]int32, len(p.Targets))
		for i, t := range p.Targets {
			ids[i] = int32(t.ID)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO matcol.pending (target_id, vals) SELECT unnest($1::int[]), NULL`, ids); err != nil {
			return nil, fmt.Errorf("queue resync: %w", err)
		}
		changes = append(changes, "dropped replication slot "+slot+" and queued a resync of every target")
	}
	if nameRe.MatchString(publication) {
		tag, err := tx.Exec(ctx, `SELECT 1 FROM pg_publication WHERE pubname = $1`, publication)
		if err != nil {
			return nil, fmt.Errorf("read publication %s: %w", publication, err)
		}
		if tag.RowsAffected() > 0 {
			if _, err := tx.Exec(ctx, "DROP PUBLICATION "+pgx.Identifier{publication}.Sanitize()); err != nil {
				return nil, fmt.Errorf("drop publication %s: %w", publication, err)
			}
			changes = append(changes, "dropped publication "+publication)
		}
	}
	return changes, nil
}
