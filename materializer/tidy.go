package materializer

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/plan"
)

// tidySweeps is how many sweeps pass between two tidies: once a minute at the default
// sweep_interval.
const tidySweeps = 12

// tidyChunk bounds each statement of a tidy, and tidyChunks how many one tidy runs of each
// kind: a backlog of leftovers goes over several tidies, in short transactions.
const (
	tidyChunk  = 1000
	tidyChunks = 10
)

// Leftovers whose target is gone from the registry (removed, or a dropped tenant's table), and
// min_interval holds that have passed. Each deletes at most $1 rows.
var tidySQL = []string{
	`DELETE FROM matcol.failure f USING (
		SELECT x.target_id, x.key FROM matcol.failure x
		WHERE NOT EXISTS (SELECT FROM matcol.target t WHERE t.id = x.target_id) LIMIT $1) g
	WHERE f.target_id = g.target_id AND f.key = g.key`,
	`DELETE FROM matcol.debounce d USING (
		SELECT x.target_id, x.key FROM matcol.debounce x
		WHERE x.not_before < now() OR NOT EXISTS (SELECT FROM matcol.target t WHERE t.id = x.target_id) LIMIT $1) g
	WHERE d.target_id = g.target_id AND d.key = g.key`,
}

// tidy removes what no longer belongs to anything: failure records and min_interval holds of
// targets gone from the registry, holds that have passed, and failure records of rows deleted
// since they failed. Without it both tables only grow.
func (m *Materializer) tidy(ctx context.Context) error {
	for _, sql := range tidySQL {
		for i := 0; i < tidyChunks; i++ {
			tag, err := m.control().Exec(ctx, sql, tidyChunk)
			if err != nil {
				return err
			}
			if tag.RowsAffected() < tidyChunk {
				break
			}
		}
	}
	rows, err := m.control().Query(ctx, `SELECT DISTINCT target_id FROM matcol.failure`)
	if err != nil {
		return err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return err
	}
	for _, id := range ids {
		m.mu.Lock()
		t := m.byID[int(id)]
		m.mu.Unlock()
		if t == nil {
			continue // another instance's plan, or not yet this one's
		}
		sql := plan.OrphanFailuresSQL(t.plan)
		for i := 0; i < tidyChunks; i++ {
			var n int
			if err := m.control().QueryRow(dial.Touching(ctx, t.plan.Relations()), sql, id, tidyChunk).Scan(&n); err != nil {
				return fmt.Errorf("failures of deleted rows of %s: %w", t.plan.Table, err)
			}
			if n < tidyChunk {
				break
			}
		}
	}
	return nil
}
