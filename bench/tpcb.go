package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

type tpcbOpts struct {
	scale   int
	runFor  time.Duration
	clients int
	rounds  int
	// variants limits the variants to these kinds, comma-separated (hand, trigger, logical,
	// trigger-late); all when empty.
	variants string
}

const tpcbTemplate = "tpcb_template"

// Each account's history_count and history_delta: the count and the sum of delta over all of its
// pgbench_history rows.
const tpcbConfig = `  - name: history_totals
    table: public.pgbench_accounts
    columns: [history_count, history_delta]
    sql: "SELECT a.aid, count(h.aid)::bigint AS history_count, coalesce(sum(h.delta), 0)::bigint AS history_delta FROM pgbench_accounts a LEFT JOIN pgbench_history h ON h.aid = a.aid WHERE a.aid = ANY($1) GROUP BY a.aid"
    depends_on:
      - table: public.pgbench_history
        columns: [aid]
`

// The synchronous trigger a developer would write by hand.
const handTrigger = `
CREATE FUNCTION history_totals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE pgbench_accounts SET history_count = history_count + 1, history_delta = history_delta + NEW.delta
  WHERE aid = NEW.aid;
  RETURN NULL;
END $$;
CREATE TRIGGER history_totals AFTER INSERT ON pgbench_history FOR EACH ROW EXECUTE FUNCTION history_totals();
`

const tpcbWrong = `SELECT count(*) FROM pgbench_accounts a
LEFT JOIN (SELECT aid, count(*) AS n, sum(delta) AS d FROM pgbench_history GROUP BY aid) h ON h.aid = a.aid
WHERE (a.history_count, a.history_delta) IS DISTINCT FROM (coalesce(h.n, 0), coalesce(h.d, 0))`

type tpcbRun struct {
	label         string
	kind          string
	round         int
	base          float64 // the mean TPS of the baseline runs before and after its round
	tps           float64
	xacts         int64
	aborted       string // pgbench's complaint when clients aborted
	walRun        float64
	walAll        float64       // bytes per transaction including the catch-up
	catchUp       time.Duration // the limit when behind
	behind        bool
	stale, queued int64 // what was left when behind
	daemon        bool
	cpuRun        float64 // daemon CPU seconds while pgbench ran
	cpuCatchUp    float64
	backendCPU    float64 // CPU of the daemon's server backends while pgbench ran
	peakRSS       int64
	walsenderCPU  float64
	verified      int
	maintained    bool
	stampedBefore bool // the daemon found work before the run
}

