// Package trigger is the trigger-mode invalidation source: generated statement-level triggers
// with transition tables on each dependency source, row triggers on each target for its own
// changes, and a LISTEN loop that wakes the materializer.
//
// Every trigger function runs as the writer (SECURITY INVOKER): reading the application's rows
// may run code the table's owner chose (a cast to json), which must not run with matcol's rights.
// They hand what they read to matcol.enqueue*, which run as matcol and read no application data.
// Every name in them is qualified instead of pinning search_path with SET, which costs about
// 10 µs a call, on every application write. Statement triggers read rows through to_jsonb(r), so
// a column dropped or renamed in the application's transaction reads as null instead of failing
// it; the row watch functions read columns by name and count any failure as a change. No trigger
// depends on a column, so ALTER COLUMN … TYPE stays free.
package trigger

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/listener"
	"github.com/matcol/matcol/plan"
)

func ident(s string) string { return pgx.Identifier{s}.Sanitize() }

func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func textArray(vals []string) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = literal(v)
	}
	return "ARRAY[" + strings.Join(parts, ", ") + "]::pg_catalog.text[]"
}

// SourceFunction is matcol.inv_<hash>(), the statement trigger function of source s.
func SourceFunction(s *plan.Source) string { return "inv_" + s.Hash }

// RowFunction is matcol.invrow_<hash>(), the row trigger function of a partitioned source s, for
// writes that name a partition.
func RowFunction(s *plan.Source) string { return "invrow_" + s.Hash }

// RootFunction is matcol.invroot_<hash>(), which marks a statement on partitioned source s itself.
func RootFunction(s *plan.Source) string { return "invroot_" + s.Hash }

// SelfFunction is matcol.self_<hash>(), the row trigger function of target t.
func SelfFunction(t *plan.Target) string { return "self_" + t.Hash }

// SelfKeyFunction is matcol.selfkey_<hash>(), the AFTER UPDATE row trigger function of a target
// watched only by its key (plan.Target.KeyOnlyWatch).
func SelfKeyFunction(t *plan.Target) string { return "selfkey_" + t.Hash }

// StaleFunction is matcol.stale_<hash>(), the statement trigger of target t that tells the daemon
// the table has new stale rows.
func StaleFunction(t *plan.Target) string { return "stale_" + t.Hash }

// Trigger names; every matcol trigger starts with "matcol_".
const (
	TrigInsert   = "matcol_inv_ins"
	TrigUpdate   = "matcol_inv_upd"
	TrigDelete   = "matcol_inv_del"
	TrigTruncate = "matcol_inv_trunc"
	TrigSelf     = "matcol_self"
	TrigSelfIns  = "matcol_self_ins"
	TrigSelfKey  = "matcol_self_key"

	TrigStaleInsert = "matcol_stale_ins"
	TrigStaleUpdate = "matcol_stale_upd"

	// On a partitioned source: a BEFORE STATEMENT trigger that marks statements on the
	// partitioned table itself, and row triggers (cloned to every partition, present and future)
	// that answer the statements that name a partition.
	TrigRoot      = "matcol_inv_root"
	TrigRowInsert = "matcol_invrow_ins"
	TrigRowUpdate = "matcol_invrow_upd"
	TrigRowDelete = "matcol_invrow_del"
)

// rootSetting is the transaction-local setting that a statement on partitioned source s sets to
// its nesting depth, so that the row triggers of its partitions leave its rows to its statement
// trigger.
func rootSetting(s *plan.Source) string { return "matcol.via_root_" + s.Hash }

// staleSetting is the transaction-local setting the self trigger of t sets when it makes a row
// stale, so that the statement's stale trigger queues a marker only then.
func staleSetting(t *plan.Target) string { return "matcol.stale_" + t.Hash }

// unwatched lists the columns of a table whose changes matter to nobody: removed from a row's
// jsonb, what is left is what a change is compared on. Columns added later count until the next
// apply, which is safe.
func unwatched(columns []string, watched []string) string {
	var out []string
	for _, c := range columns {
		if !slices.Contains(watched, c) {
			out = append(out, c)
		}
	}
	if !slices.Contains(out, "materialized_at") {
		out = append(out, "materialized_at")
	}
	return textArray(out)
}

