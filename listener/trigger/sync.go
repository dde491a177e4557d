package trigger

import (
	"context"
	"crypto/md5" //nolint:gosec // compares with PostgreSQL's md5(), not for security
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/plan"
)

// Change is one DDL step Sync took, for the apply report.
type Change struct {
	Table  pgident.Table
	Action string
}

type existingTrigger struct {
	table pgident.Table
	name  string
	owned bool // the role may act as the table's owner, as dropping a trigger needs
}

// ChunkTables is how many tables one Sync transaction changes triggers on. CREATE TRIGGER takes
// a SHARE ROW EXCLUSIVE lock on its table until commit; thousands of tables in one transaction
// would fill the shared lock table (max_locks_per_transaction × max_connections slots, 6,400 by
// default: "out of shared memory").
const ChunkTables = 500

// Sync makes the database hold exactly the triggers p needs (none when p is nil), inside tx, for
// at most ChunkTables tables; more reports that tables are left, for a further call in a new
// transaction. It is idempotent: each call starts from what the catalog holds. Functions are
// replaced only when their body differs, in place, which needs no lock on the application's
// tables; a trigger is only created or dropped when it is missing or obsolete.
func Sync(ctx context.Context, tx pgx.Tx, p *plan.Plan) (changes []Change, more bool, err error) {
	return syncTriggers(ctx, tx, p, true)
}