// tpcbBench runs pgbench's built-in tpcb-like script against the same database without matcol,
// with a hand-written synchronous trigger, with matcol in trigger and in logical mode (default
// config, daemon running), and without matcol again; each on a fresh copy of one template.
func tpcbBench(ctx context.Context, r *report, admin *pgx.Conn, o liveOpts) error {
	t := o.tpcb
	if err := loadTPCB(ctx, admin, o); err != nil {
		return err
	}
	defer dropDB(context.WithoutCancel(ctx), admin, tpcbTemplate)
	// Rounds of every variant, each round opened and closed by a baseline run: the machine's speed
	// drifts by more than the differences measured, and each variant is compared with the
	// baselines nearest to it in time.
	type variant struct{ label, kind string }
	baseline := variant{"no matcol", "none"}
	variants := []variant{
		{"hand-written synchronous row trigger", "hand"},
		{"matcol trigger mode, default config", "trigger"},
		{"matcol logical mode, default config", "logical"},
		{"matcol trigger mode, daemon started after pgbench", "trigger-late"},
	}
	if t.variants != "" {
		var keep []variant
		for _, v := range variants {
			if slices.Contains(strings.Split(t.variants, ","), v.kind) {
				keep = append(keep, v)
			}
		}
		variants = keep
	}
	rounds := max(t.rounds, 1)
	var runs []tpcbRun
	var bases []float64
	for {
		round := len(bases)
		seq := append([]variant{baseline}, variants...)
		if round == rounds {
			seq = seq[:1]
		}
		for _, v := range seq {
			fmt.Printf("  round %d: %s…\n", round+1, v.label)
			run, err := tpcbVariant(ctx, admin, o, fmt.Sprintf("tpcb_%d_%s", round, v.kind), v.kind)
			if err != nil {
				return fmt.Errorf("tpcb, %s: %w", v.label, err)
			}
			run.label, run.kind, run.round = v.label, v.kind, round
			fmt.Printf("  %s: %.0f tps, %.0f WAL bytes/xact, catch-up %s\n", v.label, run.tps, run.walRun, run.catchUp.Round(time.Millisecond))
			if v.kind == "none" {
				bases = append(bases, run.tps)
			}
			runs = append(runs, run)
		}
		if round == rounds {
			break
		}
	}
	for i := range runs {
		switch k := runs[i].round; {
		case runs[i].kind == "none":
			runs[i].base = bases[0] // the baselines against the first: how far the machine drifted
		default:
			runs[i].base = (bases[k] + bases[k+1]) / 2
		}
	}

	r.heading("Writers under pgbench tpcb-like (scale %d, %d clients, %s)", t.scale, t.clients, t.runFor)
	r.add("pgbench's built-in `tpcb-like` script (`pgbench -i -s %d`, then `pgbench -n -b tpcb-like -c %d -j 2 -T %d`, `synchronous_commit = on`), as the role `%s` that owns the tables. Maintained: each account's `history_count` and `history_delta`, the count and `sum(delta)` of all of its `pgbench_history` rows (index on `pgbench_history (aid)`; `pgbench_accounts` gains the two columns and `materialized_at`, every row fresh at the start, with the partial index on stale rows). Every variant runs on a fresh copy of one template database (`CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY` on PostgreSQL 15+), prewarmed, after a CHECKPOINT and a `sync` of the OS's dirty pages. \"Daemon started after pgbench\" installs the same triggers but starts the daemon only when pgbench exits: the triggers' cost alone, then the catch-up of the whole run's backlog.",
		t.scale, t.clients, int(t.runFor.Seconds()), appRole)
	r.add("")
	r.add("matcol runs as its own process with the default config (`database_url`, the mode, the status server off) as a role with exactly docs/security.md's grants, the monitoring grant (`pg_read_all_stats`) included: `%s` in trigger mode; `%s` in logical mode (REPLICATION, membership in the owning role for the publication, and `pgbench_history` given `REPLICA IDENTITY FULL` by its owner, as `apply` asks). In logical mode the slot is created just before the daemon starts, so that its first start has nothing to resync and the table starts as in every other variant.", triggerRole, logicalRole)
	r.add("")
	r.add("Per variant, TPS ÷ the mean of the baseline runs that open and close its round, over %d rounds (each round runs every variant once, in the order of the table after this one):", rounds)
	r.add("")
	r.add("| variant | TPS ÷ baseline, mean | each round |")
	r.add("|---|---|---|")
	means := map[string]float64{}
	for _, v := range variants {
		var each []string
		sum := 0.0
		for _, run := range runs {
			if run.kind == v.kind {
				sum += run.tps / run.base
				each = append(each, fmt.Sprintf("%.2f×", run.tps/run.base))
			}
		}
		means[v.kind] = sum / float64(len(each))
		r.add("| %s | **%.2f×** | %s |", v.label, means[v.kind], strings.Join(each, ", "))
	}
	r.add("")
	r.add("Every run, in order (a baseline run's ratio is against the first baseline run: the machine's drift):")
	r.add("")
	r.add("| round | variant | TPS | TPS ÷ baseline | WAL bytes/xact | WAL bytes/xact with catch-up | catch-up after pgbench | daemon CPU (run / catch-up) | daemon CPU per 1,000 xacts | daemon peak RSS | exact |")
	r.add("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, run := range runs {
		ratio := run.tps / run.base
		catch, cpu, per, rss, exact := "", "", "", "", ""
		if run.daemon {
			catch = run.catchUp.Round(time.Millisecond).String()
			if run.behind {
				catch = fmt.Sprintf("not caught up in %s (%d accounts stale, %d entries queued)", o.limit, run.stale, run.queued)
			}
			cpu = fmt.Sprintf("%.1f s / %.1f s (%.0f%% of a core while pgbench ran; its backends %.1f s)", run.cpuRun, run.cpuCatchUp,
				100*run.cpuRun/t.runFor.Seconds(), run.backendCPU)
			per = fmt.Sprintf("%.0f ms", 1000*(run.cpuRun+run.cpuCatchUp)/float64(run.xacts)*1000)
			rss = fmt.Sprintf("%.1f MB", float64(run.peakRSS)/1e6)
			exact = fmt.Sprintf("verify --all: %d rows, 0 drift", run.verified)
			if run.behind {
				exact = fmt.Sprintf("verify --all: %d fresh rows, 0 drift", run.verified)
			}
		} else if run.maintained {
			exact = "every row exact"
		}
		label := run.label
		if run.aborted != "" {
			label += " (" + run.aborted + ")"
		}
		r.add("| %d | %s | %.0f | %.2f× | %.0f | %.0f | %s | %s | %s | %s | %s |", run.round+1, label, run.tps, ratio, run.walRun, run.walAll, catch, cpu, per, rss, exact)
	}
	for _, v := range variants {
		if v.kind == "hand" {
			continue
		}
		mode := strings.TrimSuffix(strings.TrimPrefix(v.label, "matcol "), ", default config")
		if v.kind != "trigger-late" {
			m := means[v.kind]
			r.target("tpcb-like TPS, "+mode, fmt.Sprintf("%.2f× the baseline (mean of %d rounds)", m, rounds), "≥ 0.85×", m >= 0.85, whyTPCB)
		}
		var slowest time.Duration
		var stale int64
		behind := false
		for _, run := range runs {
			if run.kind == v.kind {
				slowest = max(slowest, run.catchUp)
				stale = max(stale, run.stale)
				behind = behind || run.behind
			}
		}
		caught := fmt.Sprintf("caught up in %s at most, verify: 0 drift", slowest.Round(time.Millisecond))
		if behind {
			caught = fmt.Sprintf("%d accounts still stale after %s", stale, o.limit)
		}
		r.target("tpcb-like, "+mode+", every value exact after pgbench", caught, "exact", !behind, whyTPCB)
	}
	r.add("")
	for _, run := range runs {
		if run.walsenderCPU > 0 {
			r.add("In logical mode, round %d, the walsenders that decoded for matcol used %.1f s of CPU over the run and the catch-up, on the same cores.", run.round+1, run.walsenderCPU)
			r.add("")
		}
		if run.stampedBefore {
			r.add("Note: in %s the daemon found stale rows or queued entries before pgbench started, so that variant did not start from the same state.", run.label)
			r.add("")
		}
	}
	r.add("What the figures show: tpcb-like queues on WAL flushes, so about a second into the run matcol's throttle sees application backends waiting for the WAL and goes to its highest level, where its workers wait (up to `throttle.max_delay`, 30 s) and the recomputations happen in the catch-up after pgbench (once pgbench stops, an idle application drops the throttle at once). The daemon's workers run a few batches as the load begins (in trace logs of three rounds, 3 to 9 batches of 250 to 500 rows in all, 0.1 to 0.3 s of batch time), then hold until pgbench ends; the gap between trigger mode and the same triggers with the daemon started after pgbench is within what one variant moves from round to round (in an earlier run, a round of trigger mode that read 0.64× had the daemon holding from its second second on, and 17%% more WAL per transaction than its other rounds). What is left during the run is what each write pays in the application's own transaction: in trigger mode the statement trigger on `pgbench_history`, which runs while the transaction holds its `pgbench_branches` row lock (10 rows, 8 clients), the queue insert, and the `AFTER UPDATE` row trigger on `pgbench_accounts`, which compares the key (`bench/tpcb_triggers.sh` measures each part in pairs of runs against no trigger: [invalidation.md](invalidation.md#under-tpcb-like-where-the-writers-cost-goes)); in logical mode nothing: the UPDATE of `pgbench_accounts` meets no matcol trigger (the enrichment reads that table only through its key, whose changes the stream shows: docs/logical.md), and a second after the throttle yields, the listener stops its walsender's decoding until pgbench ends (at most `throttle.max_delay`: [logical.md](logical.md#holding-decoding-while-the-application-is-saturated)), so what remains is the decoding of the run's first seconds; the rest of the decoding moves into the catch-up, and the walsender CPU line counts it there. See docs/invalidation.md for the per-statement costs.")
	r.add("")
	r.add("WAL is `pg_current_wal_lsn()` before and after pgbench over the transactions pgbench processed; \"with catch-up\" extends it to the moment matcol caught up. Catch-up runs from pgbench's exit until no account is stale and `matcol.pending` is empty (in logical mode also until the slot confirmed the WAL position at pgbench's exit). The daemon's CPU is its own process's user+system time from /proc/PID/stat; \"its backends\" adds the server backends it drives (application_name `matcol…`), sampled every second while pgbench ran (every 100 ms with `MATCOL_BENCH_SAMPLE` set, which also prints what they were busy with), its peak RSS the process's high-water mark (VmHWM). The machine has 2 cores shared by PostgreSQL, pgbench and matcol, and is shared with other work: the baseline runs of one invocation agree within about 5%%, and a variant's ratio moves by about as much from one invocation to the next.")
	r.add("")
	return nil
}