func sourceColumns(s *plan.Source) []string {
	cols := make([]string, len(s.Relation.Columns))
	for i, c := range s.Relation.Columns {
		cols[i] = c.Name
	}
	return cols
}

// depValue renders one dependency's values from jsonb row j.
func depValue(d *plan.Dep, j string) string {
	vals := make([]string, len(d.Columns))
	for i, c := range d.Columns {
		vals[i] = j + " OPERATOR(pg_catalog.->) " + literal(c)
	}
	return "pg_catalog.jsonb_build_array(" + strings.Join(vals, ", ") + ")"
}

// depID renders the dependency_id d queues: none for a direct one, whose values are target keys.
func depID(d *plan.Dep) string {
	if d.Direct() {
		return "NULL::pg_catalog.int4"
	}
	return fmt.Sprint(d.ID)
}

// depRows renders, for jsonb rows j of from, the (target, dependency, values) triples of every
// dependency on s, as a SELECT: values that are all null name nothing.
func depRows(s *plan.Source, from string) string {
	if len(s.Deps) == 1 {
		// One dependency, the usual case: no lateral row per dependency, one sort that both folds
		// duplicates and orders, and one level, which PostgreSQL plans without a subquery scan
		// (about 2 µs less in every single-row statement).
		d := s.Deps[0]
		v := depValue(d, "x.j")
		return fmt.Sprintf(`SELECT DISTINCT %d AS t, %s AS d, %s AS v FROM (%s) AS x
      WHERE NOT %s OPERATOR(pg_catalog.<@) '[null]'::pg_catalog.jsonb ORDER BY 3`, d.Target.ID, depID(d), v, from, v)
	}
	rows := make([]string, len(s.Deps))
	for i, d := range s.Deps {
		rows[i] = fmt.Sprintf("(%d, %s, %s)", d.Target.ID, depID(d), depValue(d, "x.j"))
	}
	// In key order: workers take entries in queue order, and neighbouring keys in a batch share
	// index and heap pages, as a set-based statement's would.
	return fmt.Sprintf(`SELECT DISTINCT q.t, q.d, q.v FROM (%s) AS x CROSS JOIN LATERAL (VALUES %s) AS q(t, d, v)
      WHERE NOT q.v OPERATOR(pg_catalog.<@) '[null]'::pg_catalog.jsonb ORDER BY q.t, q.d, q.v`, from, strings.Join(rows, ", "))
}

// enqueue renders the statements that queue the triples of query, whose columns are the target,
// the dependency and the values, in that order: the writer inserts them itself (PUBLIC may insert
// those columns of matcol.pending, nothing else), and wakes a sleeping daemon.
func enqueue(query string) string {
	return fmt.Sprintf(`INSERT INTO matcol.pending (target_id, dependency_id, vals) %s;
      IF FOUND AND pg_catalog.pg_sequence_last_value('matcol.wake_flag'::pg_catalog.regclass) OPERATOR(pg_catalog.=) 1 THEN
          PERFORM pg_catalog.pg_notify('matcol', 'q');
      END IF;`, query)
}

// changedRows renders the jsonb rows of an UPDATE whose watched columns changed: the multiset
// difference of old and new rows, each cut down to its watched columns, which is empty exactly
// when no watched column changed. That also keeps matcol's own writes, to columns nobody reads,
// from invalidating anything.
func changedRows(s *plan.Source, oldRel, newRel string) string {
	_, watched := s.Watch()
	cut := unwatched(sourceColumns(s), watched)
	return fmt.Sprintf(`(SELECT j FROM (SELECT pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.-) %[1]s AS j FROM %[2]s r) o EXCEPT ALL SELECT j FROM (SELECT pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.-) %[1]s AS j FROM %[3]s r) n)
       UNION ALL
       (SELECT j FROM (SELECT pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.-) %[1]s AS j FROM %[3]s r) n EXCEPT ALL SELECT j FROM (SELECT pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.-) %[1]s AS j FROM %[2]s r) o)`,
		cut, oldRel, newRel)
}

func truncateTargets(s *plan.Source) string {
	var ids []string
	seen := map[int]bool{}
	for _, d := range s.Deps {
		if !seen[d.Target.ID] {
			seen[d.Target.ID] = true
			ids = append(ids, fmt.Sprint(d.Target.ID))
		}
	}
	return "ARRAY[" + strings.Join(ids, ", ") + "]::pg_catalog.int4[]"
}

