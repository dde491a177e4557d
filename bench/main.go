// Command bench measures matcol against its alternatives on a throwaway local PostgreSQL and
// writes docs/benchmarks.md. Every figure is a ratio against a baseline timed in the same run.
//
//	go run ./bench [-snapshots 300000] [-seats 50] [-scattered] [-load-for 15s] [-pgbench-for 10s] [-out docs/benchmarks.md]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/daemon"
	"github.com/matcol/matcol/internal/demo"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgcluster"
	"github.com/matcol/matcol/registry"
)

type report struct {
	lines   []string
	targets []string
	missed  map[string]bool
}

// target records one figure against its target for the summary.
func (r *report) target(figure, measured, goal string, met bool, why string) {
	verdict := "met"
	if !met {
		verdict = "**missed**"
		if r.missed == nil {
			r.missed = map[string]bool{}
		}
		r.missed[why] = true
	}
	r.targets = append(r.targets, fmt.Sprintf("| %s | %s | %s | %s |", figure, measured, goal, verdict))
}

func (r *report) add(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	fmt.Println(line)
	r.lines = append(r.lines, line)
}

func main() {
	snapshots := flag.Int("snapshots", 300_000, "event_seat_state_change rows")
	seats := flag.Int("seats", 50, "seat_state rows per snapshot")
	out := flag.String("out", "docs/benchmarks.md", "where to write the results ('' for stdout only)")
	loadFor := flag.Duration("load-for", 15*time.Second, "how long each freshness load level runs")
	benchFor := flag.Duration("pgbench-for", 10*time.Second, "how long each pgbench run lasts")
	scattered := flag.Bool("scattered", false, "load seat_state seat by seat, so each snapshot's seats lie on as many pages as it has seats")
	orders := flag.Int("orders", 1_000_000, "orders rows of the light backfill")
	only := flag.String("only", "", "'backfill' runs the backfill comparisons alone")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *snapshots, *seats, *out, liveOpts{loadFor: *loadFor, benchFor: *benchFor, scattered: *scattered, orders: *orders, only: *only}); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

const seatSchema = `
CREATE TABLE event_seat_state_change (
    id bigint PRIMARY KEY, event_id bigint NOT NULL,
    sold_count int, reserved_count int, empty_count int, materialized_at timestamptz);
CREATE TABLE seat_state (
    change_id bigint NOT NULL, seat_id int NOT NULL, state text NOT NULL,
    PRIMARY KEY (change_id, seat_id));
`

const seatEnrichment = `SELECT c.id,
       count(*) FILTER (WHERE s.state = 'SOLD')::int AS sold_count,
       count(*) FILTER (WHERE s.state = 'RESERVED')::int AS reserved_count,
       count(*) FILTER (WHERE s.state = 'EMPTY')::int AS empty_count
FROM event_seat_state_change c LEFT JOIN seat_state s ON s.change_id = c.id
WHERE c.id = ANY($1) GROUP BY c.id`

const setBasedUpdate = `UPDATE event_seat_state_change c
SET sold_count = s.sold, reserved_count = s.reserved, empty_count = s.empty
FROM (SELECT change_id,
             count(*) FILTER (WHERE state = 'SOLD')::int AS sold,
             count(*) FILTER (WHERE state = 'RESERVED')::int AS reserved,
             count(*) FILTER (WHERE state = 'EMPTY')::int AS empty
      FROM seat_state GROUP BY change_id) s
WHERE c.id = s.change_id`

const matviewSQL = `CREATE MATERIALIZED VIEW seat_counts AS
SELECT change_id,
       count(*) FILTER (WHERE state = 'SOLD')::int AS sold,
       count(*) FILTER (WHERE state = 'RESERVED')::int AS reserved,
       count(*) FILTER (WHERE state = 'EMPTY')::int AS empty
FROM seat_state GROUP BY change_id WITH NO DATA`

