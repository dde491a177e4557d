package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/matcol/matcol/internal/pgcluster"
)

// daemonProc is `matcol run` in its own process, so that its CPU and memory are its own.
type daemonProc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process ends
	err    error         // its exit status, once exited is closed
	log    string
}

func buildMatcol(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "matcol")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/matcol").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/matcol: %w\n%s", err, out)
	}
	return bin, nil
}

// writeConfig writes a matcol config for one enrichment in the given invalidation mode.
func writeConfig(dir, name, dsn, mode, enrichment string) (string, error) {
	path := filepath.Join(dir, name+".yaml")
	cfg := fmt.Sprintf(`database_url: %q
log_level: warn
status: {listen: ""}
invalidation: {mode: %s, slot: %s, publication: %s, fix_replica_identity: true}
enrichments:
%s`, dsn, mode, name, name, enrichment)
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

func matcolCmd(ctx context.Context, bin string, args ...string) error {
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("matcol %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func startDaemon(bin, cfg, logPath string) (*daemonProc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "-c", cfg)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	p := &daemonProc{cmd: cmd, exited: make(chan struct{}), log: logPath}
	go func() { p.err = cmd.Wait(); lf.Close(); close(p.exited) }()
	return p, nil
}

// alive fails once the daemon has exited.
func (p *daemonProc) alive() error {
	select {
	case <-p.exited:
		return fmt.Errorf("matcol run exited early (%v); log: %s", p.err, p.log)
	default:
		return nil
	}
}

func (p *daemonProc) stop() error {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
		return p.err
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		return errors.New("matcol run did not stop within 30s")
	}
}

// cpu returns the process's user+system CPU seconds.
func (p *daemonProc) cpu() float64 { return procCPU(p.cmd.Process.Pid) }

// rss returns the resident set size in bytes.
func (p *daemonProc) rss() int64 { return procStatusKB(p.cmd.Process.Pid, "VmRSS:") * 1024 }

// peakRSS is the process's peak resident set size (VmHWM), in bytes.
func (p *daemonProc) peakRSS() int64 {
	return procStatusKB(p.cmd.Process.Pid, "VmHWM:") * 1024
}

func procStatusKB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb
		}
	}
	return 0
}

// procCPU is a process's user+system CPU seconds, from /proc/PID/stat.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / 100 // USER_HZ is 100 on Linux
}

// footprint samples a daemon's CPU share and peak RSS while f runs.
type footprint struct {
	cpuShare float64 // CPU seconds per wall second
	peakRSS  int64
}