// SourceFunctionSQL creates the statement trigger function of a source: INSERT and DELETE queue
// the dependency values of every row, UPDATE those of the rows whose watched columns changed
// (old and new), TRUNCATE every row of the targets.
func SourceFunctionSQL(s *plan.Source) string {
	rootReset := ""
	if s.Partitioned() {
		rootReset = fmt.Sprintf("PERFORM pg_catalog.set_config(%s, '', true);\n  ", literal(rootSetting(s)))
	}
	return fmt.Sprintf(`CREATE OR REPLACE FUNCTION matcol.%s() RETURNS trigger
LANGUAGE plpgsql AS $matcol$
-- generated by matcol; do not edit
BEGIN
  %sIF TG_OP = 'INSERT' THEN
      %s
  ELSIF TG_OP = 'DELETE' THEN
      %s
  ELSIF TG_OP = 'UPDATE' THEN
      %s
  ELSIF TG_OP = 'TRUNCATE' THEN
      PERFORM matcol.enqueue_all(%s);
  END IF;
  RETURN NULL;
END
$matcol$`,
		ident(SourceFunction(s)), rootReset,
		enqueue(depRows(s, "SELECT pg_catalog.to_jsonb(r) AS j FROM matcol_new r")),
		enqueue(depRows(s, "SELECT pg_catalog.to_jsonb(r) AS j FROM matcol_old r")),
		enqueue(depRows(s, changedRows(s, "matcol_old", "matcol_new"))),
		truncateTargets(s))
}

// SourceTriggersSQL returns the CREATE TRIGGER statements of a source, by trigger name. On a
// partitioned source, statements on the partitioned table fire its statement triggers, and row
// triggers, which PostgreSQL clones to every partition present and future, answer the
// statements that name a partition; the partitions' own TRUNCATE triggers come from
// PartitionTriggersSQL.
func SourceTriggersSQL(s *plan.Source) map[string]string {
	fn := "matcol." + ident(SourceFunction(s))
	tbl := s.Table.Sanitize()
	out := map[string]string{
		TrigInsert:   fmt.Sprintf("CREATE TRIGGER %s AFTER INSERT ON %s REFERENCING NEW TABLE AS matcol_new FOR EACH STATEMENT EXECUTE FUNCTION %s()", TrigInsert, tbl, fn),
		TrigUpdate:   fmt.Sprintf("CREATE TRIGGER %s AFTER UPDATE ON %s REFERENCING OLD TABLE AS matcol_old NEW TABLE AS matcol_new FOR EACH STATEMENT EXECUTE FUNCTION %s()", TrigUpdate, tbl, fn),
		TrigDelete:   fmt.Sprintf("CREATE TRIGGER %s AFTER DELETE ON %s REFERENCING OLD TABLE AS matcol_old FOR EACH STATEMENT EXECUTE FUNCTION %s()", TrigDelete, tbl, fn),
		TrigTruncate: fmt.Sprintf("CREATE TRIGGER %s AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s()", TrigTruncate, tbl, fn),
	}
	if !s.Partitioned() {
		return out
	}
	row := "matcol." + ident(RowFunction(s))
	// WHEN is evaluated before the trigger function runs, at the statement's own depth.
	notRoot := fmt.Sprintf("current_setting(%s, true) IS DISTINCT FROM pg_trigger_depth()::text", literal(rootSetting(s)))
	out[TrigRoot] = fmt.Sprintf("CREATE TRIGGER %s BEFORE INSERT OR UPDATE OR DELETE ON %s FOR EACH STATEMENT EXECUTE FUNCTION matcol.%s()",
		TrigRoot, tbl, ident(RootFunction(s)))
	out[TrigRowInsert] = fmt.Sprintf("CREATE TRIGGER %s AFTER INSERT ON %s FOR EACH ROW WHEN (%s) EXECUTE FUNCTION %s()", TrigRowInsert, tbl, notRoot, row)
	out[TrigRowDelete] = fmt.Sprintf("CREATE TRIGGER %s AFTER DELETE ON %s FOR EACH ROW WHEN (%s) EXECUTE FUNCTION %s()", TrigRowDelete, tbl, notRoot, row)
	out[TrigRowUpdate] = fmt.Sprintf("CREATE TRIGGER %s AFTER UPDATE ON %s FOR EACH ROW WHEN (%s AND matcol.%s(OLD, NEW)) EXECUTE FUNCTION %s()",
		TrigRowUpdate, tbl, notRoot, ident(SourceWatchFunction(s)), row)
	return out
}

