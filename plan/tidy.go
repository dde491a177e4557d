package plan

import (
	"fmt"
	"strings"
)

// OrphanFailuresSQL deletes at most $2 failure records of target $1 (t) whose row no longer
// exists, and returns how many it deleted.
func OrphanFailuresSQL(t *Target) string {
	match := make([]string, len(t.Key))
	for i, k := range t.Key {
		match[i] = fmt.Sprintf("%s.%s = g.key[%d]::%s", aliasTarget, ident(k.Name), i+1, k.Type)
	}
	return fmt.Sprintf(`WITH g AS (
	SELECT g.key FROM matcol.failure g
	WHERE g.target_id = $1 AND NOT EXISTS (SELECT FROM %s AS %s WHERE %s)
	LIMIT $2),
d AS (DELETE FROM matcol.failure f USING g WHERE f.target_id = $1 AND f.key = g.key RETURNING 1)
SELECT count(*) FROM d`, t.Table.Sanitize(), aliasTarget, strings.Join(match, " AND "))
}