// loadTPCB builds the template: pgbench's tables with the maintained columns, filled by pgbench.
func loadTPCB(ctx context.Context, admin *pgx.Conn, o liveOpts) error {
	fmt.Printf("loading pgbench scale %d…\n", o.tpcb.scale)
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{tpcbTemplate}.Sanitize()+` OWNER `+pgx.Identifier{appRole}.Sanitize()); err != nil {
		return err
	}
	// The columns come before the data so that every row carries them, as after a rewrite.
	if _, err := pgbenchCmd(ctx, o, tpcbTemplate, "-i", "-I", "dt", "-s", strconv.Itoa(o.tpcb.scale)); err != nil {
		return err
	}
	conn, err := connectAs(ctx, o.cl, appRole, tpcbTemplate)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `ALTER TABLE pgbench_accounts ADD history_count bigint DEFAULT 0,
		ADD history_delta bigint DEFAULT 0, ADD materialized_at timestamptz DEFAULT now()`); err != nil {
		conn.Close(ctx)
		return err
	}
	if _, err := pgbenchCmd(ctx, o, tpcbTemplate, "-i", "-I", "Gvp", "-s", strconv.Itoa(o.tpcb.scale)); err != nil {
		conn.Close(ctx)
		return err
	}
	for _, stmt := range []string{
		`ALTER TABLE pgbench_accounts ALTER materialized_at DROP DEFAULT`,
		`CREATE INDEX pgbench_history_aid ON pgbench_history (aid)`,
		`CREATE INDEX pgbench_accounts_stale ON pgbench_accounts (aid) WHERE materialized_at IS NULL`,
		`VACUUM ANALYZE pgbench_accounts`, `VACUUM ANALYZE pgbench_history`,
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			conn.Close(ctx)
			return err
		}
	}
	conn.Close(ctx)
	// pg_prewarm where the server has it, so that each variant starts with the tables cached.
	su, err := connectAs(ctx, o.cl, o.cl.User, tpcbTemplate)
	if err != nil {
		return err
	}
	_, _ = su.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_prewarm`)
	return su.Close(ctx)
}

// pgbenchCmd runs pgbench against db as the application role.
func pgbenchCmd(ctx context.Context, o liveOpts, db string, args ...string) (string, error) {
	args = append(append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(o.cl.Port), "-U", appRole}, args...), db)
	out, err := exec.CommandContext(ctx, filepath.Join(o.cl.BinDir, "pgbench"), args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("pgbench %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// tpcbVariant runs one variant on database db, a fresh copy of the template.
func tpcbVariant(ctx context.Context, admin *pgx.Conn, o liveOpts, db, kind string) (tpcbRun, error) {
	late := kind == "trigger-late" // the daemon starts after pgbench: what the triggers alone cost
	mode := strings.TrimSuffix(kind, "-late")
	run := tpcbRun{daemon: mode == "trigger" || mode == "logical", maintained: kind != "none"}
	// FILE_COPY (PostgreSQL 15+): the default WAL_LOG copy writes the whole database to the WAL
	// just before the run, whose writeback then competes with the run's WAL flushes.
	strategy := ""
	if o.cl.Version >= 15 {
		strategy = " STRATEGY FILE_COPY"
	}
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{db}.Sanitize()+` TEMPLATE `+pgx.Identifier{tpcbTemplate}.Sanitize()+
		` OWNER `+pgx.Identifier{appRole}.Sanitize()+strategy); err != nil {
		return run, err
	}
	defer dropDB(context.WithoutCancel(ctx), admin, db)
	su, err := connectAs(ctx, o.cl, o.cl.User, db)
	if err != nil {
		return run, err
	}
	defer su.Close(context.Background())
	app, err := connectAs(ctx, o.cl, appRole, db)
	if err != nil {
		return run, err
	}
	defer app.Close(context.Background())

	var m *matcolInstance
	var d *daemonProc
	slot := ""
	switch kind {
	case "hand":
		if _, err := app.Exec(ctx, handTrigger); err != nil {
			return run, err
		}
	case "trigger", "logical", "trigger-late":
		role := triggerRole
		if kind == "logical" {
			role, slot = logicalRole, "matcol"
			if _, err := app.Exec(ctx, `ALTER TABLE pgbench_history REPLICA IDENTITY FULL`); err != nil {
				return run, err
			}
		}
		if err := grantMatcol(ctx, su, db, role, mode, []string{"pgbench_accounts"}, []string{"pgbench_history"}); err != nil {
			return run, err
		}
		if m, err = setUpMatcol(ctx, o, db, mode, tpcbConfig); err != nil {
			return run, err
		}
		if late {
			break
		}
		if slot != "" {
			if _, err := su.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
				return run, err
			}
			defer dropSlot(context.WithoutCancel(ctx), admin, slot)
		}
		if d, err = m.start(); err != nil {
			return run, err
		}
		defer d.stop()
		if err := tpcbReady(ctx, su, d, slot); err != nil {
			return run, fmt.Errorf("%w\ndaemon log:\n%s", err, m.logTail())
		}
		// Anything stale or queued now means the daemon did not start from the template's state.
		var work bool
		if err := su.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pgbench_accounts WHERE materialized_at IS DISTINCT FROM
			(SELECT min(materialized_at) FROM pgbench_accounts))`).Scan(&work); err != nil {
			return run, err
		}
		run.stampedBefore = work
	}

	if _, err := su.Exec(ctx, `SELECT pg_prewarm(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND c.relname LIKE 'pgbench%' AND c.relkind IN ('r', 'i')`); err != nil {
		_, _ = su.Exec(ctx, `SELECT count(*) FROM pgbench_accounts`) // no pg_prewarm: read the table at least
	}
	if _, err := su.Exec(ctx, `CHECKPOINT`); err != nil {
		return run, err
	}
	syscall.Sync() // no writeback of earlier work during the run
	lsn := func() (string, error) {
		var l string
		err := su.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&l)
		return l, err
	}
	lsn0, err := lsn()
	if err != nil {
		return run, err
	}
	var cpu0 float64
	if d != nil {
		cpu0 = procCPU(d.cmd.Process.Pid)
	}
	var ws *walsenders
	if slot != "" {
		ws = watchWalsenders()
	}
	var sampler *backendSampler
	if d != nil {
		sconn, err := connectAs(ctx, o.cl, o.cl.User, db)
		if err != nil {
			return run, err
		}
		defer sconn.Close(context.Background())
		sampler = sampleBackends(ctx, sconn)
	}
	t := o.tpcb
	out, err := pgbenchCmd(ctx, o, db, "-n", "-b", "tpcb-like", "-c", strconv.Itoa(t.clients), "-j", "2",
		"-T", strconv.Itoa(int(t.runFor.Seconds())))
	ended := time.Now()
	if sampler != nil {
		run.backendCPU = sampler.end()
		sampler.print(kind)
	}
	if err != nil && !strings.Contains(out, "aborted") {
		return run, err
	}
	if err != nil {
		run.aborted = "some clients aborted: " + firstLine(out, "aborted")
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "number of transactions actually processed: "); ok {
			run.xacts, _ = strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
		if v, ok := strings.CutPrefix(line, "tps = "); ok && run.tps == 0 {
			run.tps, _ = strconv.ParseFloat(strings.Fields(v)[0], 64)
		}
	}
	if run.xacts == 0 || run.tps == 0 {
		return run, fmt.Errorf("pgbench printed no figures:\n%s", out)
	}
	lsn1, err := lsn()
	if err != nil {
		return run, err
	}
	if os.Getenv("MATCOL_BENCH_WALDUMP") != "" {
		walStats(o, kind, lsn0, lsn1)
	}
	if late {
		if d, err = m.start(); err != nil {
			return run, err
		}
		defer d.stop()
		cpu0 = procCPU(d.cmd.Process.Pid)
	}
	var cpu1 float64
	if d != nil {
		cpu1 = procCPU(d.cmd.Process.Pid)
		run.cpuRun = cpu1 - cpu0
		run.catchUp, err = caughtUp(ctx, su, d, ended, wait{table: "pgbench_accounts", slot: slot, lsn: lsn1, limit: o.limit})
		if errors.Is(err, errBehind) {
			run.behind = true
			run.stale, run.queued, err = behind(ctx, su, "pgbench_accounts")
		}
		if err != nil {
			return run, fmt.Errorf("catch-up: %w\ndaemon log:\n%s", err, m.logTail())
		}
		run.cpuCatchUp = procCPU(d.cmd.Process.Pid) - cpu1
		run.peakRSS = d.peakRSS()
	}
	if ws != nil {
		run.walsenderCPU = ws.end()
	}
	lsn2, err := lsn()
	if err != nil {
		return run, err
	}
	var wal1, wal2 float64
	if err := su.QueryRow(ctx, `SELECT pg_wal_lsn_diff($2::pg_lsn, $1::pg_lsn), pg_wal_lsn_diff($3::pg_lsn, $1::pg_lsn)`,
		lsn0, lsn1, lsn2).Scan(&wal1, &wal2); err != nil {
		return run, err
	}
	run.walRun, run.walAll = wal1/float64(run.xacts), wal2/float64(run.xacts)
	if m != nil {
		if run.verified, err = m.verifyAll(ctx); err != nil {
			return run, err
		}
		if err := d.stop(); err != nil {
			return run, fmt.Errorf("matcol run: %w\ndaemon log:\n%s", err, m.logTail())
		}
	}
	if run.maintained && !run.behind {
		var wrong int64
		if err := su.QueryRow(ctx, tpcbWrong).Scan(&wrong); err != nil {
			return run, err
		}
		if wrong > 0 {
			return run, fmt.Errorf("%d accounts have a wrong history_count or history_delta", wrong)
		}
	}
	return run, nil
}