// PartitionTriggersSQL returns the trigger a partition of partitioned source s needs beside the
// row triggers it inherits: TRUNCATE, which has no row triggers, calling function fn.
func PartitionTriggersSQL(partition, fn string) map[string]string {
	return map[string]string{
		TrigTruncate: fmt.Sprintf("CREATE TRIGGER %s AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION matcol.%s()",
			TrigTruncate, partition, ident(fn)),
	}
}

// TruncFunction names the TRUNCATE trigger function of a partitioned source's partitions in
// logical mode: pgoutput publishing through the partition root sends no TRUNCATE that names a
// partition, so nothing else would hear it.
func TruncFunction(s *plan.Source) string { return "invtrunc_" + s.Hash }

// TruncFunctionSQL creates TruncFunction(s): it invalidates every row of the targets.
func TruncFunctionSQL(s *plan.Source) string {
	return fmt.Sprintf(`CREATE OR REPLACE FUNCTION matcol.%s() RETURNS trigger
LANGUAGE plpgsql AS $matcol$
-- generated by matcol; do not edit
BEGIN
  PERFORM matcol.enqueue_all(%s);
  RETURN NULL;
END
$matcol$`, ident(TruncFunction(s)), truncateTargets(s))
}

// RowFunctionSQL creates the row trigger function of a partitioned source, for statements that
// name a partition: it queues the row's old and new dependency values.
func RowFunctionSQL(s *plan.Source) string {
	return fmt.Sprintf(`CREATE OR REPLACE FUNCTION matcol.%s() RETURNS trigger
LANGUAGE plpgsql AS $matcol$
-- generated by matcol; do not edit
BEGIN
  IF TG_OP = 'INSERT' THEN
      %s
  ELSIF TG_OP = 'DELETE' THEN
      %s
  ELSE
      %s
  END IF;
  RETURN NULL;
END
$matcol$`, ident(RowFunction(s)),
		enqueue(depRows(s, "SELECT pg_catalog.to_jsonb(NEW) AS j")),
		enqueue(depRows(s, "SELECT pg_catalog.to_jsonb(OLD) AS j")),
		enqueue(depRows(s, "SELECT pg_catalog.to_jsonb(OLD) AS j UNION ALL SELECT pg_catalog.to_jsonb(NEW)")))
}

// RootFunctionSQL creates the function that marks a statement on partitioned source s itself.
func RootFunctionSQL(s *plan.Source) string {
	return fmt.Sprintf(`CREATE OR REPLACE FUNCTION matcol.%s() RETURNS trigger
LANGUAGE plpgsql AS $matcol$
-- generated by matcol; do not edit
BEGIN
  PERFORM pg_catalog.set_config(%s, (pg_catalog.pg_trigger_depth() OPERATOR(pg_catalog.-) 1)::pg_catalog.text, true);
  RETURN NULL;
END
$matcol$`, ident(RootFunction(s)), literal(rootSetting(s)))
}

// SelfFunctionSQL creates the row trigger function of a target: a new row, or a change to a
// watched column (see SelfTriggerSQL), makes the row stale in the same write, with no second
// UPDATE, and tells the statement's stale trigger.
//
// When the enrichments read named columns, this function compares them, one by one, as text in
// the C collation: what the value is, not what its type's equality says (1.0 and 1.00 are equal
// numerics an enrichment may print apart). That costs a third of comparing whole rows as jsonb
// in WHEN. It compares here rather than in a function WHEN calls, because only a trigger
// function's OLD and NEW always follow the table's columns: a function taking the row as an
// argument kept reading a column dropped and added again under the session. A column dropped,
// renamed or retyped in the writer's transaction fails the comparison, which counts as a change.
func SelfFunctionSQL(t *plan.Target) string {
	check := ""
	if all, watched := t.SelfWatch(); !all && len(watched) > 0 {
		check = fmt.Sprintf(`IF TG_OP = 'UPDATE' THEN
      BEGIN
          IF NOT (%s) THEN
              RETURN NEW;
          END IF;
      EXCEPTION WHEN OTHERS THEN
          NULL;
      END;
  END IF;
  `, columnsDiffer(watched))
	}
	return fmt.Sprintf(`CREATE OR REPLACE FUNCTION matcol.%s() RETURNS trigger
LANGUAGE plpgsql AS $matcol$
-- generated by matcol; do not edit
BEGIN
  %sNEW.materialized_at := NULL;
  IF TG_OP = 'UPDATE' THEN
      PERFORM pg_catalog.set_config(%s, 'on', true);
  END IF;
  RETURN NEW;
END
$matcol$`, ident(SelfFunction(t)), check, literal(staleSetting(t)))
}

