package plan

import (
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/discovery"
)

// OwnWriteSetting is set locally in matcol's batches, which write only matcol's columns, so that
// the self trigger skips them: its check costs more per row than the rest of the write.
const OwnWriteSetting = "matcol.own_write"

func ident(s string) string { return pgx.Identifier{s}.Sanitize() }

// Aliases inside generated statements. They contain spaces so that they cannot shadow a table
// that an enrichment's SQL names.
const (
	aliasTarget = `"matcol t"`
	aliasKeys   = `"matcol k"`
	aliasLocked = `"matcol l"`
	aliasDone   = `"matcol u"`
	aliasSource = `"matcol s"`
	aliasSeen   = `"matcol seen"`
)

func enrichAlias(i int) string { return fmt.Sprintf(`"matcol e%d"`, i) }

// keyArrayParams returns "$1::int8[], $2::text[]" for the key columns.
func keyArrayParams(key []discovery.Column, first int) string {
	parts := make([]string, len(key))
	for i, k := range key {
		parts[i] = fmt.Sprintf("$%d::%s[]", first+i, k.Type)
	}
	return strings.Join(parts, ", ")
}

func keyMatch(key []discovery.Column, a, b string) string {
	parts := make([]string, len(key))
	for i, k := range key {
		parts[i] = fmt.Sprintf("%s.%s = %s.%s", a, ident(k.Name), b, ident(k.Name))
	}
	return strings.Join(parts, " AND ")
}

func keyCols(key []discovery.Column, alias string) string {
	return keyList(key, alias+".")
}

func trimSQL(s string) string {
	return strings.TrimRight(strings.TrimSpace(s), "; \t\n")
}

// ClaimSQL locks up to $1 stale rows of t that nobody else holds and returns their keys as text.
// Rows quarantined after a failure ($2 is the target id) wait for their next attempt. It is the
// first statement of a batch; the write comes in a later statement, whose snapshot then sees every
// change committed before the locks were taken (DESIGN invariant 2).
func ClaimSQL(t *Target) string {
	cond := notQuarantined(t, "$2")
	if t.MinInterval() > 0 {
		cond += fmt.Sprintf(" AND NOT EXISTS (SELECT FROM matcol.debounce d WHERE d.target_id = $2 AND d.key = %s AND d.not_before > now())",
			KeyTextArray(t.Key, aliasTarget))
	}
	return fmt.Sprintf("SELECT %s FROM %s AS %s WHERE %s.materialized_at IS NULL AND %s LIMIT $1 FOR NO KEY UPDATE OF %s SKIP LOCKED",
		keyTexts(t.Key, aliasTarget), t.Table.Sanitize(), aliasTarget, aliasTarget, cond, aliasTarget)
}

// MinInterval is the longest min_interval among the table's enrichments: a batch recomputes a
// row for all of them at once, so the strictest holds.
func (t *Target) MinInterval() time.Duration {
	var d time.Duration
	for _, e := range t.Enrichments {
		d = max(d, e.Settings.MinInterval)
	}
	return d
}

// DebounceSQL holds back the keys in $3..$n+2 (text arrays) of target $1 for the interval $2:
// until then the claim passes over them.
func DebounceSQL(t *Target) string {
	params, names := textKeyParams(t, 3)
	return fmt.Sprintf(`INSERT INTO matcol.debounce (target_id, key, not_before)
		SELECT $1, ARRAY[%s], now() + $2::interval FROM unnest(%s) AS u(%s)
		ON CONFLICT (target_id, key) DO UPDATE SET not_before = excluded.not_before`,
		strings.Join(names, ", "), params, strings.Join(names, ", "))
}

// NextDueSQL returns the seconds, by the server's clock, until the first stale row of target $1
// that min_interval holds back comes due; NULL when there is none.
func NextDueSQL(t *Target) string {
	match := make([]string, len(t.Key))
	for i, k := range t.Key {
		match[i] = fmt.Sprintf("%s.%s = d.key[%d]::%s", aliasTarget, ident(k.Name), i+1, k.Type)
	}
	return fmt.Sprintf(`SELECT extract(epoch FROM min(d.not_before) - clock_timestamp())::float8
		FROM matcol.debounce d JOIN %s AS %s ON %s
		WHERE d.target_id = $1 AND d.not_before > now() AND %s.materialized_at IS NULL`,
		t.Table.Sanitize(), aliasTarget, strings.Join(match, " AND "), aliasTarget)
}