func measure(p *daemonProc, f func() error) (footprint, error) {
	stop := make(chan struct{})
	var peak atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if r := p.rss(); r > peak.Load() {
				peak.Store(r)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	c0, t0 := p.cpu(), time.Now()
	err := f()
	fp := footprint{cpuShare: (p.cpu() - c0) / time.Since(t0).Seconds()}
	close(stop)
	wg.Wait()
	fp.peakRSS = peak.Load()
	return fp, err
}

const freshSchema = `
CREATE TABLE item (id bigint PRIMARY KEY, total bigint, last_write timestamptz, materialized_at timestamptz);
CREATE INDEX item_stale ON item (id) WHERE materialized_at IS NULL;
CREATE TABLE item_line (id bigserial PRIMARY KEY, item_id bigint NOT NULL, amount int NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX ON item_line (item_id);
-- When a materialized row first reflects a write: logged in matcol's batch, before it commits.
CREATE TABLE fresh_log (item_id bigint NOT NULL, last_write timestamptz NOT NULL, seen_at timestamptz NOT NULL);
CREATE INDEX ON fresh_log (item_id, last_write);
CREATE FUNCTION log_fresh() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO fresh_log VALUES (NEW.id, NEW.last_write, clock_timestamp());
  RETURN NULL;
END $$;
CREATE TRIGGER log_fresh AFTER UPDATE ON item FOR EACH ROW
  WHEN (NEW.last_write IS DISTINCT FROM OLD.last_write AND NEW.last_write IS NOT NULL)
  EXECUTE FUNCTION log_fresh();
INSERT INTO item SELECT g, 0, NULL, now() FROM generate_series(1, 10000) g;
ANALYZE;
`

const freshEnrichment = `  - name: item_totals
    table: public.item
    columns: [total, last_write]
    sql: |
      SELECT i.id, coalesce(sum(l.amount), 0)::bigint AS total, max(l.written_at) AS last_write
      FROM item i LEFT JOIN item_line l ON l.item_id = i.id WHERE i.id = ANY($1) GROUP BY i.id
    depends_on:
      - table: public.item_line
        columns: [item_id]
`

type latency struct {
	rate          float64 // writes per second achieved
	writes        int64
	p50, p95, p99 time.Duration
	max           time.Duration
	missing       int64
}

// writeLoad inserts item lines at rate per second (0: as fast as the writers go) for d.
func writeLoad(ctx context.Context, pool *pgxpool.Pool, rate float64, writers int, d time.Duration) (int64, time.Duration, error) {
	var tokens chan struct{}
	lctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if rate > 0 {
		tokens = make(chan struct{}, 1<<16)
		go func() {
			start, sent := time.Now(), 0
			t := time.NewTicker(time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-lctx.Done():
					close(tokens)
					return
				case <-t.C:
					for due := int(rate * time.Since(start).Seconds()); sent < due; sent++ {
						select {
						case tokens <- struct{}{}:
						default: // writers are behind; the shortfall shows in the achieved rate
						}
					}
				}
			}
		}()
	}
	var n atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, writers)
	start := time.Now()
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			seed := uint64(w)*0x9E3779B97F4A7C15 + 1
			for {
				if tokens != nil {
					if _, ok := <-tokens; !ok {
						return
					}
				} else if lctx.Err() != nil {
					return
				}
				seed ^= seed << 13
				seed ^= seed >> 7
				seed ^= seed << 17
				if _, err := pool.Exec(lctx, `INSERT INTO item_line (item_id, amount) VALUES ($1, 1)`, int64(seed%10000)+1); err != nil {
					if lctx.Err() != nil {
						return
					}
					errc <- err
					return
				}
				n.Add(1)
			}
		}(w)
	}
	wg.Wait()
	took := time.Since(start)
	select {
	case err := <-errc:
		return 0, 0, err
	default:
	}
	return n.Load(), took, nil
}

func waitFresh(ctx context.Context, conn *pgx.Conn, table string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		var n int64
		if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+table+` WHERE materialized_at IS NULL)
			+ (SELECT count(*) FROM matcol.pending)`).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s was not fresh within %s", table, limit)
}

// freshness runs one load level and reads each write's latency from fresh_log.
func freshness(ctx context.Context, conn *pgx.Conn, pool *pgxpool.Pool, slot string, rate float64, d time.Duration) (latency, error) {
	var first int64
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM item_line`).Scan(&first); err != nil {
		return latency{}, err
	}
	n, took, err := writeLoad(ctx, pool, rate, 16, d)
	if err != nil {
		return latency{}, err
	}
	if err := waitDecoded(ctx, conn, slot); err != nil {
		return latency{}, err
	}
	if err := waitFresh(ctx, conn, "item", 5*time.Minute); err != nil {
		return latency{}, err
	}
	var wrong int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM item i WHERE total IS DISTINCT FROM
		(SELECT count(*) FROM item_line l WHERE l.item_id = i.id)`).Scan(&wrong); err != nil {
		return latency{}, err
	}
	if wrong > 0 {
		return latency{}, fmt.Errorf("%d items have a wrong total after catching up", wrong)
	}
	l := latency{writes: n, rate: float64(n) / took.Seconds()}
	var p50, p95, p99, mx *float64
	err = conn.QueryRow(ctx, `
		SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lat), percentile_cont(0.95) WITHIN GROUP (ORDER BY lat),
		       percentile_cont(0.99) WITHIN GROUP (ORDER BY lat), max(lat), count(*) FILTER (WHERE lat IS NULL)
		FROM (SELECT extract(epoch FROM (SELECT min(f.seen_at) FROM fresh_log f
		                                 WHERE f.item_id = l.item_id AND f.last_write >= l.written_at) - l.written_at) AS lat
		      FROM item_line l WHERE l.id > $1) s`, first).Scan(&p50, &p95, &p99, &mx, &l.missing)
	if err != nil {
		return latency{}, err
	}
	sec := func(f *float64) time.Duration {
		if f == nil {
			return 0
		}
		return time.Duration(*f * float64(time.Second))
	}
	l.p50, l.p95, l.p99, l.max = sec(p50), sec(p95), sec(p99), sec(mx)
	return l, nil
}