// SelfKeyFunctionSQL creates SelfKeyFunction(t): when an UPDATE changed the row's key, it queues
// the new key, as a source's change queues the keys it names, and the workers recompute the row.
// The row keeps its stamp meanwhile, as a row a source change names does. It compares the key
// columns as SelfFunctionSQL compares watched ones, and a failure counts as a change; the key it
// queues it reads through to_jsonb, so that a key column dropped in the writer's transaction
// queues a null that names no row instead of failing the statement.
func SelfKeyFunctionSQL(t *plan.Target) string {
	key := make([]string, len(t.Key))
	vals := make([]string, len(t.Key))
	for i, k := range t.Key {
		key[i] = k.Name
		vals[i] = "pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.->) " + literal(k.Name)
	}
	return fmt.Sprintf(`CREATE OR REPLACE FUNCTION matcol.%s() RETURNS trigger
LANGUAGE plpgsql AS $matcol$
-- generated by matcol; do not edit
BEGIN
  BEGIN
      IF NOT (%s) THEN
          RETURN NULL;
      END IF;
  EXCEPTION WHEN OTHERS THEN
      NULL;
  END;
  %s
  RETURN NULL;
END
$matcol$`, ident(SelfKeyFunction(t)), columnsDiffer(key),
		enqueue(fmt.Sprintf("SELECT %d AS t, NULL::pg_catalog.int4 AS d, pg_catalog.jsonb_build_array(%s) AS v", t.ID, strings.Join(vals, ", "))))
}

// columnsDiffer renders whether an UPDATE changed any of cols, each compared as text in the C
// collation: what the value is, not what its type's equality says.
func columnsDiffer(cols []string) string {
	cmp := make([]string, len(cols))
	for i, c := range cols {
		cmp[i] = fmt.Sprintf(`(OLD.%[1]s)::pg_catalog.text COLLATE pg_catalog."C" IS DISTINCT FROM (NEW.%[1]s)::pg_catalog.text COLLATE pg_catalog."C"`, ident(c))
	}
	return strings.Join(cmp, "\n              OR ")
}

// selfWhen is the part of a self trigger's WHEN that passes over matcol's own statements (see
// plan.OwnWriteSetting) without a function call; statements fired by other triggers (depth > 0)
// are still checked.
func selfWhen() string {
	return fmt.Sprintf("(pg_trigger_depth() > 0 OR current_setting(%s, true) IS DISTINCT FROM 'on')", literal(plan.OwnWriteSetting))
}

// SelfTriggersSQL returns the row triggers of a target, by name: every INSERT arrives stale
// (the trigger fires only when the application gave materialized_at a value), and an UPDATE that
// changes a watched column makes the row stale. Which columns are watched is decided by
// plan.Target.SelfWatch, and compared in WHEN (SelfWatchFunction), so that an UPDATE of other
// columns calls no trigger function. There is no UPDATE trigger when nothing is watched, nor in
// logical mode (trigger false) when the stream shows the one change that counts: any BEFORE
// UPDATE row trigger makes PostgreSQL lock and log every updated row first.
func SelfTriggersSQL(t *plan.Target, trigger bool) map[string]string {
	fn := "matcol." + ident(SelfFunction(t))
	tbl := t.Table.Sanitize()
	out := map[string]string{
		TrigSelfIns: fmt.Sprintf("CREATE TRIGGER %s BEFORE INSERT ON %s FOR EACH ROW WHEN (NEW.materialized_at IS NOT NULL) EXECUTE FUNCTION %s()",
			TrigSelfIns, tbl, fn),
	}
	if !selfUpdateTrigger(t, trigger) {
		return out
	}
	if keyTrigger(t) {
		// AFTER, not BEFORE: PostgreSQL locks (and logs) every row an UPDATE changes when any
		// BEFORE UPDATE row trigger exists, and most UPDATEs leave the key alone.
		out[TrigSelfKey] = fmt.Sprintf("CREATE TRIGGER %s AFTER UPDATE ON %s FOR EACH ROW WHEN %s EXECUTE FUNCTION matcol.%s()",
			TrigSelfKey, tbl, selfWhen(), ident(SelfKeyFunction(t)))
		return out
	}
	out[TrigSelf] = fmt.Sprintf("CREATE TRIGGER %s BEFORE UPDATE ON %s FOR EACH ROW WHEN (%s AND matcol.%s(OLD, NEW)) EXECUTE FUNCTION %s()",
		TrigSelf, tbl, selfWhen(), ident(SelfWatchFunction(t)), fn)
	return out
}