// textKeyParams returns unnest's parameters, text arrays from $first on, and its column names.
func textKeyParams(t *Target, first int) (string, []string) {
	params := make([]string, len(t.Key))
	names := make([]string, len(t.Key))
	for i := range t.Key {
		params[i] = fmt.Sprintf("$%d::text[]", first+i)
		names[i] = fmt.Sprintf("c%d", i)
	}
	return strings.Join(params, ", "), names
}

// ClaimKeysSQL is ClaimSQL restricted to the keys in $2..$n+1 (typed arrays), for retrying parts
// of a failed batch.
func ClaimKeysSQL(t *Target) string {
	return fmt.Sprintf("SELECT %s FROM %s AS %s JOIN unnest(%s) AS %s(%s) ON %s WHERE %s.materialized_at IS NULL FOR NO KEY UPDATE OF %s SKIP LOCKED",
		keyTexts(t.Key, aliasTarget), t.Table.Sanitize(), aliasTarget, keyArrayParams(t.Key, 1), aliasKeys, keyList(t.Key, ""),
		keyMatch(t.Key, aliasTarget, aliasKeys), aliasTarget, aliasTarget)
}

func keyTexts(key []discovery.Column, alias string) string {
	texts := make([]string, len(key))
	for i, k := range key {
		texts[i] = alias + "." + ident(k.Name) + "::text"
	}
	return strings.Join(texts, ", ")
}

// KeyTextArray renders ARRAY[k1::text, …] for the row alias, the form matcol.failure stores.
func KeyTextArray(key []discovery.Column, alias string) string {
	return "ARRAY[" + keyTexts(key, alias) + "]"
}

func notQuarantined(t *Target, idParam string) string {
	return fmt.Sprintf("NOT EXISTS (SELECT FROM matcol.failure f WHERE f.target_id = %s AND f.key = %s AND f.next_attempt_at > now())",
		idParam, KeyTextArray(t.Key, aliasTarget))
}

// MarkStaleSQL sets stale the rows whose keys are in $1..$n (typed arrays).
func MarkStaleSQL(t *Target) string {
	return fmt.Sprintf("UPDATE %s AS %s SET materialized_at = NULL FROM unnest(%s) AS %s(%s) WHERE %s",
		t.Table.Sanitize(), aliasTarget, keyArrayParams(t.Key, 1), aliasKeys, keyList(t.Key, ""), keyMatch(t.Key, aliasTarget, aliasKeys))
}

// ClearFailuresSQL deletes the failure records of the keys in $2..$n+1 (text arrays) of target $1.
func ClearFailuresSQL(t *Target) string {
	params, names := textKeyParams(t, 2)
	cols := make([]string, len(names))
	for i, n := range names {
		cols[i] = "u." + n
	}
	return fmt.Sprintf("DELETE FROM matcol.failure f USING unnest(%s) AS u(%s) WHERE f.target_id = $1 AND f.key = ARRAY[%s]",
		params, strings.Join(names, ", "), strings.Join(cols, ", "))
}

// KeysWithStampSQL returns the given keys ($1..$n, typed arrays) that still exist, as text, with
// each row's materialized_at last.
func KeysWithStampSQL(t *Target) string {
	return fmt.Sprintf("SELECT %s, %s.materialized_at::text FROM %s AS %s JOIN unnest(%s) AS %s(%s) ON %s ORDER BY %s",
		keyTexts(t.Key, aliasTarget), aliasTarget, t.Table.Sanitize(), aliasTarget, keyArrayParams(t.Key, 1), aliasKeys,
		keyList(t.Key, ""), keyMatch(t.Key, aliasTarget, aliasKeys), keyCols(t.Key, aliasTarget))
}