func run(ctx context.Context, snapshots, seats int, out string, o liveOpts) error {
	began := time.Now()
	r := &report{}
	fmt.Println("starting a throwaway PostgreSQL cluster…")
	cl, err := pgcluster.Start(ctx, pgcluster.Options{Settings: map[string]string{
		"shared_buffers": "1GB", "max_wal_size": "8GB", "checkpoint_timeout": "30min",
		"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}})
	if err != nil {
		return err
	}
	defer cl.Stop()
	o.cl = cl
	if o.dir, err = os.MkdirTemp("", "matcol-bench-"); err != nil {
		return err
	}
	defer os.RemoveAll(o.dir)
	if o.bin, err = buildMatcol(ctx, o.dir); err != nil {
		return err
	}
	dsn := cl.DSN("postgres")
	conn, err := dial.Connect(ctx, dsn, "bench")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var version string
	if err := conn.QueryRow(ctx, `SHOW server_version`).Scan(&version); err != nil {
		return err
	}
	// An application writes a snapshot's seats together, so they share pages; -scattered spreads
	// them over as many pages as there are seats.
	order, layout := "c, s", "each snapshot's seats written together, as an application writes them"
	if o.scattered {
		order, layout = "s, c", "each snapshot's seats scattered over as many pages as it has seats (-scattered)"
	}
	fmt.Printf("loading %d snapshots × %d seats…\n", snapshots, seats)
	start := time.Now()
	for _, stmt := range []string{
		seatSchema,
		fmt.Sprintf(`INSERT INTO event_seat_state_change (id, event_id) SELECT g, g / 10 FROM generate_series(1, %d) g`, snapshots),
		fmt.Sprintf(`INSERT INTO seat_state SELECT c, s, (ARRAY['SOLD','RESERVED','EMPTY'])[1 + (c * 7 + s) %% 3]
			FROM generate_series(1, %d) c, generate_series(1, %d) s ORDER BY %s`, snapshots, seats, order),
		`VACUUM (ANALYZE) event_seat_state_change`, `VACUUM (ANALYZE) seat_state`,
		matviewSQL,
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("load: %w", err)
		}
	}
	fmt.Printf("loaded in %s\n", time.Since(start).Round(time.Second))

	// Full backfill: the set-based UPDATE, REFRESH MATERIALIZED VIEW, and matcol backfill.
	def := registry.Enrichment{Name: "seat_counts", Self: new(true), SQL: seatEnrichment,
		Columns: []string{"sold_count", "reserved_count", "empty_count"}}
	def.Target.Schema, def.Target.Name = "public", "event_seat_state_change"
	seatCase := backfillCase{conn: conn, dsn: dsn, def: def, setBased: setBasedUpdate, table: "event_seat_state_change",
		reset: `UPDATE event_seat_state_change SET sold_count = NULL, reserved_count = NULL, empty_count = NULL`}
	fmt.Println("backfilling seat counts…")
	bt, err := seatCase.run(ctx)
	if err != nil {
		return err
	}
	refresh, err := timed(ctx, conn, `REFRESH MATERIALIZED VIEW seat_counts`)
	if err != nil {
		return err
	}
	var wrong int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM event_seat_state_change c JOIN seat_counts v ON v.change_id = c.id
		WHERE (c.sold_count, c.reserved_count, c.empty_count) IS DISTINCT FROM (v.sold, v.reserved, v.empty)`).Scan(&wrong); err != nil {
		return err
	}
	if wrong > 0 {
		return fmt.Errorf("backfill left %d wrong rows", wrong)
	}
	rate := func(d time.Duration) float64 { return float64(snapshots) / d.Seconds() }
	r.add("# Benchmarks")
	r.add("")
	r.add("Produced by `%s` on %s, %s (%d cores, %s RAM), PostgreSQL %s, %s.",
		strings.Join(append([]string{"go run ./bench"}, os.Args[1:]...), " "), cpuModel(), runtime.GOOS+"/"+runtime.GOARCH,
		runtime.NumCPU(), memTotal(), version, time.Now().UTC().Format("2006-01-02"))
	r.add("Every ratio is against a baseline timed in the same run on the same data.")
	r.add("")
	r.add("## Full backfill of an aggregate (%d snapshots × %d seats)", snapshots, seats)
	r.add("")
	r.add("`seat_state` layout: %s. `REFRESH MATERIALIZED VIEW` of the same aggregate took %s (%.0f rows/s).",
		layout, refresh.Round(time.Millisecond), rate(refresh))
	r.add("")
	bt.report(r, "seat_counts", snapshots)
	r.add("")
	r.add("The backfill computes each batch in about 150 ms (adaptive batch size), checkpoints after each batch, and writes only the enrichment's columns, never locking a row longer than its batch. By default it writes two batches at once on two connections; the set-based UPDATE is one backend holding every row lock until it commits. Both run after a CHECKPOINT; the set-based UPDATE is the better of two runs and runs before matcol's triggers exist.")
	r.add("")
	for _, lc := range []loadedCase{ordersCase(o.orders, 3), purchasesCase(300_000, 5)} {
		if err := lc.run(ctx, r, conn, o); err != nil {
			return err
		}
	}
	if o.only == "backfill" {
		return r.finish(out, began)
	}
	if err := catchUp(ctx, r, conn, dsn, snapshots); err != nil {
		return err
	}
	fmt.Println("freshness latency…")
	if err := freshnessBench(ctx, r, conn, o); err != nil {
		return err
	}
	fmt.Println("write overhead…")
	if err := writeOverhead(ctx, r, conn, o, demo.Schema); err != nil {
		return err
	}
	return r.finish(out, began)
}

// finish adds the targets and writes the report to out.
func (r *report) finish(out string, began time.Time) error {
	r.add("## Against the targets")
	r.add("")
	r.add("| figure | measured | target | |")
	r.add("|---|---|---|---|")
	r.lines = append(r.lines, r.targets...)
	r.add("")
	for _, why := range []string{whyBackfill, whyCatchUp, whyFreshness, whyTrigger, whyLogical, whyFootprint} {
		if r.missed[why] {
			r.add("%s", why)
			r.add("")
		}
	}
	r.add("The whole run took %s.", time.Since(began).Round(time.Second))
	if out != "" {
		return os.WriteFile(out, []byte(strings.Join(r.lines, "\n")+"\n"), 0o644)
	}
	return nil
}

// catchUp changes 0.1% and 1% of the snapshots' seats under a running daemon and times how long
// matcol takes to make every row fresh again, against REFRESH MATERIALIZED VIEW, plain and
// CONCURRENTLY, over the same data.
func catchUp(ctx context.Context, r *report, conn *pgx.Conn, dsn string, snapshots int) error {
	if _, err := conn.Exec(ctx, `CREATE UNIQUE INDEX ON seat_counts (change_id)`); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `CREATE INDEX esc_stale ON event_seat_state_change (id) WHERE materialized_at IS NULL`); err != nil {
		return err
	}
	f, err := os.CreateTemp("", "matcol-bench-*.yaml")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	fmt.Fprintf(f, "database_url: %q\nstatus: {listen: \"\"}\nmaterializer: {workers: 2}\nenrichments:\n  - name: seat_counts\n    table: public.event_seat_state_change\n    columns: [sold_count, reserved_count, empty_count]\n    sql: %q\n    depends_on: [{table: public.seat_state, columns: [change_id]}]\n", dsn, seatEnrichment)
	_ = f.Close()
	cfg, err := config.Load(f.Name(), nil)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	// Stamp everything (the backfill filled the values) so the daemon starts idle.
	if _, err := conn.Exec(ctx, `UPDATE event_seat_state_change SET materialized_at = now()`); err != nil {
		return err
	}
	// As autovacuum would soon: statistics from the load say every row is stale, and with them
	// the claim query scans the whole table for the few stale rows.
	if _, err := conn.Exec(ctx, `VACUUM ANALYZE event_seat_state_change`); err != nil {
		return err
	}
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	d, err := daemon.Start(dctx, cfg, hclog.NewNullLogger())
	if err != nil {
		return err
	}
	go func() { _ = d.Wait(dctx) }()
	if err := waitFresh(ctx, conn, "event_seat_state_change", 10*time.Minute); err != nil {
		return err
	}
	refreshPlain, err := timed(ctx, conn, `REFRESH MATERIALIZED VIEW seat_counts`)
	if err != nil {
		return err
	}
	refreshConc, err := timed(ctx, conn, `REFRESH MATERIALIZED VIEW CONCURRENTLY seat_counts`)
	if err != nil {
		return err
	}
	r.add("## Incremental catch-up after a change")
	r.add("")
	r.add("A share of the snapshots gets one seat changed (one UPDATE statement, committed); matcol's time runs from that commit until no row is stale and the queue is empty, with the daemon running (2 workers). The REFRESH times are for the whole view, which is what a matview needs after any change.")
	r.add("")
	r.add("| change | matcol catch-up | REFRESH (plain) | REFRESH CONCURRENTLY | matcol vs plain | matcol vs concurrently | target (1%%) |")
	r.add("|---|---|---|---|---|---|---|")
	for _, pct := range []float64{0.1, 1} {
		every := int(100 / pct)
		if _, err := conn.Exec(ctx, fmt.Sprintf(`UPDATE seat_state SET state = CASE state WHEN 'SOLD' THEN 'EMPTY' ELSE 'SOLD' END
			WHERE change_id %% %d = 0 AND seat_id = 1`, every)); err != nil {
			return err
		}
		start := time.Now() // the commit: the statement's own scan of seat_state is not matcol's

		if err := waitFresh(ctx, conn, "event_seat_state_change", 10*time.Minute); err != nil {
			return err
		}
		took := time.Since(start)
		target := ""
		if pct == 1 {
			target = "≥ 20× faster than REFRESH"
		}
		if pct == 1 {
			x := min(refreshPlain.Seconds(), refreshConc.Seconds()) / took.Seconds()
			r.target("catch-up after a 1% change", fmt.Sprintf("%.1f× faster than the faster REFRESH", x), "≥ 20×", x >= 20, whyCatchUp)
		}
		r.add("| %.1f%% (%d rows) | %s | %s | %s | **%.1f×** | **%.1f×** | %s |", pct, snapshots/every, took.Round(time.Millisecond),
			refreshPlain.Round(time.Millisecond), refreshConc.Round(time.Millisecond),
			refreshPlain.Seconds()/took.Seconds(), refreshConc.Seconds()/took.Seconds(), target)
	}
	r.add("")
	return nil
}

func timed(ctx context.Context, conn *pgx.Conn, sql string) (time.Duration, error) {
	if _, err := conn.Exec(ctx, `CHECKPOINT`); err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := conn.Exec(ctx, sql); err != nil {
		return 0, fmt.Errorf("%s: %w", strings.SplitN(sql, "\n", 2)[0], err)
	}
	return time.Since(start), nil
}
