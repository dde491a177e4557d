package materializer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/plan"
)

// Direct invalidations, entries whose values are target keys, are the workers' own: a queue batch
// takes a table's entries, locks their rows, computes and stamps them in the next statement, and
// deletes the entries in the same transaction, so a row is written once and never set stale
// first. The drainer takes the rest (mapped entries, markers), and tells the workers which tables
// have direct entries waiting.

// directTargetsSQL lists the tables that have direct entries waiting, one index probe each (a
// loose scan of pending_direct), however many entries wait, and whether more wait than one batch
// takes alone: more than a batch, or than two of the shares a take leaves another worker
// (plan.SplitMin). The tables' batch sizes come as arrays $1 (ids) and $2 (sizes), $3 for the
// others. That probe reads at most that many index entries, and only for a table whose workers
// were not already told of a backlog ($4).
var directTargetsSQL = `WITH RECURSIVE d AS (
	(SELECT target_id FROM matcol.pending WHERE ` + plan.DirectEntrySQL + `
	 ORDER BY target_id LIMIT 1)
	UNION ALL
	SELECT (SELECT p.target_id FROM matcol.pending p
	        WHERE ` + plan.DirectEntrySQL + ` AND p.target_id > d.target_id
	        ORDER BY p.target_id LIMIT 1)
	FROM d WHERE d.target_id IS NOT NULL)
SELECT d.target_id, d.target_id <> ALL (coalesce($4::int4[], '{}')) AND (SELECT p.id FROM matcol.pending p
	WHERE ` + plan.DirectEntrySQL + ` AND p.target_id = d.target_id
	ORDER BY p.target_id, p.id OFFSET least(coalesce(s.size, $3), ` + strconv.Itoa(2*plan.SplitMin) + `) LIMIT 1) IS NOT NULL
FROM d LEFT JOIN unnest($1::int4[], $2::int4[]) AS s (id, size) ON s.id = d.target_id
WHERE d.target_id IS NOT NULL`

// drainableSQL says whether entries the drainer takes wait (mapped entries and markers; the
// pending_drain index's predicate). The first entry in id order, which pending_drain gives; as
// EXISTS, whose ORDER BY PostgreSQL drops, it scanned the queue for a first match, reading every
// queued key when none matched, several times a second under a writer's load.
const drainableSQL = `SELECT (SELECT id FROM matcol.pending WHERE dependency_id IS NOT NULL OR vals = '[]'::jsonb ORDER BY id LIMIT 1) IS NOT NULL`

// noteDirect marks the tables with direct entries waiting, for the workers, and returns how many
// tables have some and, read in the same round trip, whether entries for the drainer wait.
//
// A table with such a backlog gets as many workers as its cap allows at once (see next), rather
// than a second one only after the first batch's take has seen the rest: on a cold backend that
// take alone ran 12-41 ms of a 1% burst's 105-240 ms.
func (m *Materializer) noteDirect(ctx context.Context) (n int, drainable bool, err error) {
	type waiting struct {
		id      int32
		backlog bool
	}
	var found []waiting
	ids, sizes, told := m.batchSizes()
	b := &pgx.Batch{}
	b.Queue(directTargetsSQL, ids, sizes, int32(m.cfg.BatchSize), told).Query(func(rows pgx.Rows) error {
		found, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (waiting, error) {
			var w waiting
			return w, row.Scan(&w.id, &w.backlog)
		})
		return err
	})
	b.Queue(drainableSQL).QueryRow(func(row pgx.Row) error { return row.Scan(&drainable) })
	if err := m.control().SendBatch(ctx, b).Close(); err != nil {
		return 0, false, fmt.Errorf("read tables with queued keys: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	for _, w := range found {
		if t := m.byID[int(w.id)]; t != nil && m.directOnLocked(t, now) {
			t.direct = true
			if w.backlog {
				m.setMoreLocked(t, true)
			}
			m.nudgeLocked(t)
		}
	}
	return len(found), drainable, nil
}

// batchSizes returns each table's batch size, and the tables already known to have a backlog of
// direct entries.
func (m *Materializer) batchSizes() (ids, sizes, told []int32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	told = []int32{}
	for id, t := range m.byID {
		ids = append(ids, int32(id))
		sizes = append(sizes, int32(t.batchSize))
		if t.direct && t.more {
			told = append(told, int32(id))
		}
	}
	return ids, sizes, told
}

// takeDirect reports whether t has direct entries for a worker.
func (m *Materializer) takeDirect(t *target) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return t.direct && m.directOnLocked(t, time.Now())
}

// directOnLocked reports whether workers take t's direct entries: not while they are handed to
// the drainer, nor with min_interval, whose holds only the claim of stale rows honours.
func (m *Materializer) directOnLocked(t *target, now time.Time) bool {
	return !m.directOffAll && t.minInterval == 0 && !now.Before(t.directOffUntil)
}

