// Command bench measures matcol against its alternatives on a throwaway local PostgreSQL and
// writes docs/benchmarks.md. Every figure is a ratio against a baseline timed in the same run.
//
//	go run ./bench [-only catchup,tpcb] [-out docs/benchmarks.md] [scenario flags; see -h]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/internal/demo"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgcluster"
)

func main() {
	snapshots := flag.Int("snapshots", 300_000, "event_seat_state_change rows of the aggregate backfill")
	seats := flag.Int("seats", 50, "seat_state rows per snapshot of the aggregate backfill")
	out := flag.String("out", "docs/benchmarks.md", "where to write the results ('' for stdout only)")
	loadFor := flag.Duration("load-for", 15*time.Second, "how long each freshness load level runs")
	benchFor := flag.Duration("pgbench-for", 10*time.Second, "how long each write-overhead pgbench run lasts")
	scattered := flag.Bool("scattered", false, "load seat_state seat by seat, so each snapshot's seats lie on as many pages as it has seats")
	orders := flag.Int("orders", 1_000_000, "orders rows of the light backfill")
	only := flag.String("only", "", "run only these scenarios, comma-separated: "+strings.Join(scenarios, ", ")+
		"; their sections replace the same sections in -out")
	var c catchupOpts
	flag.IntVar(&c.rows, "catchup-rows", 200_000, "catch-up: target rows (development: 20000)")
	flag.IntVar(&c.seats, "catchup-seats", 50, "catch-up: child rows per target row")
	flag.StringVar(&c.pcts, "catchup-pcts", "0.1,1,10,30,100", "catch-up: percentages of target rows changed, one run each")
	flag.IntVar(&c.resyncRows, "resync-rows", 500_000, "catch-up: rows of the logical first-start resync (development: 50000; 0 skips it)")
	flag.IntVar(&c.resyncSeats, "resync-seats", 10, "catch-up: child rows per row of the resync table")
	limit := flag.Duration("limit", 10*time.Minute, "catchup, tpcb: the longest wait for matcol to catch up; past it the figure reads \"not caught up\" and the scenario goes on")
	var t tpcbOpts
	flag.IntVar(&t.scale, "tpcb-scale", 10, "tpcb: pgbench -i scale (development: 1)")
	flag.DurationVar(&t.runFor, "tpcb-for", 20*time.Second, "tpcb: how long each pgbench run lasts (development: 5s)")
	flag.IntVar(&t.clients, "tpcb-clients", 8, "tpcb: pgbench clients (-c; -j is 2)")
	flag.IntVar(&t.rounds, "tpcb-rounds", 2, "tpcb: rounds of every variant, each between two baseline runs")
	flag.StringVar(&t.variants, "tpcb-variants", "", "tpcb: only these variants, comma-separated: hand, trigger, logical, trigger-late (development)")
	flag.Parse()
	o := liveOpts{loadFor: *loadFor, benchFor: *benchFor, scattered: *scattered, orders: *orders, catchup: c, tpcb: t, limit: *limit}
	if *only != "" {
		for _, name := range strings.Split(*only, ",") {
			if !slices.Contains(scenarios, name) {
				fmt.Fprintf(os.Stderr, "bench: -only %s: no such scenario; choose from %s\n", name, strings.Join(scenarios, ", "))
				os.Exit(2)
			}
			o.only = append(o.only, name)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *snapshots, *seats, *out, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// scenarios are what -only selects, in the order a full run takes them.
var scenarios = []string{"backfill", "catchup", "tpcb", "freshness", "writes"}

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

// sharedBuffers is the bench cluster's shared_buffers; hugePagesWanted, the free huge pages it
// takes to use them, with the rest of shared memory.
const (
	sharedBuffers   = 1 << 30
	hugePagesWanted = sharedBuffers * 6 / 5
)

func run(ctx context.Context, snapshots, seats int, out string, o liveOpts) error {
	began := time.Now()
	fmt.Println("starting a throwaway PostgreSQL cluster…")
	settings := map[string]string{
		"shared_buffers": fmt.Sprintf("%dMB", sharedBuffers>>20), "max_wal_size": "8GB", "checkpoint_timeout": "30min",
		"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on", "huge_pages": "off"}
	// Huge pages when the machine has enough free: with 4 kB pages each backend's first touch of
	// each page of shared memory faults, which a baseline's backend has mostly paid in the change
	// it just ran and matcol's workers have not (docs/operations.md, huge pages). Reported either way.
	if hugePagesFree() >= hugePagesWanted {
		settings["huge_pages"] = "on"
	}
	// MATCOL_BENCH_PGCONF="name=value;…" adds settings, for a look inside (auto_explain, say).
	for _, kv := range strings.Split(os.Getenv("MATCOL_BENCH_PGCONF"), ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			settings[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	o.hugePages = settings["huge_pages"]
	cl, err := pgcluster.Start(ctx, pgcluster.Options{Settings: settings})
	if err != nil {
		return err
	}
	defer cl.Stop()
	if os.Getenv("MATCOL_BENCH_KEEP") != "" {
		defer func() {
			b, _ := os.ReadFile(filepath.Join(filepath.Dir(cl.DataDir), "server.log"))
			_ = os.WriteFile(filepath.Join(o.dir, "server.log"), b, 0o644)
		}()
	}
	o.cl = cl
	if o.dir, err = os.MkdirTemp("", "matcol-bench-"); err != nil {
		return err
	}
	if os.Getenv("MATCOL_BENCH_KEEP") == "" {
		defer os.RemoveAll(o.dir)
	} else {
		fmt.Println("keeping daemon logs in", o.dir)
	}
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
	r := &report{partial: len(o.only) > 0}
	r.provenance = fmt.Sprintf("Produced by `%s` on %s, %s (%d cores, %s RAM), PostgreSQL %s (huge_pages %s, shared memory THP %s), %s.",
		strings.Join(append([]string{"go run ./bench"}, os.Args[1:]...), " "), cpuModel(), runtime.GOOS+"/"+runtime.GOARCH,
		runtime.NumCPU(), memTotal(), version, o.hugePages, shmemTHP(), time.Now().UTC().Format("2006-01-02"))
	want := func(name string) bool { return len(o.only) == 0 || slices.Contains(o.only, name) }
	if want("backfill") {
		if err := backfills(ctx, r, conn, dsn, snapshots, seats, o); err != nil {
			return err
		}
	}
	if want("catchup") || want("tpcb") {
		if err := createRoles(ctx, conn); err != nil {
			return err
		}
	}
	if want("catchup") {
		fmt.Println("catch-up…")
		if err := catchUpBench(ctx, r, conn, o); err != nil {
			return err
		}
	}
	if want("tpcb") {
		fmt.Println("pgbench tpcb-like…")
		if err := tpcbBench(ctx, r, conn, o); err != nil {
			return err
		}
	}
	if want("freshness") {
		fmt.Println("freshness latency…")
		if err := freshnessBench(ctx, r, conn, o); err != nil {
			return err
		}
	}
	if want("writes") {
		fmt.Println("write overhead…")
		if err := writeOverhead(ctx, r, conn, o, demo.Schema); err != nil {
			return err
		}
	}
	return r.finish(out, began)
}

// backfills compares matcol backfill with a set-based UPDATE on three shapes.
func backfills(ctx context.Context, r *report, conn *pgx.Conn, dsn string, snapshots, seats int, o liveOpts) error {
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
	def := enrichmentOn("seat_counts", "event_seat_state_change", "seat_state", "change_id", seatEnrichment,
		"sold_count", "reserved_count", "empty_count")
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
	r.heading("Full backfill of an aggregate (%d snapshots × %d seats)", snapshots, seats)
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