func createDB(ctx context.Context, conn *pgx.Conn, cl *pgcluster.Cluster, name, schema string) (*pgx.Conn, error) {
	if _, err := conn.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{name}.Sanitize()); err != nil {
		return nil, err
	}
	c, err := pgx.Connect(ctx, cl.DSN(name))
	if err != nil {
		return nil, err
	}
	if _, err := c.Exec(ctx, schema); err != nil {
		c.Close(ctx)
		return nil, fmt.Errorf("load %s: %w", name, err)
	}
	return c, nil
}

// waitDecoded waits until a logical slot has confirmed all WAL written so far, so that every
// change is in the queue or applied. No-op without a slot.
func waitDecoded(ctx context.Context, conn *pgx.Conn, slot string) error {
	if slot == "" {
		return nil
	}
	var lsn string
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		return err
	}
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		var done bool
		if err := conn.QueryRow(ctx, `SELECT coalesce((SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots
			WHERE slot_name = $1), false)`, slot, lsn).Scan(&done); err != nil {
			return err
		}
		if done {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("slot %s did not confirm %s within 5 minutes", slot, lsn)
}

// waitSlot waits until the logical slot is streaming and its first-start resync is done.
func waitSlot(ctx context.Context, conn *pgx.Conn, slot, table string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		var active bool
		err := conn.QueryRow(ctx, `SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = $1), false)`, slot).Scan(&active)
		if err != nil {
			return err
		}
		if active {
			time.Sleep(time.Second)
			return waitFresh(ctx, conn, table, 5*time.Minute)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("slot %s did not become active within 2 minutes", slot)
}

// startCaughtUp runs `matcol run` with config cfg (whose slot is named name) and returns once
// table is fresh: in logical mode, once the slot streams and its first-start resync is done.
func startCaughtUp(ctx context.Context, conn *pgx.Conn, o liveOpts, cfg, name, mode, table string) (*daemonProc, error) {
	p, err := startDaemon(o.bin, cfg, filepath.Join(o.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	if mode == "logical" {
		err = waitSlot(ctx, conn, name, table)
	} else {
		time.Sleep(2 * time.Second) // the daemon's first drain
		err = waitFresh(ctx, conn, table, 2*time.Minute)
	}
	if err != nil {
		_ = p.stop()
		return nil, fmt.Errorf("%s: %w (daemon log: %s)", name, err, p.log)
	}
	return p, nil
}

type liveOpts struct {
	bin, dir  string
	hugePages string // the cluster's huge_pages setting, for the report
	cl        *pgcluster.Cluster
	loadFor   time.Duration // per freshness level
	benchFor  time.Duration // per pgbench run
	scattered bool          // seat_state in seat order rather than snapshot order
	orders    int           // orders rows of the light backfill
	only      []string      // scenarios to run; none: all
	catchup   catchupOpts
	tpcb      tpcbOpts
	limit     time.Duration // the longest catch-up the catchup and tpcb scenarios wait for
}

// freshnessBench measures source-commit-to-materialized latency in both modes, and the daemon's
// footprint idle and under load.
func freshnessBench(ctx context.Context, r *report, admin *pgx.Conn, o liveOpts) error {
	conn, err := createDB(ctx, admin, o.cl, "fresh", freshSchema)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	dsn := o.cl.DSN("fresh")
	pool, err := pgxpool.New(ctx, dsn+"&pool_max_conns=16")
	if err != nil {
		return err
	}
	defer pool.Close()
	r.heading("Freshness latency")
	r.add("16 writers insert `item_line` rows (autocommit, `synchronous_commit = on`) at a fixed rate for %s, spread over 10,000 `item` rows whose `total` and `last_write` matcol maintains. A trigger on `item` logs when a materialized row first reflects each write; latency runs from the write's `clock_timestamp()` to that moment, both read on the server. \"max\" is 16 writers as fast as they go, which saturates the server: their commits queue for the WAL with every connection busy, so matcol's throttle yields to them (up to `throttle.max_delay`, 30 s) and recomputes after the load; latency there is that wait, and the achieved rate is what the writers reach with matcol out of their way. Target: p99 ≤ 250 ms at 1,000 writes/s.", o.loadFor)
	r.add("")
	r.add("| mode | offered writes/s | achieved writes/s | p50 | p95 | p99 | max | daemon CPU | daemon peak RSS |")
	r.add("|---|---|---|---|---|---|---|---|---|")
	var idle []string
	for _, mode := range []string{"trigger", "logical"} {
		cfg, err := writeConfig(o.dir, "fresh_"+mode, dsn, mode, freshEnrichment)
		if err != nil {
			return err
		}
		if err := matcolCmd(ctx, o.bin, "apply", "-c", cfg); err != nil {
			return err
		}
		p, err := startCaughtUp(ctx, conn, o, cfg, "fresh_"+mode, mode, "item")
		if err != nil {
			return err
		}
		fp, _ := measure(p, func() error { time.Sleep(o.loadFor); return nil })
		idle = append(idle, fmt.Sprintf("| %s | %.3f%% of a core | %.1f MB |", mode, fp.cpuShare*100, float64(fp.peakRSS)/1e6))
		r.target("daemon idle, "+mode+" mode", fmt.Sprintf("%.2f%% of a core, %.1f MB RSS", fp.cpuShare*100, float64(fp.peakRSS)/1e6),
			"CPU about 0, RSS < 64 MB", fp.cpuShare < 0.01 && fp.peakRSS < 64<<20, whyFootprint)
		for _, rate := range []float64{200, 1000, 0} {
			var l latency
			slot := ""
			if mode == "logical" {
				slot = "fresh_" + mode
			}
			fp, err := measure(p, func() (err error) { l, err = freshness(ctx, conn, pool, slot, rate, o.loadFor); return })
			if err != nil {
				_ = p.stop()
				return fmt.Errorf("%s mode at %.0f writes/s: %w (daemon log: %s)", mode, rate, err, p.log)
			}
			offered := fmt.Sprintf("%.0f", rate)
			if rate == 0 {
				offered = "max"
			}
			if l.missing > 0 {
				return fmt.Errorf("%s mode at %s writes/s: %d writes never showed in a materialized row", mode, offered, l.missing)
			}
			ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/1e6) }
			if rate == 1000 {
				r.target("freshness p99 at 1,000 writes/s, "+mode+" mode", ms(l.p99), "≤ 250 ms", l.p99 <= 250*time.Millisecond, whyFreshness)
			}
			if rate == 0 {
				r.target("daemon under the highest load, "+mode+" mode", fmt.Sprintf("%.0f%% of a core, %.1f MB RSS", fp.cpuShare*100, float64(fp.peakRSS)/1e6),
					"RSS < 64 MB", fp.peakRSS < 64<<20, whyFootprint)
			}
			r.add("| %s | %s | %.0f | %s | %s | **%s** | %s | %.0f%% of a core | %.1f MB |", mode, offered, l.rate,
				ms(l.p50), ms(l.p95), ms(l.p99), ms(l.max), fp.cpuShare*100, float64(fp.peakRSS)/1e6)
		}
		if err := p.stop(); err != nil {
			return fmt.Errorf("%s mode: %w (daemon log: %s)", mode, err, p.log)
		}
	}
	r.add("")
	r.heading("Daemon footprint when idle")
	r.add("`matcol run` as its own process, caught up, no writes, for %s (CPU from /proc/PID/stat, RSS from /proc/PID/status). Target: idle CPU about 0, RSS < 64 MB.", o.loadFor)
	r.add("")
	r.add("| mode | CPU | peak RSS |")
	r.add("|---|---|---|")
	for _, l := range idle {
		r.add("%s", l)
	}
	r.add("")
	return nil
}

const pgbenchScript = `\set id random(1, 100000)
\set v random(1, 1000)
BEGIN;
UPDATE event SET seat_count = seat_count + 1 WHERE id = :id;
UPDATE event SET venue_id = :v WHERE id = :id + 1 OR id = :id - 1;
END;
`

const writesData = `
INSERT INTO cinema SELECT g, 'Cinema ' || g FROM generate_series(1, 100) g;
INSERT INTO venue (id, cinema_id, name) SELECT g, 1 + g % 100, 'Venue ' || g FROM generate_series(1, 1000) g;
INSERT INTO event SELECT g, 1 + g % 1000, g % 7, 50 + g % 200, now() FROM generate_series(1, 100000) g;
ANALYZE;
`

const venueEnrichment = `  - name: venue_counts
    table: public.venue
    columns: [auditorium_count, seat_count]
    sql: |
      SELECT v.id, count(DISTINCT e.auditorium_id)::int AS auditorium_count, sum(e.seat_count)::bigint AS seat_count
      FROM venue v LEFT JOIN event e ON e.venue_id = v.id WHERE v.id = ANY($1) GROUP BY v.id
    depends_on:
      - table: public.event
        columns: [venue_id]
`

type tps struct {
	tps        float64
	walPerXact float64
}

func pgbench(ctx context.Context, conn *pgx.Conn, o liveOpts, script string, clients int) (tps, error) {
	if _, err := conn.Exec(ctx, `CHECKPOINT`); err != nil {
		return tps{}, err
	}
	var lsn0, lsn1 string
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn0); err != nil {
		return tps{}, err
	}
	out, err := exec.CommandContext(ctx, filepath.Join(o.cl.BinDir, "pgbench"), "-n", "-h", "127.0.0.1",
		"-p", strconv.Itoa(o.cl.Port), "-U", o.cl.User, "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, 2)),
		"-T", strconv.Itoa(int(o.benchFor.Seconds())), "-f", script, "writes").CombinedOutput()
	if err != nil {
		return tps{}, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn1); err != nil {
		return tps{}, err
	}
	var t tps
	var xacts int64
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "number of transactions actually processed: "); ok {
			xacts, _ = strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
		if v, ok := strings.CutPrefix(line, "tps = "); ok && t.tps == 0 {
			t.tps, _ = strconv.ParseFloat(strings.Fields(v)[0], 64)
		}
	}
	if xacts == 0 || t.tps == 0 {
		return tps{}, fmt.Errorf("pgbench printed no figures:\n%s", out)
	}
	var wal float64
	if err := conn.QueryRow(ctx, `SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)`, lsn1, lsn0).Scan(&wal); err != nil {
		return tps{}, err
	}
	t.walPerXact = wal / float64(xacts)
	return t, nil
}