// selfUpdateTrigger reports whether target t gets the self UPDATE trigger (in trigger mode, or
// in logical mode when trigger is false): not when nothing is watched, nor when the stream shows
// the one change that counts.
func selfUpdateTrigger(t *plan.Target, trigger bool) bool {
	if all, cols := t.SelfWatch(); !all && len(cols) == 0 {
		return false
	}
	return trigger || !t.KeyChangeInStream()
}

// keyTrigger reports whether target t's own UPDATEs are watched by the key trigger
// (SelfKeyFunctionSQL) rather than matcol_self: only its key is watched, and it is a plain table.
// An UPDATE that moves a row to another partition fires no AFTER UPDATE row trigger, only the
// destination's BEFORE INSERT, which marks the row stale with no statement trigger to announce it.
func keyTrigger(t *plan.Target) bool {
	return t.KeyOnlyWatch() && t.Relation != nil && t.Relation.Kind == 'r'
}

// SelfWatchFunction is matcol.selfw_<hash>(old, new), true when an UPDATE of target t changed a
// column that makes the row stale.
func SelfWatchFunction(t *plan.Target) string { return "selfw_" + t.Hash }

// SourceWatchFunction is matcol.invw_<hash>(old, new), true when an UPDATE of source s changed a
// watched column.
func SourceWatchFunction(s *plan.Source) string { return "invw_" + s.Hash }

// SelfWatchFunctionSQL creates SelfWatchFunction, from plan.Target.SelfWatch: true when the
// enrichments read named columns (the self function compares them), a jsonb comparison of whole
// rows when one reads the whole row, false when none reads the target.
func SelfWatchFunctionSQL(t *plan.Target) string {
	all, watched := t.SelfWatch()
	switch {
	case all:
		cols := make([]string, len(t.Columns))
		for i, c := range t.Columns {
			cols[i] = c.Name
		}
		return watchFunctionSQL(SelfWatchFunction(t), rowsDiffer(unwatched(cols, watched)))
	case len(watched) > 0:
		return watchFunctionSQL(SelfWatchFunction(t), "SELECT true")
	}
	return watchFunctionSQL(SelfWatchFunction(t), "SELECT false")
}

// SourceWatchFunctionSQL creates SourceWatchFunction, from plan.Source.Watch.
func SourceWatchFunctionSQL(s *plan.Source) string {
	_, watched := s.Watch()
	return watchFunctionSQL(SourceWatchFunction(s), rowsDiffer(unwatched(sourceColumns(s), watched)))
}

// rowsDiffer compares two rows without the columns in cut (an array), as jsonb, so that columns
// added later count too.
func rowsDiffer(cut string) string {
	return fmt.Sprintf("SELECT NOT ((pg_catalog.to_jsonb($1) OPERATOR(pg_catalog.-) %[1]s) OPERATOR(pg_catalog.=) (pg_catalog.to_jsonb($2) OPERATOR(pg_catalog.-) %[1]s))", cut)
}

