package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/plan"
)

// partitionTrees reads the partitions of p's partitioned sources and targets, by table OID.
func partitionTrees(ctx context.Context, q discovery.Querier, p *plan.Plan) (map[uint32][]discovery.Attached, error) {
	var roots []uint32
	for _, s := range p.Sources {
		if s.Partitioned() {
			roots = append(roots, s.OID)
		}
	}
	for _, t := range p.Targets {
		if t.Partitioned() && !slices.Contains(roots, t.OID) {
			roots = append(roots, t.OID)
		}
	}
	return discovery.AttachedTrees(ctx, q, roots)
}

// invalidatePartitioned queues "every row" of the targets of each partitioned source whose
// partitions changed between was and now.
func invalidatePartitioned(ctx context.Context, conn *pgx.Conn, p *plan.Plan, was, now map[uint32][]discovery.Attached, log hclog.Logger) error {
	for _, s := range p.Sources {
		parts, ok := now[s.OID]
		before, known := was[s.OID]
		if !ok || !known || slices.Equal(parts, before) {
			// Unknown before: a source new to the plan, whose registration started from every row.
			continue
		}
		var ids []int32
		for _, dep := range s.Deps {
			if !slices.Contains(ids, int32(dep.Target.ID)) {
				ids = append(ids, int32(dep.Target.ID))
			}
		}
		if _, err := conn.Exec(ctx, `SELECT matcol.enqueue_all($1::int[])`, ids); err != nil {
			return fmt.Errorf("invalidate the targets of %s after its partitions changed: %w", s.Table, err)
		}
		log.Info("partitions of a source changed; recomputing every row of its targets", "source", s.Table.String(), "targets", len(ids))
	}
	return nil
}

// queueArrivedRows queues the keys of the rows that came into a partitioned target with a
// partition attached since the last look (a table that holds rows, or one detached and attached
// again, or under a partition that was). Their stamps were earned elsewhere, or before their
// sources changed, and no trigger or WAL record reports them. A partition created empty queues
// nothing; one that took rows since it was created has them queued, and computed once more.
func queueArrivedRows(ctx context.Context, conn *pgx.Conn, p *plan.Plan, was, now map[uint32][]discovery.Attached, log hclog.Logger) error {
	for _, t := range p.Targets {
		parts, ok := now[t.OID]
		before, known := was[t.OID]
		if !ok || !known {
			continue // a target new to the plan: its registration started from every row
		}
		var arrived []uint32
		for _, part := range parts {
			if !slices.Contains(before, part) {
				arrived = append(arrived, part.OID)
			}
		}
		if len(arrived) == 0 {
			continue
		}
		full, err := discovery.FilledPartitions(ctx, conn, arrived)
		if err != nil {
			return fmt.Errorf("read the partitions attached to %s: %w", t.Table, err)
		}
		for _, part := range full {
			n, err := queueKeysWhere(ctx, conn, t, part.Cond)
			if err != nil {
				return fmt.Errorf("queue the rows of partition %s attached to %s: %w", part.Name, t.Table, err)
			}
			log.Info("a partition came into a target with rows; queued their keys", "table", t.Table.String(),
				"partition", part.Name, "rows", n)
		}
	}
	return nil
}

// arrivedChunk is how many keys one statement queues: each commits on its own, so none holds
// a snapshot long, however many rows a partition brings.
const arrivedChunk = 10000

// queueKeysWhere queues, as direct invalidations, the keys of t's rows that satisfy cond (a
// partition's constraint as PostgreSQL renders it, over columns every partition shares with t,
// so that the planner reads only that partition), in key order, a chunk at a time.
func queueKeysWhere(ctx context.Context, conn *pgx.Conn, t *plan.Target, cond string) (int, error) {
	sql, width := plan.NextKeysSQL(t, cond), len(t.Key)
	args := make([]any, width+2)
	args[width], args[width+1] = false, arrivedChunk
	total := 0
	for {
		keys, err := plan.CollectKeys(ctx, conn, sql, width, args...)
		if err != nil {
			return total, err
		}
		n := len(keys[0])
		if n == 0 {
			return total, nil
		}
		vals := make([]string, n)
		row := make([]*string, width)
		for i := range vals {
			for c := range row {
				row[c] = keys[c][i]
			}
			b, _ := json.Marshal(row)
			vals[i] = string(b)
		}
		if _, err := conn.Exec(ctx, plan.RequeueKeysSQL, t.ID, vals); err != nil {
			return total, err
		}
		total += n
		if n < arrivedChunk {
			return total, nil
		}
		for c := range row {
			args[c] = *keys[c][n-1]
		}
		args[width] = true
	}
}

// partitionsKey names the matcol.setting row that keeps the partitions the last rescan saw.
const partitionsKey = "partitions"

// savedPartitions reads the partitions the last rescan of any daemon saw; nil when none did.
func savedPartitions(ctx context.Context, q discovery.Querier) (map[uint32][]discovery.Attached, error) {
	var b []byte
	err := q.QueryRow(ctx, `SELECT value FROM matcol.setting WHERE name = $1`, partitionsKey).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the partitions last seen: %w", err)
	}
	var out map[uint32][]discovery.Attached
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("read the partitions last seen: %w", err)
	}
	return out, nil
}

// savePartitions records parts as the partitions last seen, after what they changed is queued.
func savePartitions(ctx context.Context, conn *pgx.Conn, parts map[uint32][]discovery.Attached) error {
	b, err := json.Marshal(parts)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `INSERT INTO matcol.setting (name, value) VALUES ($1, $2::jsonb)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = now()`, partitionsKey, string(b)); err != nil {
		return fmt.Errorf("record the partitions seen: %w", err)
	}
	return nil
}
