package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

type catchupOpts struct {
	rows, seats             int
	pcts                    string // comma-separated percentages
	resyncRows, resyncSeats int
}

// The seat-state shape: a snapshot row keeps five counts over its seats' states.
const fiveCountSchema = `
CREATE TABLE event_seat_state_change (
    id bigint PRIMARY KEY, event_id bigint NOT NULL,
    sold_count int, reserved_count int, empty_count int, blocked_count int, held_count int,
    materialized_at timestamptz);
CREATE TABLE seat_state (
    change_id bigint NOT NULL, seat_id int NOT NULL, state text NOT NULL,
    PRIMARY KEY (change_id, seat_id));
`

const fiveCounts = `count(*) FILTER (WHERE s.state = 'SOLD')::int AS sold_count,
       count(*) FILTER (WHERE s.state = 'RESERVED')::int AS reserved_count,
       count(*) FILTER (WHERE s.state = 'EMPTY')::int AS empty_count,
       count(*) FILTER (WHERE s.state = 'BLOCKED')::int AS blocked_count,
       count(*) FILTER (WHERE s.state = 'HELD')::int AS held_count`

const fiveCountEnrichment = `SELECT c.id,
       ` + fiveCounts + `
FROM event_seat_state_change c LEFT JOIN seat_state s ON s.change_id = c.id
WHERE c.id = ANY($1) GROUP BY c.id`

// fiveCountSetBased recomputes the snapshots whose ids the FROM list's "k" yields, in one statement.
func fiveCountSetBased(from string) string {
	return `UPDATE event_seat_state_change c
SET sold_count = s.sold_count, reserved_count = s.reserved_count, empty_count = s.empty_count,
    blocked_count = s.blocked_count, held_count = s.held_count, materialized_at = now()
FROM (SELECT s.change_id, ` + fiveCounts + `
      FROM ` + from + ` JOIN seat_state s ON s.change_id = k.id GROUP BY s.change_id) s
WHERE c.id = s.change_id`
}

var fiveCountConfig = `  - name: seat_counts
    table: public.event_seat_state_change
    columns: [sold_count, reserved_count, empty_count, blocked_count, held_count]
    sql: ` + strconv.Quote(fiveCountEnrichment) + `
    depends_on:
      - table: public.seat_state
        columns: [change_id]
`

// loadFiveCounts creates database db owned by the application role and fills it: rows snapshots
// of seats seats each, every snapshot's seats together, values computed and stamped, with the
// index on stale rows that docs/troubleshooting.md asks for.
func loadFiveCounts(ctx context.Context, admin *pgx.Conn, o liveOpts, db string, rows, seats int) error {
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{db}.Sanitize()+` OWNER `+pgx.Identifier{appRole}.Sanitize()); err != nil {
		return err
	}
	conn, err := connectAs(ctx, o.cl, appRole, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	fmt.Printf("loading %s: %d snapshots × %d seats…\n", db, rows, seats)
	start := time.Now()
	for _, stmt := range []string{
		fiveCountSchema,
		fmt.Sprintf(`INSERT INTO event_seat_state_change (id, event_id) SELECT g, g / 10 FROM generate_series(1, %d) g`, rows),
		fmt.Sprintf(`INSERT INTO seat_state SELECT c, s, (ARRAY['SOLD','RESERVED','EMPTY','BLOCKED','HELD'])[1 + (c * 7 + s) %% 5]
			FROM generate_series(1, %d) c, generate_series(1, %d) s ORDER BY c, s`, rows, seats),
		`VACUUM (ANALYZE) seat_state`,
		fiveCountSetBased(`event_seat_state_change k`),
		`CREATE INDEX event_seat_state_change_stale ON event_seat_state_change (id) WHERE materialized_at IS NULL`,
		`VACUUM (ANALYZE) event_seat_state_change`,
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("load %s: %w", db, err)
		}
	}
	fmt.Printf("loaded in %s\n", time.Since(start).Round(time.Second))
	return nil
}

// changeSQL changes one seat of each chosen snapshot: those whose id scatters below threshold in
// 0..99999, so that pct% of them, spread over the table, change.
const changeSQL = `UPDATE seat_state s SET state = CASE s.state WHEN 'SOLD' THEN 'EMPTY' ELSE 'SOLD' END
FROM event_seat_state_change k
WHERE s.change_id = k.id AND s.seat_id = 1 AND (k.id * 7919) %% 100000 < %d`