// writeOverhead runs the same pgbench write transaction without matcol, with matcol in trigger
// mode and in logical mode (daemon running), then without matcol again to bound the drift.
func writeOverhead(ctx context.Context, r *report, admin *pgx.Conn, o liveOpts, schema string) error {
	conn, err := createDB(ctx, admin, o.cl, "writes", schema+writesData)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	script := filepath.Join(o.dir, "write.sql")
	if err := os.WriteFile(script, []byte(pgbenchScript), 0o644); err != nil {
		return err
	}
	clients := []int{1, 16}
	type row struct {
		label string
		res   []tps
	}
	var rows []row
	runAll := func(label string) error {
		rw := row{label: label}
		for _, c := range clients {
			t, err := pgbench(ctx, conn, o, script, c)
			if err != nil {
				return fmt.Errorf("%s, %d clients: %w", label, c, err)
			}
			fmt.Printf("  %s, %d clients: %.0f tps, %.0f WAL bytes/xact\n", label, c, t.tps, t.walPerXact)
			rw.res = append(rw.res, t)
		}
		rows = append(rows, rw)
		return nil
	}
	if err := runAll("no matcol"); err != nil {
		return err
	}
	dsn := o.cl.DSN("writes")
	for _, mode := range []string{"trigger", "logical"} {
		cfg, err := writeConfig(o.dir, "writes_"+mode, dsn, mode, venueEnrichment)
		if err != nil {
			return err
		}
		if err := matcolCmd(ctx, o.bin, "apply", "-c", cfg); err != nil {
			return err
		}
		// The write path alone: triggers, or replica identity and the publication with no slot.
		if err := runAll("matcol " + mode + " mode, daemon stopped"); err != nil {
			return err
		}
		p, err := startCaughtUp(ctx, conn, o, cfg, "writes_"+mode, mode, "venue")
		if err != nil {
			return err
		}
		err = runAll("matcol " + mode + " mode, daemon running")
		if serr := p.stop(); err == nil && serr != nil {
			err = fmt.Errorf("%s mode: %w (daemon log: %s)", mode, serr, p.log)
		}
		if err != nil {
			return err
		}
	}
	// Undo what logical mode set up so the last baseline writes what the first one did.
	if _, err := conn.Exec(ctx, `DROP PUBLICATION IF EXISTS writes_logical;
		SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'writes_logical';
		DO $$DECLARE r record;
		BEGIN
			FOR r IN SELECT tgname, tgrelid::regclass AS rel FROM pg_trigger
				WHERE tgrelid IN ('venue'::regclass, 'event'::regclass) AND tgname LIKE 'matcol\_%' LOOP
				EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.rel);
			END LOOP;
		END$$;
		ALTER TABLE event REPLICA IDENTITY DEFAULT; ALTER TABLE venue REPLICA IDENTITY DEFAULT`); err != nil {
		return err
	}
	if err := runAll("no matcol (again)"); err != nil {
		return err
	}
	r.heading("Write overhead")
	r.add("pgbench, %s per run, one transaction of two UPDATEs on `event` (the second moves two events to another venue), `synchronous_commit = on`; matcol maintains `venue.auditorium_count` and `venue.seat_count` from `event`, first with the daemon stopped (the write path alone: triggers, or replica identity and a publication with no slot yet), then with it running, when its recomputations and, in logical mode, the walsender's decoding share the machine's cores with pgbench. The baseline is the mean of the runs without matcol before and after. WAL is bytes per transaction, from `pg_current_wal_lsn()`. Targets: trigger mode ≥ 90%%, logical mode ≥ 97%% of the baseline.", o.benchFor)
	r.add("")
	r.add("| run | clients | TPS | TPS ÷ baseline | WAL bytes/xact |")
	r.add("|---|---|---|---|---|")
	for ci, c := range clients {
		base := (rows[0].res[ci].tps + rows[len(rows)-1].res[ci].tps) / 2
		for _, rw := range rows {
			t := rw.res[ci]
			r.add("| %s | %d | %.0f | **%.2f×** | %.0f |", rw.label, c, t.tps, t.tps/base, t.walPerXact)
			goal, why := 0.0, ""
			switch {
			case strings.HasPrefix(rw.label, "matcol trigger"):
				goal, why = 0.90, whyTrigger
			case strings.HasPrefix(rw.label, "matcol logical"):
				goal, why = 0.97, whyLogical
			}
			if goal > 0 {
				r.target(fmt.Sprintf("write TPS, %s, %d clients", strings.TrimPrefix(rw.label, "matcol "), c),
					fmt.Sprintf("%.2f× the baseline", t.tps/base), fmt.Sprintf("≥ %.0f%%", goal*100), t.tps/base >= goal, why)
			}
		}
	}
	r.add("")
	return nil
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

// meminfo returns a /proc/meminfo figure in bytes (counts, such as HugePages_Free, as they are),
// and whether it was there.
func meminfo(key string) (int64, bool) {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != key+":" {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if len(f) > 2 && f[2] == "kB" {
			n <<= 10
		}
		return n, err == nil
	}
	return 0, false
}

// hugePagesFree is how many bytes of huge pages the machine has free (vm.nr_hugepages).
func hugePagesFree() int64 {
	free, _ := meminfo("HugePages_Free")
	size, _ := meminfo("Hugepagesize")
	return free * size
}

// shmemTHP is the kernel's transparent huge page policy for shared memory (the bracketed word of
// /sys/kernel/mm/transparent_hugepage/shmem_enabled): with "always" or "within_size" PostgreSQL's
// shared memory gets huge pages without huge_pages = on.
func shmemTHP() string {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
	if err != nil {
		return "unknown"
	}
	s := string(b)
	i, j := strings.IndexByte(s, '['), strings.IndexByte(s, ']')
	if i < 0 || j < i {
		return "unknown"
	}
	return s[i+1 : j]
}

func memTotal() string {
	if n, ok := meminfo("MemTotal"); ok {
		return fmt.Sprintf("%.0f GiB", float64(n)/(1<<30))
	}
	return "unknown"
}