// directOff hands t's direct entries to the drainer for a while: an entry or a row failed, and
// the drainer's path isolates it (a bad entry alone, a failing row by quarantine).
func (m *Materializer) directOff(t *target, err error) {
	m.mu.Lock()
	t.direct = false
	t.directOffUntil = time.Now().Add(time.Minute)
	m.mu.Unlock()
	m.log.Info("queued keys of a table go through the drainer for a minute, which isolates the failing ones",
		"table", t.plan.Table.String(), "error", err)
	m.QueueFilled()
}

// queueBatch takes up to a batch of t's direct entries, computes and stamps their rows, and queues
// again the keys of rows someone else holds. It reports the rows written and whether more entries
// may wait.
func (m *Materializer) queueBatch(ctx context.Context, t *target) (n int, more bool, err error) {
	m.mu.Lock()
	now := time.Now()
	size, share, done := t.batchSize, m.shareLocked(t, now), t.doneLocked(now)
	m.mu.Unlock()
	start := time.Now()
	width := len(t.plan.Key)
	var locked [][]*string
	var ats []time.Time
	var pid uint32
	err = m.inBatch(ctx, t, func(tx pgx.Tx) error {
		pid = tx.Conn().PgConn().PID()
		rows, err := tx.Query(ctx, t.takeSQL, t.plan.ID, size, share, done)
		if err != nil {
			return err
		}
		locked = make([][]*string, width)
		held := make([][]*string, width)
		taken, beyond, took := 0, false, size
		for rows.Next() {
			var kind string
			var at time.Time
			vals := make([]*string, width)
			dest := []any{&kind, &at}
			for i := range vals {
				dest = append(dest, &vals[i])
			}
			if err := rows.Scan(dest...); err != nil {
				rows.Close()
				return err
			}
			if kind == "m" {
				beyond = true
				if vals[0] != nil {
					if k, err := strconv.Atoi(*vals[0]); err == nil {
						took = k
					}
				}
				continue
			}
			taken++
			cols := held
			if kind == "l" {
				cols = locked
				ats = append(ats, at)
			}
			for i, v := range vals {
				cols[i] = append(cols[i], v)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		// Go on while entries wait beyond the take and it came near full (entries of one key fold
		// into one row). A batch that found the queue nearly empty ends the run: under a steady trickle the next keys come
		// with the drainer's next look (noteDirect, every poll_interval), many to a batch, rather
		// than one key per batch and a batch per application transaction. Rows all held by
		// others also wait for that look.
		more = beyond && taken*2 >= took && len(locked[0]) > 0
		m.noteTake(t, beyond)
		if len(held[0]) > 0 {
			if _, err := tx.Exec(ctx, plan.RequeueKeysSQL, t.plan.ID, keyJSON(held)); err != nil {
				return fmt.Errorf("queue held rows of %s: %w", t.plan.Table, err)
			}
		}
		if len(locked[0]) == 0 {
			return nil
		}
		f := m.takeOff(t, taken)
		err = m.write(ctx, tx, t, locked)
		m.land(t, f, len(locked[0]), err == nil)
		return err
	})
	if err != nil {
		if isEntryError(err) || isRowError(err) {
			m.directOff(t, err)
			return 0, false, nil
		}
		return 0, false, err
	}
	m.mu.Lock()
	if !more && t.running <= 1 {
		// Not while another batch of the table runs: the entry its take holds as its look beyond
		// is free once it commits, and its worker goes on to take it. Cleared here, that entry
		// waited for the drainer's next look, up to 45 ms at the end of a 1% burst.
		t.direct = false
	}
	m.mu.Unlock()
	if n = len(locked[0]); n > 0 {
		m.done(t, size, n, time.Since(start))
		if m.OnFresh != nil {
			now := time.Now()
			for _, at := range ats {
				m.OnFresh(now.Sub(at))
			}
		}
	}
	m.log.Trace("queue batch", "table", t.plan.Table.String(), "rows", n, "size", size, "elapsed", time.Since(start), "pid", pid)
	return n, more, nil
}

// flight is a queue batch computing the rows it took.
type flight struct {
	taken int
	at    time.Time
}

// takeOff records that a batch of t computes the rows of the taken entries from now.
func (m *Materializer) takeOff(t *target, taken int) *flight {
	f := &flight{taken: taken, at: time.Now()}
	m.mu.Lock()
	t.flights = append(t.flights, f)
	m.mu.Unlock()
	return f
}

// land ends flight f of t, which computed and wrote n rows, and keeps its speed when it did.
func (m *Materializer) land(t *target, f *flight, n int, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t.flights = slices.DeleteFunc(t.flights, func(g *flight) bool { return g == f })
	if d := time.Since(f.at); ok && n > 0 && d > 0 {
		t.rate = float64(n) / d.Seconds()
	}
}

// doneLocked estimates how many of the entries that t's running batches took they have computed
// by now, at the speed of the last batch to end: a take near a burst's end counts those as done
// (plan.QueueTakeSQL's $4), so that the worker that runs alone after the other's batch ends gets
// its share of the rest. On a 1% burst the last take used to count a batch that was 2 ms from
// its end, took all 500 keys left, and ran 44 ms alone.
func (t *target) doneLocked(now time.Time) int {
	done := 0.0
	for _, f := range t.flights {
		done += min(float64(f.taken), t.rate*now.Sub(f.at).Seconds())
	}
	return int(done)
}

// shareLocked is how many workers share t's last queued entries (plan.QueueTakeSQL): as many as
// may run the table, but one while the throttle lets one worker run, or while a backlog is
// younger than RampAfter.
func (m *Materializer) shareLocked(t *target, now time.Time) int {
	if m.level.Load() > 0 || (m.cfg.RampAfter > 0 && m.tableCap(t, now) == 1) {
		return 1
	}
	return min(m.cfg.TableWorkers, m.cfg.Workers)
}

// noteTake records whether a queue batch's take saw entries beyond the ones it took. Those are a
// backlog: another worker may take them while this batch writes, and each one that joins lets one
// more follow (next). A take that saw the queue's end ends that: workers sent after it would take
// nothing, 2-40 ms each on cold backends and on the cores the batches still writing need.
func (m *Materializer) noteTake(t *target, beyond bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setMoreLocked(t, beyond)
	if t.more {
		m.pushLocked(t)
	}
}

// passShare is the default Config.PassShare. On the catch-up benchmark (200k rows × 50 child
// rows, docs/benchmarks.md) queue batches answered a change of 30% of the rows in 2.1-2.5 s and
// of every row in 7.1-9.2 s, a pass over every row in 3.4-5.7 s whatever the change: the pass
// overtakes queue batches when 40-80% of a table's rows wait.
const passShare = 0.7

// checkBacklog reports whether t has a backlog of queued keys whose size is due a check: at its
// start, then at most once every ten seconds while it lasts, and never twice in a second. A
// bulk change seconds after another used to wait out the ten seconds in queue batches.
func (m *Materializer) checkBacklog(t *target) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	since := time.Since(t.passCheckAt)
	recent := since < time.Second || (since < 10*time.Second && t.passCheckAt.After(t.backlogAt))
	if m.cfg.PassShare < 0 || !t.more || t.walk != nil || recent {
		return false
	}
	t.passCheckAt = time.Now()
	return true
}

// keysToPassSQL replaces target $1's queued keys by a whole-table entry when they number at least
// $2 and $3 of the estimated rows of table $4, in one statement: the keys' deletion commits with the
// entry, and the pass that answers it reads every row after that commit. It counts no further
// than it needs. The estimate is the planner's (reltuples scaled to the table's current size); a
// table never analyzed (a partitioned one, say) has none and keeps its queue batches. Entries
// that running queue batches have taken stay theirs, so that the switch never waits for those
// batches, and the pass starts while they write.
const keysToPassSQL = `WITH need AS (
	SELECT (SELECT ceil($3 * CASE WHEN c.relpages > 0
	          THEN greatest(c.reltuples, c.reltuples / c.relpages * (pg_catalog.pg_relation_size(c.oid) / current_setting('block_size')::int))
	          ELSE c.reltuples END)::bigint
	        FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($4) AND c.reltuples > 0) AS n),
enough AS (
	SELECT (SELECT n FROM need) IS NOT NULL AND count(*) >= greatest((SELECT n FROM need), $2) AS yes FROM (
		SELECT 1 FROM matcol.pending WHERE target_id = $1 AND ` + plan.DirectEntrySQL + `
		LIMIT greatest((SELECT n FROM need), $2)) AS q),
gone AS (
	DELETE FROM matcol.pending d WHERE d.ctid = ANY (ARRAY(
	  SELECT ctid FROM matcol.pending WHERE (SELECT yes FROM enough)
	    AND target_id = $1 AND ` + plan.DirectEntrySQL + ` FOR UPDATE SKIP LOCKED)) RETURNING 1)
INSERT INTO matcol.pending (target_id, vals)
SELECT $1, NULL WHERE (SELECT yes FROM enough) AND (SELECT count(*) FROM gone) >= 0
RETURNING id`

// keysToPass hands t's queued keys to a pass over every row when they are a large share of its
// rows (Config.PassShare), and reports whether it did.
func (m *Materializer) keysToPass(ctx context.Context, t *target) (bool, error) {
	var id int64
	err := m.pool.QueryRow(ctx, keysToPassSQL, t.plan.ID, m.cfg.PassMin, m.cfg.PassShare, t.plan.Table.Sanitize()).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		m.log.Trace("queued keys of a table stay with queue batches", "table", t.plan.Table.String())
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("weigh queued keys of %s: %w", t.plan.Table, err)
	}
	m.Stats.BacklogsToPass.Add(1)
	m.log.Info("queued keys of a table are answered by a pass over every row", "table", t.plan.Table.String(),
		"share", m.cfg.PassShare)
	m.mu.Lock()
	t.direct = false
	m.mu.Unlock()
	m.startWalk(t, id, []int64{id})
	return true, nil
}