// watchFunctionSQL creates a function for a trigger's WHEN that compares two rows with body.
// Which columns are watched lives here and in the trigger functions, not in the triggers' WHEN,
// which calls it: it changes with what enrichments read, and replacing a function of matcol's
// needs no ownership of the application's table, where replacing a trigger does. PostgreSQL
// inlines it into the WHEN (a plain SQL expression, polymorphic, with every name qualified), so
// no function call runs per row. Taking anyelement rather than the table's row type, it never
// stands in the way of a DROP TABLE.
func watchFunctionSQL(name, body string) string {
	return fmt.Sprintf(`CREATE OR REPLACE FUNCTION matcol.%s(anyelement, anyelement) RETURNS boolean
LANGUAGE sql STABLE AS $matcol$
%s
$matcol$`, ident(name), body)
}

// StaleFunctionSQL queues one marker per statement that left stale rows behind, so the daemon
// learns of them through the queue like any other invalidation. matcol's own writes leave no
// stale row and queue nothing.
func StaleFunctionSQL(t *plan.Target) string {
	return fmt.Sprintf(`CREATE OR REPLACE FUNCTION matcol.%s() RETURNS trigger
LANGUAGE plpgsql AS $matcol$
-- generated by matcol; do not edit
BEGIN
  IF TG_OP = 'UPDATE' THEN
      PERFORM pg_catalog.set_config(%s, '', true);
  END IF;
  PERFORM matcol.enqueue_stale(%d);
  RETURN NULL;
END
$matcol$`, ident(StaleFunction(t)), literal(staleSetting(t)), t.ID)
}

// StaleTriggersSQL returns the statement triggers of a target, by name. After an UPDATE the
// trigger fires only when the self trigger made a row stale, so a target without one has none;
// every INSERT leaves stale rows.
func StaleTriggersSQL(t *plan.Target) map[string]string {
	fn := "matcol." + ident(StaleFunction(t))
	tbl := t.Table.Sanitize()
	out := map[string]string{
		TrigStaleInsert: fmt.Sprintf("CREATE TRIGGER %s AFTER INSERT ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s()", TrigStaleInsert, tbl, fn),
	}
	if selfUpdateTrigger(t, true) && !keyTrigger(t) {
		out[TrigStaleUpdate] = fmt.Sprintf("CREATE TRIGGER %s AFTER UPDATE ON %s FOR EACH STATEMENT WHEN (current_setting(%s, true) = 'on') EXECUTE FUNCTION %s()",
			TrigStaleUpdate, tbl, literal(staleSetting(t)), fn)
	}
	return out
}

// DDLTrigger is the event trigger that tells the daemon a schema or table was created, altered
// or dropped, so that new tenants of a template are picked up at once.
const DDLTrigger = "matcol_ddl"

// SyncDDLTrigger creates the DDL event trigger when want is true and the role may (event
// triggers need a superuser), and drops it otherwise. It reports whether the trigger exists.
// Without it the daemon finds new schemas by its periodic rescan.
func SyncDDLTrigger(ctx context.Context, tx pgx.Tx, want bool) (bool, error) {
	var super, exists bool
	if err := tx.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&super); err != nil {
		return false, fmt.Errorf("read role: %w", err)
	}
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = $1)`, DDLTrigger).Scan(&exists); err != nil {
		return false, fmt.Errorf("read event triggers: %w", err)
	}
	if !super {
		return exists, nil
	}
	if !want {
		if exists {
			if _, err := tx.Exec(ctx, "DROP EVENT TRIGGER IF EXISTS "+ident(DDLTrigger)); err != nil {
				return false, fmt.Errorf("drop event trigger: %w", err)
			}
		}
		return false, nil
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf(`CREATE OR REPLACE FUNCTION matcol.ddl_notify() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $matcol$
-- generated by matcol; do not edit
BEGIN
  PERFORM pg_notify(%s, %s);
END
$matcol$`, literal(listener.Channel), literal(listener.PayloadDDL))); err != nil {
		return false, fmt.Errorf("create event trigger function: %w", err)
	}
	if !exists {
		if _, err := tx.Exec(ctx, `CREATE EVENT TRIGGER `+ident(DDLTrigger)+` ON ddl_command_end
			WHEN TAG IN ('CREATE SCHEMA', 'DROP SCHEMA', 'ALTER SCHEMA', 'CREATE TABLE', 'ALTER TABLE', 'DROP TABLE')
			EXECUTE FUNCTION matcol.ddl_notify()`); err != nil {
			return false, fmt.Errorf("create event trigger: %w", err)
		}
	}
	return true, nil
}