// NextKeysSQL returns, in key order, the keys after the cursor ($1..$n as text, or all rows when
// $n+1 is false), at most $n+2 of them. Apply's sample, verify and whole-table invalidation walk
// the table with it, and the daemon the rows a partition brings into a target.
func NextKeysSQL(t *Target, where string) string {
	cursor := make([]string, len(t.Key))
	for i, k := range t.Key {
		cursor[i] = fmt.Sprintf("$%d::%s", i+1, k.Type)
	}
	n := len(t.Key)
	// Qualified names throughout: a bare name in ORDER BY would sort by the text output column.
	cond := fmt.Sprintf("(NOT $%d::bool OR (%s) > (%s))", n+1, keyCols(t.Key, aliasTarget), strings.Join(cursor, ", "))
	if strings.TrimSpace(where) != "" {
		cond += " AND (" + where + ")"
	}
	return fmt.Sprintf("SELECT %s FROM %s AS %s WHERE %s ORDER BY %s LIMIT $%d",
		keyTexts(t.Key, aliasTarget), t.Table.Sanitize(), aliasTarget, cond, keyCols(t.Key, aliasTarget), n+2)
}

// WriteSQL computes enrichments for the keys in $1..$n (typed arrays) and writes their columns in
// one statement. With stamp it also sets materialized_at = now(): now() is the transaction start,
// before this statement's snapshot, so the stamp never claims more freshness than the data has.
// A key missing from an enrichment's output gets NULLs; a key returned twice raises.
func WriteSQL(t *Target, es []*Enrichment, stamp bool) string {
	return writeSQL(t, es, stamp, false)
}

// BackfillWriteSQL writes the enrichments' columns for the keys in $1..$n without locking them
// first: $n+1 holds each row's materialized_at as the key read saw it, and a row whose stamp has
// changed since (a batch recomputed it, or it went stale) is left alone, even when the UPDATE had
// to wait for it and re-checks the newer row version. So an older snapshot's value never lands on
// a row stamped fresh. Its row count says how many rows it wrote.
func BackfillWriteSQL(t *Target, es []*Enrichment) string {
	return writeSQL(t, es, false, true)
}

// PassWriteSQL is WriteSQL for a pass over every row (a whole-table invalidation): a row that
// was fresh and whose computed values equal its stored ones is left as it is, stamp included,
// which spares a write per unchanged row; its stamp then claims less freshness than it could,
// never more. Where a column's type has no equality operator in pg_catalog (Target.Comparable
// is false) every row is written.
func PassWriteSQL(t *Target) string {
	sql := writeSQL(t, t.Enrichments, true, false)
	if !t.Comparable {
		return sql
	}
	return sql + fmt.Sprintf("\n  AND (%s.materialized_at IS NULL OR NOT (%s))", aliasTarget, sameValues(t.Enrichments))
}

func writeSQL(t *Target, es []*Enrichment, stamp, checkStamp bool) string {
	params, names := keyArrayParams(t.Key, 1), keyList(t.Key, "")
	if checkStamp {
		params += fmt.Sprintf(", $%d::timestamptz[]", len(t.Key)+1)
		names += ", " + aliasSeen
	}
	sqls := make([]string, len(es))
	for i, e := range es {
		sqls[i] = trimSQL(e.SQL)
	}
	keys := fmt.Sprintf("unnest(%s) AS %s(%s)", params, aliasKeys, names)
	cte, update := joinAndUpdate(t, es, sqls, keys, fmt.Sprintf("cardinality($1::%s[])", t.Key[0].Type), stamp, checkStamp)
	return "WITH " + cte + "\n" + update
}