func threshold(pct float64) int { return int(math.Round(pct * 1000)) }

type catchupRow struct {
	pct           float64
	changed       int64
	matcol        time.Duration // the better of two rounds; the limit when not done
	matcolFirst   time.Duration // the first round
	done          bool
	stale, queued int64         // what was left when not done
	setBased      time.Duration // the better of two
	setBasedFirst time.Duration // the first, on pages not yet in shared buffers, as matcol's are
	refresh       time.Duration
	verifiedRows  int
	daemonCPU     float64
	daemonPeakRSS int64
	pass          time.Duration // the same change answered by a pass (sizes of passFrom and up)
}

// passFrom is the smallest change that the bench also answers with a pass over every row, for
// the comparison with queue batches on the same shape.
const passFrom = 30

// catchUpBench times matcol's catch-up after one committed change of pct% of the snapshots
// against a set-based UPDATE of exactly those snapshots and a REFRESH of the whole equivalent
// view, each on its own copy of the same data; then the logical first-start resync.
func catchUpBench(ctx context.Context, r *report, admin *pgx.Conn, o liveOpts) error {
	c := o.catchup
	var pcts []float64
	for _, f := range strings.Split(c.pcts, ",") {
		p, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || p <= 0 || p > 100 {
			return fmt.Errorf("-catchup-pcts %q: give percentages in (0, 100]", c.pcts)
		}
		pcts = append(pcts, p)
	}
	const db, base = "catchup", "catchup_base"
	if err := loadFiveCounts(ctx, admin, o, db, c.rows, c.seats); err != nil {
		return err
	}
	// The baselines' copy: the same data, no matcol, and the view REFRESH recomputes.
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{base}.Sanitize()+` TEMPLATE `+pgx.Identifier{db}.Sanitize()+
		` OWNER `+pgx.Identifier{appRole}.Sanitize()); err != nil {
		return err
	}
	defer dropDB(context.WithoutCancel(ctx), admin, base)
	defer dropDB(context.WithoutCancel(ctx), admin, db)
	bconn, err := connectAs(ctx, o.cl, o.cl.User, base)
	if err != nil {
		return err
	}
	defer bconn.Close(context.Background())
	if _, err := bconn.Exec(ctx, `CREATE MATERIALIZED VIEW seat_counts AS
		SELECT s.change_id, `+fiveCounts+` FROM seat_state s GROUP BY s.change_id`); err != nil {
		return err
	}
	if _, err := bconn.Exec(ctx, `VACUUM ANALYZE`); err != nil {
		return err
	}

	su, err := connectAs(ctx, o.cl, o.cl.User, db)
	if err != nil {
		return err
	}
	defer su.Close(context.Background())
	app, err := connectAs(ctx, o.cl, appRole, db)
	if err != nil {
		return err
	}
	defer app.Close(context.Background())
	if err := grantMatcol(ctx, su, db, triggerRole, "trigger", []string{"event_seat_state_change"}, []string{"seat_state"}); err != nil {
		return err
	}
	m, err := setUpMatcol(ctx, o, db, "trigger", fiveCountConfig)
	if err != nil {
		return err
	}
	d, err := m.start()
	if err != nil {
		return err
	}
	defer d.stop()
	time.Sleep(2 * time.Second) // the daemon's start; the table is fresh, so there is nothing to see
	if _, err := caughtUp(ctx, su, d, time.Now(), wait{table: "event_seat_state_change", limit: 2 * time.Minute}); err != nil {
		return err
	}

	var rows []catchupRow
	for _, pct := range pcts {
		row := catchupRow{pct: pct}
		change := fmt.Sprintf(changeSQL, threshold(pct))
		// Baselines: the same change, then the recomputation of exactly the changed snapshots,
		// twice (the second change flips the same seats again), the better time kept; then REFRESH,
		// the better of two.
		if _, err := bconn.Exec(ctx, fmt.Sprintf(`DROP TABLE IF EXISTS changed;
			CREATE TABLE changed AS SELECT id FROM event_seat_state_change WHERE (id * 7919) %% 100000 < %d;
			ANALYZE changed`, threshold(pct))); err != nil {
			return err
		}
		for i := 0; i < 2; i++ {
			// As matcol's run below: a CHECKPOINT, then the change, so both pay the same full-page
			// writes for the pages they modify first.
			if _, err := bconn.Exec(ctx, `CHECKPOINT`); err != nil {
				return err
			}
			if _, err := bconn.Exec(ctx, change); err != nil {
				return err
			}
			t, err := timed(ctx, bconn, fiveCountSetBased(`changed k`))
			if err != nil {
				return err
			}
			fmt.Printf("  %.1f%%: set-based run %d: %s\n", pct, i+1, t.Round(time.Millisecond))
			if i == 0 {
				row.setBasedFirst = t
			}
			if row.setBased == 0 || t < row.setBased {
				row.setBased = t
			}
		}
		for i := 0; i < 2; i++ {
			t, err := timed(ctx, bconn, `REFRESH MATERIALIZED VIEW seat_counts`)
			if err != nil {
				return err
			}
			if row.refresh == 0 || t < row.refresh {
				row.refresh = t
			}
		}
		if _, err := su.Exec(ctx, `CHECKPOINT`); err != nil {
			return err
		}
		// matcol: the same change, committed by the application, twice (the second flips the same
		// seats back), the better time kept, as for the set-based UPDATE: the first round's pages
		// are in the state the set-based UPDATE's first run found them in.
		for i := 0; i < 2; i++ {
			if i > 0 {
				if _, err := su.Exec(ctx, `CHECKPOINT`); err != nil {
					return err
				}
			}
			cpu0 := procCPU(d.cmd.Process.Pid)
			tag, err := app.Exec(ctx, change)
			if err != nil {
				return err
			}
			committed := time.Now()
			row.changed = tag.RowsAffected()
			fmt.Printf("  %.1f%%: %d snapshots changed…\n", pct, row.changed)
			t, err := caughtUp(ctx, su, d, committed, wait{table: "event_seat_state_change",
				mustSee: true, grace: time.Minute, limit: o.limit})
			row.done = err == nil
			if errors.Is(err, errBehind) {
				if row.stale, row.queued, err = behind(ctx, su, "event_seat_state_change"); err != nil {
					return err
				}
			}
			if err != nil {
				return fmt.Errorf("catch-up at %.1f%%: %w\ndaemon log:\n%s", pct, err, m.logTail())
			}
			cpu := procCPU(d.cmd.Process.Pid) - cpu0
			fmt.Printf("  %.1f%%: matcol round %d: %s\n", pct, i+1, t.Round(time.Millisecond))
			if i == 0 {
				row.matcolFirst = t
			}
			if !row.done || row.matcol == 0 || t < row.matcol {
				row.matcol, row.daemonCPU = t, cpu
			}
			if !row.done {
				break
			}
		}
		if row.done && pct >= passFrom {
			if row.pass, err = passCatchUp(ctx, su, d, change, o.limit); err != nil {
				return fmt.Errorf("pass at %.1f%%: %w\ndaemon log:\n%s", pct, err, m.logTail())
			}
			fmt.Printf("  %.1f%%: the same change answered by a pass: %s\n", pct, row.pass.Round(time.Millisecond))
		}
		row.daemonPeakRSS = d.peakRSS()
		// verify skips stale rows: after a catch-up it checks every row, else the fresh ones.
		if row.verifiedRows, err = m.verifyAll(ctx); err != nil {
			return fmt.Errorf("catch-up at %.1f%%: %w", pct, err)
		}
		if row.done && row.verifiedRows != c.rows {
			return fmt.Errorf("catch-up at %.1f%%: verify checked %d of %d rows; the others were stale", pct, row.verifiedRows, c.rows)
		}
		fmt.Printf("  %.1f%%: matcol %s, set-based %s, REFRESH %s\n", pct, row.matcol.Round(time.Millisecond),
			row.setBased.Round(time.Millisecond), row.refresh.Round(time.Millisecond))
		rows = append(rows, row)
		if !row.done {
			break // a larger change would take longer still, from a backlog
		}
	}
	if err := d.stop(); err != nil {
		return fmt.Errorf("matcol run: %w (log: %s)", err, m.logTail())
	}

	r.heading("Catch-up after a change (%d snapshots × %d seats)", c.rows, c.seats)
	r.add("The seat-state shape: each `event_seat_state_change` row keeps five counts over its %d `seat_state` rows (`count(*) FILTER (WHERE state = …)`: sold, reserved, empty, blocked, held); %d rows, trigger mode, `matcol run` as its own process with the default config, as the role `%s` with exactly the grants of docs/security.md; the application's writes come from the role `%s` that owns the tables.", c.seats, c.rows, triggerRole, appRole)
	r.add("")
	r.add("For each size, one committed UPDATE changes one seat of each of that share of snapshots, spread over the table. matcol's time runs from that commit until no row is stale and `matcol.pending` is empty (polled every 10 ms; the clock cannot stop before a poll has seen the change's stale rows or queued entries). The baselines run on a copy of the same data without matcol (`CREATE DATABASE … TEMPLATE`), which gets the same change: one set-based `UPDATE … FROM (aggregate over exactly the changed snapshots)`, and `REFRESH MATERIALIZED VIEW` of the whole equivalent view. Each side runs twice per size, each run after a CHECKPOINT and the change (the second flips the same seats back), so that both pay the same full-page writes, and the verdict takes the better of each: a first run prunes the pages the change left full (auto_explain shows a prune record per changed snapshot in a first run and none in a second) and reads pages not yet in shared buffers; the second finds less of both. The first runs' times and their ratio are shown in parentheses. `matcol verify --all` then checks every row (0 drift, or the bench fails). Without huge pages a change's first round pays page faults in matcol's workers that the baseline's connection has mostly paid (see the top of this file); [operations.md](operations.md#huge-pages) shows the sizes with another `shared_buffers` and with huge pages.")
	r.add("")
	r.add("| changed | matcol catch-up (first run) | set-based UPDATE of those rows (first run) | REFRESH (whole view) | matcol ÷ set-based speed (first runs) | faster than REFRESH | daemon CPU | daemon peak RSS | verify |")
	r.add("|---|---|---|---|---|---|---|---|---|")
	for _, row := range rows {
		speed := row.setBased.Seconds() / row.matcol.Seconds()
		vsRefresh := row.refresh.Seconds() / row.matcol.Seconds()
		took, lt, verified := fmt.Sprintf("%s (%s)", row.matcol.Round(time.Millisecond), row.matcolFirst.Round(time.Millisecond)), "", fmt.Sprintf("%d rows, 0 drift", row.verifiedRows)
		if !row.done {
			took = fmt.Sprintf("not caught up in %s (%d rows stale, %d entries queued)", o.limit, row.stale, row.queued)
			lt, verified = "< ", fmt.Sprintf("%d fresh rows, 0 drift", row.verifiedRows)
		}
		r.add("| %g%% (%d rows) | %s | %s (%s) | %s | **%s%s** (%s%s) | **%s%s** | %.2f s | %.1f MB | %s |", row.pct, row.changed,
			took, row.setBased.Round(time.Millisecond), row.setBasedFirst.Round(time.Millisecond), row.refresh.Round(time.Millisecond),
			lt, times(speed), lt, times(row.setBasedFirst.Seconds()/row.matcolFirst.Seconds()), lt, times(vsRefresh),
			row.daemonCPU, float64(row.daemonPeakRSS)/1e6, verified)
		r.target(fmt.Sprintf("catch-up after a %g%% change", row.pct), fmt.Sprintf("%s%s the set-based UPDATE's speed", lt, times(speed)),
			"≥ 0.5×", row.done && speed >= 0.5, whyCatchUp)
		if row.pct == 0.1 {
			r.target("catch-up after a 0.1% change against REFRESH", lt+times(vsRefresh)+" faster", "≥ 40×", row.done && vsRefresh >= 40, whyCatchUp)
		}
	}
	for _, pct := range pcts[len(rows):] {
		r.add("| %g%% | not run: the previous size did not catch up within %s | | | | | | | |", pct, o.limit)
		r.target(fmt.Sprintf("catch-up after a %g%% change", pct), "not run", "≥ 0.5×", false, whyCatchUp)
	}
	r.add("")
	r.add("\"matcol ÷ set-based speed\" is the set-based UPDATE's time over matcol's: 1× is as fast as one statement over exactly the changed rows, 0.5× twice as slow. The daemon's CPU is its own process's user+system time over the better catch-up (the backends it drives are not in it); peak RSS is the process's high-water mark so far.")
	var passes []catchupRow
	for _, row := range rows {
		if row.pass > 0 {
			passes = append(passes, row)
		}
	}
	if len(passes) > 0 {
		r.add("")
		r.add("The same change answered by a pass over every row instead of queue batches: the change again, made with `session_replication_role = replica` so that no trigger queues it, then a whole-table invalidation (what a logical-mode resync or a truncated source queues); the time runs from that entry's commit until the pass has ended and no row is stale. A pass computes every row and writes those whose values differ, in key order, chunks on up to `table_workers` at once. Queued keys for 70%% of a table's rows or more switch to a pass themselves (docs/architecture.md), so the 100%% row of the table above is a pass too; before that switch, queue batches took 7.1-9.2 s there.")
		r.add("")
		r.add("| changed | matcol as configured (better of two) | a pass | set-based UPDATE of those rows | pass ÷ set-based speed |")
		r.add("|---|---|---|---|---|")
		for _, row := range passes {
			r.add("| %g%% | %s | %s | %s | %s |", row.pct, row.matcol.Round(time.Millisecond), row.pass.Round(time.Millisecond),
				row.setBased.Round(time.Millisecond), times(row.setBased.Seconds()/row.pass.Seconds()))
		}
	}
	r.add("")
	if c.resyncRows > 0 {
		return resyncBench(ctx, r, admin, o)
	}
	return nil
}

