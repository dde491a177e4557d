package trigger

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

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
	def   string
}

// Sync makes the database hold exactly the triggers p needs (none when p is nil), inside tx.
// Functions are replaced in place, which needs no lock on the application's tables; a trigger is
// only created or dropped when it is missing or obsolete.
func Sync(ctx context.Context, tx pgx.Tx, p *plan.Plan) ([]Change, error) {
	return syncTriggers(ctx, tx, p, true)
}

// SyncSelf keeps only the BEFORE ROW self trigger of each target, for logical mode: it nulls
// materialized_at in the application's own write, costs no extra write, and is how the decoded
// stream tells a stale row from matcol's own. Source and statement triggers are dropped.
func SyncSelf(ctx context.Context, tx pgx.Tx, p *plan.Plan) ([]Change, error) {
	if p == nil {
		return syncTriggers(ctx, tx, nil, false)
	}
	return syncTriggers(ctx, tx, &plan.Plan{Targets: p.Targets}, false)
}

func syncTriggers(ctx context.Context, tx pgx.Tx, p *plan.Plan, stale bool) ([]Change, error) {
	rows, err := tx.Query(ctx, `
		SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid)
		FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE NOT t.tgisinternal AND t.tgname LIKE 'matcol\_%'`)
	if err != nil {
		return nil, fmt.Errorf("read matcol triggers: %w", err)
	}
	var have []existingTrigger
	for rows.Next() {
		var e existingTrigger
		if err := rows.Scan(&e.table.Schema, &e.table.Name, &e.name, &e.def); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read matcol triggers: %w", err)
		}
		have = append(have, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read matcol triggers: %w", err)
	}

	type want struct {
		create string
		match  string // a fragment the existing definition must contain
	}
	wanted := map[pgident.Table]map[string]want{}
	var functions []string
	keepFn := map[string]bool{}
	if p != nil {
		for _, s := range p.Sources {
			functions = append(functions, SourceFunctionSQL(s))
			keepFn[SourceFunction(s)] = true
			m := map[string]want{}
			for name, create := range SourceTriggersSQL(s) {
				m[name] = want{create: create, match: SourceFunction(s)}
			}
			wanted[s.Table] = m
		}
		for _, t := range p.Targets {
			functions = append(functions, SelfFunctionSQL(t))
			keepFn[SelfFunction(t)] = true
			if stale {
				functions = append(functions, StaleFunctionSQL(t))
				keepFn[StaleFunction(t)] = true
			}
			m := wanted[t.Table]
			if m == nil {
				m = map[string]want{}
				wanted[t.Table] = m
			}
			events := "BEFORE INSERT OR UPDATE ON"
			if !t.Self {
				events = "BEFORE INSERT ON"
			}
			m[TrigSelf] = want{create: SelfTriggerSQL(t), match: events}
			if !stale {
				continue
			}
			for name, create := range StaleTriggersSQL(t) {
				m[name] = want{create: create, match: StaleFunction(t)}
			}
		}
	}
	for _, f := range functions {
		if _, err := tx.Exec(ctx, f); err != nil {
			return nil, fmt.Errorf("create trigger function: %w", err)
		}
	}
	var changes []Change
	present := map[pgident.Table]map[string]bool{}
	for _, e := range have {
		w, ok := wanted[e.table][e.name]
		if ok && strings.Contains(e.def, w.match) {
			if present[e.table] == nil {
				present[e.table] = map[string]bool{}
			}
			present[e.table][e.name] = true
			continue
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("DROP TRIGGER IF EXISTS %s ON %s", ident(e.name), e.table.Sanitize())); err != nil {
			return nil, fmt.Errorf("drop trigger %s on %s: %w", e.name, e.table, err)
		}
		changes = append(changes, Change{Table: e.table, Action: "dropped trigger " + e.name})
	}
	for table, m := range wanted {
		for name, w := range m {
			if present[table][name] {
				continue
			}
			if _, err := tx.Exec(ctx, w.create); err != nil {
				return nil, fmt.Errorf("create trigger %s on %s: %w", name, table, err)
			}
			changes = append(changes, Change{Table: table, Action: "created trigger " + name})
		}
	}
	// Functions of sources and targets that are gone.
	frows, err := tx.Query(ctx, `
		SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = 'matcol' AND (p.proname LIKE 'inv\_%' OR p.proname LIKE 'self\_%' OR p.proname LIKE 'stale\_%')`)
	if err != nil {
		return nil, fmt.Errorf("read trigger functions: %w", err)
	}
	var drop []string
	for frows.Next() {
		var name string
		if err := frows.Scan(&name); err != nil {
			frows.Close()
			return nil, err
		}
		if !keepFn[name] {
			drop = append(drop, name)
		}
	}
	frows.Close()
	for _, name := range drop {
		if _, err := tx.Exec(ctx, "DROP FUNCTION IF EXISTS matcol."+ident(name)+"()"); err != nil {
			return nil, fmt.Errorf("drop trigger function %s: %w", name, err)
		}
	}
	return changes, nil
}