// joinAndUpdate renders the write of a batch whose keys come from keys, a FROM item aliased
// "matcol k" with the key columns (and "matcol seen", each row's stamp as read, with
// checkStamp), count of them: the materialized CTE "matcol s" that joins the keys once to each
// enrichment's output (sqls, the enrichments' SQL as it is to run), and the UPDATE of the target
// from it. The CTE has one row per key unless an enrichment returned a key twice, which the count
// catches before any row is written: a plain UPDATE … FROM would silently take either value.
// Otherwise it is what a set-based UPDATE does.
func joinAndUpdate(t *Target, es []*Enrichment, sqls []string, keys, count string, stamp, checkStamp bool) (cte, update string) {
	cols := []string{keyList(t.Key, aliasKeys+".")}
	if checkStamp {
		cols = append(cols, aliasKeys+"."+aliasSeen)
	}
	var sets []string
	names := make([]string, len(es))
	for i, e := range es {
		names[i] = e.Name
		for _, c := range e.Columns {
			cols = append(cols, enrichAlias(i)+"."+ident(c))
			sets = append(sets, fmt.Sprintf("%s = %s.%s", ident(c), aliasSource, ident(c)))
		}
	}
	if stamp {
		sets = append(sets, "materialized_at = now()")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s AS MATERIALIZED (\nSELECT %s\nFROM %s", aliasSource, strings.Join(cols, ", "), keys)
	for i, sql := range sqls {
		fmt.Fprintf(&b, "\nLEFT JOIN (\n%s\n) AS %s ON %s", sql, enrichAlias(i), keyMatch(t.Key, enrichAlias(i), aliasKeys))
	}
	// The LIMIT never cuts a correct result (one row per key) and keeps a duplicate visible to the
	// count, but it caps the planner's guess of the join's size: that guess is otherwise many times
	// the batch, and leads it to hash the whole target table.
	fmt.Fprintf(&b, "\nLIMIT %s + 1\n)", count)
	cond := keyMatch(t.Key, aliasTarget, aliasSource)
	if checkStamp {
		// A row whose stamp changed since the keys were read is left alone, even when the UPDATE
		// waited for it and rechecks the newer version.
		cond += fmt.Sprintf(" AND %s.materialized_at IS NOT DISTINCT FROM %s.%s", aliasTarget, aliasSource, aliasSeen)
	}
	msg := fmt.Sprintf("enrichment %s returned a key more than once: ", strings.Join(names, " or "))
	update = fmt.Sprintf(`UPDATE %s AS %s SET %s
FROM %s WHERE %s
  AND (SELECT CASE WHEN count(*) = %s THEN true ELSE matcol.raise(%s || (SELECT %s FROM %s GROUP BY %s HAVING count(*) > 1 LIMIT 1)) END FROM %s)`,
		t.Table.Sanitize(), aliasTarget, strings.Join(sets, ", "), aliasSource, cond,
		count, quoteLiteral(msg), rowText(t.Key), aliasSource, keyList(t.Key, ""), aliasSource)
	return b.String(), update
}

func rowText(key []discovery.Column) string {
	parts := make([]string, len(key))
	for i, k := range key {
		parts[i] = fmt.Sprintf("coalesce(%s::text, 'NULL')", ident(k.Name))
	}
	return "'(' || " + strings.Join(parts, " || ', ' || ") + " || ')'"
}

// quoteLiteral quotes s as an SQL string literal for generated code.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// invalidateTail locks the rows of t named by keysCTE without waiting, sets stale those that are
// not yet, and returns the keys that exist but were locked by someone else, for a later retry: a
// batch may hold such a row, with a snapshot older than the change. A stale row nobody holds is
// left as it is, which spares a write; the batch that claims it takes a newer snapshot.
func invalidateTail(t *Target, keysCTE string) string {
	return fmt.Sprintf(`WITH %s AS (%s),
%s AS (SELECT %s FROM %s AS %s JOIN %s ON %s ORDER BY %s FOR NO KEY UPDATE OF %s SKIP LOCKED),
%s AS (UPDATE %s AS %s SET materialized_at = NULL FROM %s WHERE %s AND %s.materialized_at IS NOT NULL)
SELECT jsonb_build_array(%s)::text FROM %s
WHERE NOT EXISTS (SELECT FROM %s WHERE %s)
  AND EXISTS (SELECT FROM %s AS %s WHERE %s)`,
		aliasKeys, keysCTE,
		aliasLocked, keyCols(t.Key, aliasTarget), t.Table.Sanitize(), aliasTarget, aliasKeys,
		keyMatch(t.Key, aliasTarget, aliasKeys), keyCols(t.Key, aliasTarget), aliasTarget,
		aliasDone, t.Table.Sanitize(), aliasTarget, aliasLocked, keyMatch(t.Key, aliasTarget, aliasLocked), aliasTarget,
		keyCols(t.Key, aliasKeys), aliasKeys,
		aliasLocked, keyMatch(t.Key, aliasLocked, aliasKeys),
		t.Table.Sanitize(), aliasTarget, keyMatch(t.Key, aliasTarget, aliasKeys))
}

// InvalidateKeysSQL sets stale the rows whose keys are in $1 (JSON arrays of key values, as text).
func InvalidateKeysSQL(t *Target) string {
	casts := make([]string, len(t.Key))
	for i, k := range t.Key {
		casts[i] = fmt.Sprintf("(s::jsonb->>%d)::%s AS %s", i, k.Type, ident(k.Name))
	}
	keys := fmt.Sprintf("SELECT DISTINCT %s FROM unnest($1::text[]) AS s", strings.Join(casts, ", "))
	return invalidateTail(t, keys)
}

// InvalidateMappedSQL sets stale the rows that d's sql maps the source values ($1..$n) to.
func InvalidateMappedSQL(d *Dep) string {
	keys := fmt.Sprintf("SELECT DISTINCT * FROM (\n%s\n) AS m(%s)", trimSQL(d.SQL), keyList(d.Target.Key, ""))
	return invalidateTail(d.Target, keys)
}

// WalkClaimSQL locks, in key order, up to $n+2 rows of t after the cursor ($1..$n as text, used
// when $n+1 is true), passing over rows someone else holds, and returns their keys as text: a
// chunk of a pass over every row.
func WalkClaimSQL(t *Target) string {
	return NextKeysSQL(t, "") + " FOR NO KEY UPDATE OF " + aliasTarget + " SKIP LOCKED"
}

// ExpiredClaimSQL locks up to $2 rows of t stamped longer than $1 (an interval) ago, oldest
// first, passing over rows someone else holds, and returns their keys as text.
func ExpiredClaimSQL(t *Target) string {
	return fmt.Sprintf("SELECT %s FROM %s AS %s WHERE %s.materialized_at < now() - $1::interval ORDER BY %s.materialized_at LIMIT $2 FOR NO KEY UPDATE OF %s SKIP LOCKED",
		keyTexts(t.Key, aliasTarget), t.Table.Sanitize(), aliasTarget, aliasTarget, aliasTarget, aliasTarget)
}

// RangeCountSQL counts the rows of t in the range (see rangeCond).
func RangeCountSQL(t *Target) string {
	return fmt.Sprintf("SELECT count(*) FROM %s AS %s WHERE %s", t.Table.Sanitize(), aliasTarget, rangeCond(t, aliasTarget, ""))
}

// RequeueKeysSQL queues the keys in $2 (JSON arrays of key values, as text) of target $1 as
// direct invalidations: rows a pass could not take, rows a partition brought in.
const RequeueKeysSQL = `INSERT INTO matcol.pending (target_id, vals) SELECT $1, v::jsonb FROM unnest($2::text[]) AS v`

// ArrayLiteral renders values as a PostgreSQL array literal ({"a","b",NULL}), for parameters whose
// element type only the server knows. Every element is quoted, so any type's text form fits.
func ArrayLiteral(vals []*string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, v := range vals {
		if i > 0 {
			b.WriteByte(',')
		}
		if v == nil {
			b.WriteString("NULL")
			continue
		}
		b.WriteByte('"')
		for _, r := range *v {
			if r == '"' || r == '\\' {
				b.WriteByte('\\')
			}
			b.WriteRune(r)
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// rangeCond limits rows of alias to keys in (lower, upper], each bound used when its flag is
// true: $1..$n the lower bound and $n+1 its flag, $n+2..$2n+1 the upper bound and $2n+2 its flag
// (bounds as text), plus the backfill's --where.
func rangeCond(t *Target, alias, where string) string {
	n := len(t.Key)
	bound := func(first int) string {
		parts := make([]string, n)
		for i, k := range t.Key {
			parts[i] = fmt.Sprintf("$%d::%s", first+i, k.Type)
		}
		return strings.Join(parts, ", ")
	}
	keys := keyCols(t.Key, alias)
	cond := fmt.Sprintf("(NOT $%d::bool OR (%s) > (%s)) AND (NOT $%d::bool OR (%s) <= (%s))",
		n+1, keys, bound(1), 2*n+2, keys, bound(n+2))
	if strings.TrimSpace(where) != "" {
		cond += " AND (" + where + ")"
	}
	return cond
}

// RangeKeysSQL returns, in key order, the keys in the range (see rangeCond) as text with each
// row's materialized_at last, at most $2n+3 of them (NULL: all).
func RangeKeysSQL(t *Target, where string) string {
	return fmt.Sprintf("SELECT %s, %s.materialized_at::text FROM %s AS %s WHERE %s ORDER BY %s LIMIT $%d",
		keyTexts(t.Key, aliasTarget), aliasTarget, t.Table.Sanitize(), aliasTarget, rangeCond(t, aliasTarget, where),
		keyCols(t.Key, aliasTarget), 2*len(t.Key)+3)
}

// RangeEndSQL returns how many keys the range holds, at most $2n+3, and the last of them as
// text: the bounds of a parallel backfill's next chunk.
func RangeEndSQL(t *Target, where string) string {
	desc := keyListDesc(t.Key, "x.")
	return fmt.Sprintf("SELECT count(*) OVER ()::int, %s FROM (SELECT %s FROM %s AS %s WHERE %s ORDER BY %s LIMIT $%d) AS x ORDER BY %s LIMIT 1",
		keyTexts(t.Key, "x"), keyCols(t.Key, aliasTarget), t.Table.Sanitize(), aliasTarget, rangeCond(t, aliasTarget, where),
		keyCols(t.Key, aliasTarget), 2*len(t.Key)+3, desc)
}

// NotWrittenSQL returns, as text, the keys in the range (see rangeCond) whose row this
// transaction has not written: rows a backfill step skipped because they changed under it. At
// most $2n+3 (NULL: all).
func NotWrittenSQL(t *Target, where string) string {
	return fmt.Sprintf("SELECT %s FROM %s AS %s WHERE %s AND %s.xmin <> pg_current_xact_id()::xid ORDER BY %s LIMIT $%d",
		keyTexts(t.Key, aliasTarget), t.Table.Sanitize(), aliasTarget, rangeCond(t, aliasTarget, where), aliasTarget,
		keyCols(t.Key, aliasTarget), 2*len(t.Key)+3)
}

// BackfillStepSQL is a whole backfill batch in one statement: it reads the keys of the range
// (see rangeCond; at most $2n+3 of them, NULL for all) with their stamps, runs the enrichments
// over them with their $1..$n bound to those keys, and writes rows whose stamp has not changed
// meanwhile, as BackfillWriteSQL does. Keys never travel to matcol and back. It returns how many
// keys it read, how many rows it wrote, and the last key as text.
func BackfillStepSQL(t *Target, es []*Enrichment, where string) (string, error) {
	return stepSQL(t, es, where, false)
}

// PassStepSQL is a chunk of a pass over every row (a whole-table invalidation) in one
// statement, as BackfillStepSQL is a backfill batch, over every enrichment of t. It locks
// nothing: it writes, and stamps, only rows that were fresh when read, whose stamp has not
// changed since (an invalidation that lands meanwhile wins), and whose values differ from the
// fresh computation (where Target.Comparable). Rows read stale are the caller's to queue.
func PassStepSQL(t *Target) (string, error) { return stepSQL(t, t.Enrichments, "", true) }

func stepSQL(t *Target, es []*Enrichment, where string, pass bool) (string, error) {
	order := keyList(t.Key, aliasKeys+".")
	arrays := make([]string, len(t.Key))
	for i, k := range t.Key {
		arrays[i] = fmt.Sprintf("(SELECT array_agg(%s.%s ORDER BY %s) FROM %s)::%s[]", aliasKeys, ident(k.Name), order, aliasKeys, k.Type)
	}
	sqls := make([]string, len(es))
	for i, e := range es {
		sql, err := ReplaceParams(trimSQL(e.SQL), arrays)
		if err != nil {
			return "", fmt.Errorf("enrichment %s: %w", e.Name, err)
		}
		sqls[i] = sql
	}
	count := "(SELECT count(*) FROM " + aliasKeys + ")"
	cte, update := joinAndUpdate(t, es, sqls, aliasKeys, count, pass, true)
	if pass {
		update += fmt.Sprintf("\n  AND %s.%s IS NOT NULL", aliasSource, aliasSeen)
		if t.Comparable {
			update += fmt.Sprintf("\n  AND NOT (%s)", sameValues(es))
		}
	}
	return fmt.Sprintf(`WITH %s AS MATERIALIZED (
SELECT %s, %s.materialized_at AS %s FROM %s AS %s WHERE %s ORDER BY %s LIMIT $%d
),
%s,
"matcol w" AS (%s
RETURNING 1)
SELECT %s::int, (SELECT count(*) FROM "matcol w")::int, %s
FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT %s FROM %s ORDER BY %s LIMIT 1) AS "matcol last" ON true`,
		aliasKeys, keyCols(t.Key, aliasTarget), aliasTarget, aliasSeen, t.Table.Sanitize(), aliasTarget,
		rangeCond(t, aliasTarget, where), keyCols(t.Key, aliasTarget), 2*len(t.Key)+3,
		cte, update,
		count, keyTexts(t.Key, `"matcol last"`), order, aliasKeys, keyListDesc(t.Key, aliasKeys+".")), nil
}

// sameValues is true when every column of es holds, in the target row, what the fresh
// computation gives (NULLs equal), compared with pg_catalog's equality operators.
func sameValues(es []*Enrichment) string {
	var same []string
	for _, e := range es {
		for _, c := range e.Columns {
			a, b := aliasTarget+"."+ident(c), aliasSource+"."+ident(c)
			same = append(same, fmt.Sprintf("coalesce(%s OPERATOR(pg_catalog.=) %s, %s IS NULL AND %s IS NULL)", a, b, a, b))
		}
	}
	return strings.Join(same, " AND ")
}

// RangeStaleKeysSQL returns, as text, the keys of the stale rows in the range (see rangeCond).
func RangeStaleKeysSQL(t *Target) string {
	return fmt.Sprintf("SELECT %s FROM %s AS %s WHERE %s AND %s.materialized_at IS NULL",
		keyTexts(t.Key, aliasTarget), t.Table.Sanitize(), aliasTarget, rangeCond(t, aliasTarget, ""), aliasTarget)
}

func keyListDesc(key []discovery.Column, prefix string) string {
	parts := make([]string, len(key))
	for i, k := range key {
		parts[i] = prefix + ident(k.Name) + " DESC"
	}
	return strings.Join(parts, ", ")
}

// DirectEntrySQL picks matcol.pending's direct entries (target keys): the predicate of its index
// pending_direct (migration 0011), which the planner uses only for queries that spell it out.
const DirectEntrySQL = "dependency_id IS NULL AND vals IS NOT NULL AND vals <> '[]'::jsonb"

// QueueTakeSQL takes up to $2 direct invalidations (target keys) of target $1 from the queue,
// locks the rows they name without waiting, and returns one row per distinct key: "l" for a row
// it locked, with the earliest enqueued_at of its entries, and "r" for a row that exists but
// someone else holds, to queue again; and one "m" row when another entry waits beyond them (it
// picks one more than it takes and leaves that one queued, locked until the batch ends, so that
// the worker knows without a second take whether to go on). The write comes in a later
// statement, whose snapshot sees every change committed before the locks were taken, including
// the changes the taken entries announce (committed before this statement's snapshot). The
// queue's statistics say little about how many entries wait: nothing here joins two of its CTEs
// by a nested loop.
//
// With $3 workers sharing the table, a take of the last entries leaves the others a share: when
// fewer than $3 batches of entries wait, it takes its share of them (all of them below two
// SplitMin, at least SplitMin), so that the burst's last batches end together rather than one
// running alone while the others find nothing. The count sees entries other batches have taken
// but not committed, so that each takes a share of the whole; $4 of those are likely computed
// already (the caller's estimate from its batches' progress), and count as done. The "m" row
// carries the size it took in its first key column.
func QueueTakeSQL(t *Target) string {
	casts := make([]string, len(t.Key))
	for i, k := range t.Key {
		casts[i] = fmt.Sprintf("(e.vals->>%d)::%s AS %s", i, k.Type, ident(k.Name))
	}
	// The entries are picked once, in a CTE of their own, and deleted by ctid: the queue's
	// statistics are often those of an empty queue (autovacuum ran after it drained), and with
	// them the planner joined the picked ids to the whole queue, a scan of every entry per batch.
	// A TID scan does not depend on them. The picked rows are locked, so their ctids hold.
	return fmt.Sprintf(`WITH k AS (
  SELECT CASE WHEN $3::int4 > 1 THEN (
    SELECT CASE WHEN c.n >= $2::int8 * $3 THEN $2
      WHEN c.n - $4::int8 < `+fmt.Sprint(2*SplitMin)+` THEN least($2, c.n)
      ELSE least($2, greatest((c.n - $4 + $3 - 1) / $3, `+fmt.Sprint(SplitMin)+`)) END
    FROM (SELECT count(*) AS n FROM (SELECT FROM matcol.pending
          WHERE target_id = $1 AND `+DirectEntrySQL+`
          ORDER BY target_id, id LIMIT $2::int8 * $3) s) c)
  ELSE $2 END AS k),
p AS MATERIALIZED (
  SELECT ctid FROM matcol.pending
  WHERE target_id = $1 AND `+DirectEntrySQL+`
  ORDER BY target_id, id LIMIT (SELECT k.k + least(k.k, 1) FROM k) FOR UPDATE SKIP LOCKED),
e AS (
  DELETE FROM matcol.pending d WHERE d.ctid = ANY (ARRAY(SELECT ctid FROM p LIMIT (SELECT k.k FROM k)))
  RETURNING d.vals, d.enqueued_at),
%s AS (SELECT %s, min(e.enqueued_at) AS at FROM e GROUP BY %s),
%s AS (SELECT %s, %s.at FROM %s AS %s JOIN %s ON %s ORDER BY %s FOR NO KEY UPDATE OF %s SKIP LOCKED)
SELECT 'l', %s.at, %s FROM %s
UNION ALL
SELECT 'r', %s.at, %s FROM %s
WHERE (%s) NOT IN (SELECT %s FROM %s) AND EXISTS (SELECT FROM %s AS %s WHERE %s)
UNION ALL
SELECT 'm', now(), %s WHERE (SELECT count(*) FROM p) > (SELECT k.k FROM k)`,
		aliasKeys, strings.Join(casts, ", "), keyList(t.Key, ""),
		aliasLocked, keyCols(t.Key, aliasTarget), aliasKeys, t.Table.Sanitize(), aliasTarget, aliasKeys,
		keyMatch(t.Key, aliasTarget, aliasKeys), keyCols(t.Key, aliasTarget), aliasTarget,
		aliasLocked, keyTexts(t.Key, aliasLocked), aliasLocked,
		aliasKeys, keyTexts(t.Key, aliasKeys), aliasKeys,
		keyCols(t.Key, aliasKeys), keyList(t.Key, ""), aliasLocked, t.Table.Sanitize(), aliasTarget, keyMatch(t.Key, aliasTarget, aliasKeys),
		strings.TrimSuffix("(SELECT k.k FROM k)::pg_catalog.text, "+strings.Repeat("NULL::pg_catalog.text, ", len(t.Key)-1), ", "))
}

// SplitMin is the smallest share a take splits off (QueueTakeSQL): at 0.1% of the catch-up
// benchmark's rows, two cold batches of 100 took longer than one of 200.
const SplitMin = 250