// SyncAll runs Sync in transactions of its own until nothing is left, for callers that need no
// single transaction.
func SyncAll(ctx context.Context, db interface {
	Begin(context.Context) (pgx.Tx, error)
}, p *plan.Plan, stale bool) ([]Change, error) {
	var all []Change
	for {
		var more bool
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '10s'`); err != nil {
				return err
			}
			var ch []Change
			var err error
			if stale {
				ch, more, err = Sync(ctx, tx, p)
			} else {
				ch, more, err = SyncSelf(ctx, tx, p)
			}
			all = append(all, ch...)
			return err
		})
		if err != nil || !more {
			return all, err
		}
	}
}

// SyncSelf keeps, for logical mode, the BEFORE ROW self triggers of each target (they null
// materialized_at in the application's own write, cost no extra write, and are how the decoded
// stream tells a stale row from matcol's own; the UPDATE one only where the stream cannot tell,
// see plan.Target.KeyChangeInStream) and the TRUNCATE triggers of partitioned sources'
// partitions, whose TRUNCATE the stream does not carry. Other source and statement triggers are
// dropped.
func SyncSelf(ctx context.Context, tx pgx.Tx, p *plan.Plan) ([]Change, bool, error) {
	return syncTriggers(ctx, tx, p, false)
}

// work is what one table needs: functions to (re)create, triggers to create and to drop.
type work struct {
	functions []string
	create    map[string]string
	drop      []string
}

func syncTriggers(ctx context.Context, tx pgx.Tx, p *plan.Plan, stale bool) ([]Change, bool, error) {
	// matcol's triggers, by name: a name carries a hash of its definition (see named), so a
	// changed definition is a missing trigger and an obsolete one. Read from pg_trigger itself:
	// pg_get_triggerdef opens every table, which costs seconds and a backend's cache with
	// thousands of tables. Triggers PostgreSQL cloned onto partitions belong to their parent's.
	rows, err := tx.Query(ctx, `
		SELECT n.nspname, c.relname, t.tgname, pg_has_role(c.relowner, 'USAGE')
		FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND t.tgname LIKE 'matcol\_%'`)
	if err != nil {
		return nil, false, fmt.Errorf("read matcol triggers: %w", err)
	}
	var have []existingTrigger
	for rows.Next() {
		var e existingTrigger
		if err := rows.Scan(&e.table.Schema, &e.table.Name, &e.name, &e.owned); err != nil {
			rows.Close()
			return nil, false, fmt.Errorf("read matcol triggers: %w", err)
		}
		have = append(have, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("read matcol triggers: %w", err)
	}
	bodies := map[string]string{} // md5 of each function's body
	frows, err := tx.Query(ctx, `
		SELECT p.proname, md5(p.prosrc) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = 'matcol' AND p.proname ~ '^(inv|invrow|invroot|invtrunc|invw|self|selfkey|selfw|stale)_[0-9a-f]{16}$'`)
	if err != nil {
		return nil, false, fmt.Errorf("read trigger functions: %w", err)
	}
	for frows.Next() {
		var name, src string
		if err := frows.Scan(&name, &src); err != nil {
			frows.Close()
			return nil, false, err
		}
		bodies[name] = src
	}
	frows.Close()
	if err := frows.Err(); err != nil {
		return nil, false, fmt.Errorf("read trigger functions: %w", err)
	}

	wanted := map[pgident.Table]map[string]string{} // table → trigger name → CREATE TRIGGER
	want := func(t pgident.Table, triggers map[string]string) {
		m := wanted[t]
		if m == nil {
			m = map[string]string{}
			wanted[t] = m
		}
		for base, create := range triggers {
			name, sql := named(base, create)
			m[name] = sql
		}
	}
	todo := map[pgident.Table]*work{}
	at := func(t pgident.Table) *work {
		w := todo[t]
		if w == nil {
			w = &work{create: map[string]string{}}
			todo[t] = w
		}
		return w
	}
	keepFn := map[string]bool{}
	partitions := map[pgident.Table]bool{}
	function := func(t pgident.Table, name, sql string) {
		keepFn[name] = true
		if sum, ok := bodies[name]; !ok || sum != fmt.Sprintf("%x", md5.Sum([]byte(functionBody(sql)))) {
			at(t).functions = append(at(t).functions, sql)
		}
	}
	if p != nil {
		for _, s := range p.Sources {
			// A partition's TRUNCATE trigger calls the source's statement function in trigger
			// mode, and in logical mode one that only invalidates the targets.
			truncFn := SourceFunction(s)
			if stale {
				function(s.Table, SourceFunction(s), SourceFunctionSQL(s))
				want(s.Table, SourceTriggersSQL(s))
			}
			if !s.Partitioned() {
				continue
			}
			if stale {
				function(s.Table, RowFunction(s), RowFunctionSQL(s))
				function(s.Table, RootFunction(s), RootFunctionSQL(s))
				function(s.Table, SourceWatchFunction(s), SourceWatchFunctionSQL(s))
			} else {
				truncFn = TruncFunction(s)
				function(s.Table, truncFn, TruncFunctionSQL(s))
			}
			parts, err := discovery.Partitions(ctx, tx, s.OID)
			if err != nil {
				return nil, false, err
			}
			for _, part := range parts {
				partitions[part.Name] = true
				want(part.Name, PartitionTriggersSQL(part.Name.Sanitize(), truncFn))
			}
		}
		for _, t := range p.Targets {
			function(t.Table, SelfFunction(t), SelfFunctionSQL(t))
			function(t.Table, SelfWatchFunction(t), SelfWatchFunctionSQL(t))
			self := SelfTriggersSQL(t, stale)
			want(t.Table, self)
			if _, ok := self[TrigSelfKey]; ok {
				function(t.Table, SelfKeyFunction(t), SelfKeyFunctionSQL(t))
			}
			if stale {
				function(t.Table, StaleFunction(t), StaleFunctionSQL(t))
				want(t.Table, StaleTriggersSQL(t))
			}
		}
	}
	targets := map[pgident.Table]*plan.Target{}
	if p != nil {
		for _, t := range p.Targets {
			targets[t.Table] = t
		}
	}
	present := map[pgident.Table]map[string]bool{}
	var kept []Change
	for _, e := range have {
		if _, ok := wanted[e.table][e.name]; ok {
			if present[e.table] == nil {
				present[e.table] = map[string]bool{}
			}
			present[e.table][e.name] = true
			continue
		}
		if fn := ownRowFunction(targets[e.table], e.name); fn != "" && !e.owned {
			// A target's own-row trigger of another kind than its enrichments now call for
			// still answers them correctly: without the owner's right to drop it, it stays.
			keepFn[fn] = true
			kept = append(kept, Change{Table: e.table, Action: "kept trigger " + e.name +
				" (replacing it needs the table's owner: run apply as the owner to spare the application its cost)"})
			continue
		}
		at(e.table).drop = append(at(e.table).drop, e.name)
	}
	for table, m := range wanted {
		for name, create := range m {
			if !present[table][name] {
				at(table).create[name] = create
			}
		}
	}
	tables := make([]pgident.Table, 0, len(todo))
	for t := range todo {
		tables = append(tables, t)
	}
	// Partitions last: their triggers call functions created with their parent's, and DETACH
	// PARTITION locks the parent before the partition, so a transaction that did otherwise
	// could deadlock with it.
	sort.Slice(tables, func(i, j int) bool {
		if partitions[tables[i]] != partitions[tables[j]] {
			return partitions[tables[j]]
		}
		return tables[i].String() < tables[j].String()
	})
	more := len(tables) > ChunkTables
	if more {
		tables = tables[:ChunkTables]
	}
	var changes []Change
	if !more {
		changes = kept // once, in the last chunk
	}
	for _, table := range tables {
		w := todo[table]
		for _, f := range w.functions {
			if _, err := tx.Exec(ctx, f); err != nil {
				return nil, false, fmt.Errorf("create trigger function: %w", err)
			}
		}
		for _, name := range w.drop {
			if _, err := tx.Exec(ctx, fmt.Sprintf("DROP TRIGGER IF EXISTS %s ON %s", ident(name), table.Sanitize())); err != nil {
				return nil, false, fmt.Errorf("drop trigger %s on %s: %w", name, table, err)
			}
			changes = append(changes, Change{Table: table, Action: "dropped trigger " + name})
		}
		names := make([]string, 0, len(w.create))
		for name := range w.create {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			if _, err := tx.Exec(ctx, w.create[name]); err != nil {
				return nil, false, fmt.Errorf("create trigger %s on %s: %w", name, table, err)
			}
			changes = append(changes, Change{Table: table, Action: "created trigger " + name})
		}
	}
	if more {
		return changes, true, nil
	}
	// Functions of sources and targets that are gone, once no trigger uses them any more.
	for name := range bodies {
		if keepFn[name] {
			continue
		}
		if _, err := tx.Exec(ctx, "DROP FUNCTION IF EXISTS matcol."+ident(name)); err != nil {
			return nil, false, fmt.Errorf("drop trigger function %s: %w", name, err)
		}
	}
	return changes, false, nil
}

// ownRowFunction returns the function that trigger name calls when it is one of target t's own-row
// UPDATE triggers (matcol_self, matcol_stale_upd, matcol_self_key), whichever kind t needs now;
// "" otherwise, or when t is nil.
func ownRowFunction(t *plan.Target, name string) string {
	if t == nil {
		return ""
	}
	switch baseName(name) {
	case TrigSelf:
		return SelfFunction(t)
	case TrigStaleUpdate:
		return StaleFunction(t)
	case TrigSelfKey:
		return SelfKeyFunction(t)
	}
	return ""
}

// functionBody is what pg_proc.prosrc holds for a generated CREATE FUNCTION.
func functionBody(sql string) string {
	parts := strings.Split(sql, "$matcol$")
	if len(parts) != 3 {
		return ""
	}
	return parts[1]
}

// named returns the name a trigger of base name gets, and its CREATE TRIGGER with that name: base
// and a hash of the definition, so that a trigger whose definition changed (its WHEN, say) is
// replaced, and one whose definition stands is left alone.
func named(base, create string) (string, string) {
	sum := sha256.Sum256([]byte(create))
	name := base + "_" + hex.EncodeToString(sum[:4])
	return name, strings.Replace(create, "CREATE TRIGGER "+base+" ", "CREATE TRIGGER "+name+" ", 1)
}

// baseName is the base a trigger name was made from by named.
func baseName(name string) string {
	if i := strings.LastIndexByte(name, '_'); i > 0 {
		return name[:i]
	}
	return name
}