// resyncBench times logical mode's first start on a fresh table (a new slot queues every row)
// against `matcol backfill` of the same enrichment and a set-based UPDATE of every row.
func resyncBench(ctx context.Context, r *report, admin *pgx.Conn, o liveOpts) error {
	c := o.catchup
	const db = "resync"
	if err := loadFiveCounts(ctx, admin, o, db, c.resyncRows, c.resyncSeats); err != nil {
		return err
	}
	defer dropDB(context.WithoutCancel(ctx), admin, db)
	su, err := connectAs(ctx, o.cl, o.cl.User, db)
	if err != nil {
		return err
	}
	defer su.Close(context.Background())
	setBased, err := timed(ctx, su, fiveCountSetBased(`event_seat_state_change k`))
	if err != nil {
		return err
	}
	if again, err := timed(ctx, su, fiveCountSetBased(`event_seat_state_change k`)); err != nil {
		return err
	} else if again < setBased {
		setBased = again
	}
	if err := grantMatcol(ctx, su, db, logicalRole, "logical", []string{"event_seat_state_change"}, []string{"seat_state"}); err != nil {
		return err
	}
	m, err := setUpMatcol(ctx, o, db, "logical", fiveCountConfig)
	if err != nil {
		return err
	}
	if _, err := su.Exec(ctx, `VACUUM ANALYZE event_seat_state_change`); err != nil {
		return err
	}
	if _, err := su.Exec(ctx, `CHECKPOINT`); err != nil {
		return err
	}
	fmt.Println("  matcol backfill…")
	start := time.Now()
	if _, err := m.cmd(ctx, "backfill", "--enrichment", "seat_counts"); err != nil {
		return err
	}
	backfill := time.Since(start)
	// A pass writes only rows whose values differ: make every row's differ, so that the resync
	// writes as many rows as the backfill did. The enrichment does not read sold_count, so the
	// UPDATE leaves the rows stamped fresh, as drifted rows would be.
	if _, err := su.Exec(ctx, `UPDATE event_seat_state_change SET sold_count = -1`); err != nil {
		return err
	}
	if _, err := su.Exec(ctx, `VACUUM ANALYZE event_seat_state_change`); err != nil {
		return err
	}
	if _, err := su.Exec(ctx, `CHECKPOINT`); err != nil {
		return err
	}
	fmt.Println("  logical first start…")
	var lsn string
	if err := su.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		return err
	}
	start = time.Now()
	d, err := m.start()
	if err != nil {
		return err
	}
	defer d.stop()
	resync, err := caughtUp(ctx, su, d, start, wait{table: "event_seat_state_change", slot: "matcol", lsn: lsn,
		mustSee: true, grace: 2 * time.Minute, logged: `"recomputed every row after a whole-table invalidation"`, limit: o.limit})
	done := err == nil
	var left int64
	if errors.Is(err, errBehind) {
		err = su.QueryRow(ctx, `SELECT count(*) FROM event_seat_state_change WHERE sold_count = -1`).Scan(&left)
	}
	if err != nil {
		return fmt.Errorf("logical first start: %w\ndaemon log:\n%s", err, m.logTail())
	}
	cpu, rss := procCPU(d.cmd.Process.Pid), d.peakRSS()
	verified, err := m.verifyAll(ctx)
	if err != nil {
		return fmt.Errorf("after the logical first start: %w", err)
	}
	if done && verified != c.resyncRows {
		return fmt.Errorf("after the logical first start: verify checked %d of %d rows; the others were stale", verified, c.resyncRows)
	}
	if err := d.stop(); err != nil {
		return fmt.Errorf("matcol run: %w (log: %s)", err, m.logTail())
	}
	if err := dropSlot(ctx, admin, "matcol"); err != nil {
		return err
	}
	rate := func(t time.Duration) float64 { return float64(c.resyncRows) / t.Seconds() }
	r.heading("Logical first-start resync (%d snapshots × %d seats)", c.resyncRows, c.resyncSeats)
	r.add("The same five-count shape, %d rows, every row fresh. `matcol run` starts in logical mode with the default config and no slot, as the role `%s` (docs/security.md's logical-mode grants: REPLICATION, and membership in the tables' owning role for the publication); a first start invalidates every row of the target, which a pass answers, and the time runs from the process's start until the daemon logs the pass's end, no row is stale, the queue is empty and the new slot streams. `matcol backfill --enrichment seat_counts` (default 2 jobs) recomputes the same rows on the same state before it; then an UPDATE of a column the enrichment does not read gives every row a wrong `sold_count`, so that the pass, which writes only rows whose values differ, writes every row as the backfill did, and the set-based UPDATE of every row (the better of two) before matcol is installed. `matcol verify --all` then checks the rows (0 drift, or the bench fails).", c.resyncRows, logicalRole)
	r.add("")
	r.add("| method | time | rows/s | speed ÷ backfill | speed ÷ set-based |")
	r.add("|---|---|---|---|---|")
	r.add("| set-based `UPDATE … FROM (aggregate over all rows)` | %s | %.0f | | |", setBased.Round(time.Millisecond), rate(setBased))
	r.add("| `matcol backfill --enrichment seat_counts` | %s | %.0f | | %s |", backfill.Round(time.Millisecond), rate(backfill), times(setBased.Seconds()/backfill.Seconds()))
	if done {
		r.add("| logical first start, until nothing is stale | %s | %.0f | **%s** | %s |", resync.Round(time.Millisecond), rate(resync),
			times(backfill.Seconds()/resync.Seconds()), times(setBased.Seconds()/resync.Seconds()))
	} else {
		soFar := float64(int64(c.resyncRows)-left) / resync.Seconds()
		r.add("| logical first start: not done in %s, %d rows not yet recomputed | | %.0f so far | **%s** so far | %s so far |", o.limit, left, soFar,
			times(soFar/rate(backfill)), times(soFar/rate(setBased)))
	}
	r.add("")
	r.add("The daemon used %.1f s of CPU over the resync (its own process) and peaked at %.1f MB RSS; verify checked %d rows that were not stale.", cpu, float64(rss)/1e6, verified)
	r.add("")
	return nil
}

// passCatchUp makes change without queueing it, queues a whole-table invalidation of the target
// and times the pass that answers it.
func passCatchUp(ctx context.Context, su *pgx.Conn, d *daemonProc, change string, limit time.Duration) (time.Duration, error) {
	for _, sql := range []string{`CHECKPOINT`, `SET session_replication_role = replica`, change, `RESET session_replication_role`} {
		if _, err := su.Exec(ctx, sql); err != nil {
			return 0, err
		}
	}
	// With the NOTIFY that matcol's TRUNCATE trigger sends.
	if _, err := su.Exec(ctx, `INSERT INTO matcol.pending (target_id, vals) SELECT id, NULL FROM matcol.target;
		SELECT pg_notify('matcol', 'q')`); err != nil {
		return 0, err
	}
	return caughtUp(ctx, su, d, time.Now(), wait{table: "event_seat_state_change", mustSee: true, grace: time.Minute, limit: limit})
}