// tpcbReady waits until the daemon is up: in logical mode until it streams from the slot, then
// until nothing is stale or queued.
func tpcbReady(ctx context.Context, su *pgx.Conn, d *daemonProc, slot string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for slot != "" {
		var active bool
		if err := su.QueryRow(ctx, `SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = $1), false)`, slot).Scan(&active); err != nil {
			return err
		}
		if active {
			break
		}
		if err := d.alive(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return errors.New("the daemon did not stream from its slot within 2 minutes")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // the first drain and sweep
	_, err := caughtUp(ctx, su, d, time.Now(), wait{table: "pgbench_accounts", limit: 2 * time.Minute})
	return err
}

func firstLine(out, containing string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, containing) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// walStats prints pg_waldump's per-record statistics of the WAL a variant's pgbench run wrote
// (MATCOL_BENCH_WALDUMP set): which records make up its bytes per transaction.
func walStats(o liveOpts, kind, from, to string) {
	out, err := exec.Command(filepath.Join(o.cl.BinDir, "pg_waldump"), "--stats=record", "-p", filepath.Join(o.cl.DataDir, "pg_wal"),
		"-s", from, "-e", to).CombinedOutput()
	if err != nil {
		fmt.Printf("pg_waldump for %s: %v\n", kind, err)
	}
	fmt.Printf("WAL of the %s run:\n%s\n", kind, out)
}

// walsenders adds up the CPU of the server's walsenders from its start to end, the ones that
// start meanwhile included: matcol's listener ends its walsender while it holds decoding, and the
// one it starts after decodes the held WAL.
type walsenders struct {
	mu    sync.Mutex
	first map[int]float64 // CPU when first seen; 0 for a process started after the watch began
	last  map[int]float64
	stop  chan struct{}
	done  chan struct{}
}

func watchWalsenders() *walsenders {
	w := &walsenders{first: map[int]float64{}, last: map[int]float64{}, stop: make(chan struct{}), done: make(chan struct{})}
	w.scan(true)
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
				w.scan(false)
			}
		}
	}()
	return w
}

// scan reads the CPU of every walsender process (its title starts with "postgres: walsender").
func (w *walsenders) scan(initial bool) {
	dirs, _ := os.ReadDir("/proc")
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range dirs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.HasPrefix(string(cmd), "postgres: walsender") {
			continue
		}
		cpu := procCPU(pid)
		if _, ok := w.first[pid]; !ok {
			w.first[pid] = 0
			if initial {
				w.first[pid] = cpu
			}
		}
		w.last[pid] = max(w.last[pid], cpu)
	}
}

// end stops the watch and returns the CPU seconds the walsenders used meanwhile.
func (w *walsenders) end() float64 {
	w.scan(false)
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	var sum float64
	for pid, c := range w.last {
		sum += c - w.first[pid]
	}
	return sum
}
