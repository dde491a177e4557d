package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// matcolInstance is matcol's default config for one database and mode, run as its own role.
type matcolInstance struct {
	bin, cfg, log string
}

// setUpMatcol writes the default config (database_url, the mode, the status server off, the
// enrichments) and runs install and apply as the mode's role.
func setUpMatcol(ctx context.Context, o liveOpts, db, mode, enrichments string) (*matcolInstance, error) {
	role := triggerRole
	if mode == "logical" {
		role = logicalRole
	}
	path := filepath.Join(o.dir, db+"_"+mode+".yaml")
	cfg := fmt.Sprintf("database_url: %q\ninvalidation: {mode: %s}\nstatus: {listen: \"\"}\nenrichments:\n%s",
		dsnAs(o.cl, role, db), mode, enrichments)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	m := &matcolInstance{bin: o.bin, cfg: path, log: filepath.Join(o.dir, db+"_"+mode+".log")}
	for _, args := range [][]string{{"install"}, {"apply"}} {
		if _, err := m.cmd(ctx, args...); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// cmd runs one matcol command with this config and returns its output.
func (m *matcolInstance) cmd(ctx context.Context, args ...string) (string, error) {
	args = append(args, "-c", m.cfg)
	out, err := exec.CommandContext(ctx, m.bin, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("matcol %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (m *matcolInstance) start() (*daemonProc, error) { return startDaemon(m.bin, m.cfg, m.log) }

var verifiedRe = regexp.MustCompile(`(\d+) rows checked, (\d+) values differ`)

// verifyAll runs `matcol verify --all` with no rate limit and fails unless it reports no drift.
func (m *matcolInstance) verifyAll(ctx context.Context) (int, error) {
	out, err := m.cmd(ctx, "verify", "--all", "--rate", "0")
	if err != nil {
		return 0, fmt.Errorf("verify found drift or failed: %w", err)
	}
	g := verifiedRe.FindStringSubmatch(out)
	if g == nil {
		return 0, fmt.Errorf("matcol verify printed no summary:\n%s", out)
	}
	if g[2] != "0" {
		return 0, fmt.Errorf("matcol verify: %s values differ:\n%s", g[2], out)
	}
	rows, _ := strconv.Atoi(g[1])
	return rows, nil
}

// logTail is the end of the daemon's log, for errors.
func (m *matcolInstance) logTail() string {
	b, _ := os.ReadFile(m.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// wait says when caughtUp may stop the clock.
type wait struct {
	table string
	// slot and lsn: in logical mode, also until the slot streams and has confirmed lsn.
	slot, lsn string
	// mustSee: stop only after a poll has seen work (stale rows or queued entries), so that the
	// clock cannot stop before matcol has heard of the change; fail if none shows within grace.
	mustSee bool
	grace   time.Duration
	// logged: also until the daemon's log has this message (a pass's end, for a resync, whose
	// rows are neither stale nor queued while the pass runs).
	logged string
	limit  time.Duration
}

// caughtUp polls every 10 ms until w.table has no stale row and matcol.pending is empty, and
// returns the time since start at the poll that saw it, or errBehind after w.limit. It fails as
// soon as the daemon d exits.
func caughtUp(ctx context.Context, conn *pgx.Conn, d *daemonProc, start time.Time, w wait) (time.Duration, error) {
	table := pgx.Identifier{"public", w.table}.Sanitize()
	q := `SELECT EXISTS (SELECT 1 FROM ` + table + ` WHERE materialized_at IS NULL) OR EXISTS (SELECT 1 FROM matcol.pending),
		coalesce((SELECT active AND confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1), $1 = '')`
	lsn := w.lsn
	if lsn == "" {
		lsn = "0/0"
	}
	seen := !w.mustSee
	var lastLog time.Time
	for {
		at := time.Now()
		var busy, streamed bool
		if err := conn.QueryRow(ctx, q, w.slot, lsn).Scan(&busy, &streamed); err != nil {
			return 0, fmt.Errorf("poll: %w", err)
		}
		if busy {
			seen = true
		} else if seen && streamed {
			if w.logged == "" {
				return at.Sub(start), nil
			}
			if time.Since(lastLog) >= 100*time.Millisecond {
				lastLog = time.Now()
				if b, err := os.ReadFile(d.log); err == nil && strings.Contains(string(b), w.logged) {
					return at.Sub(start), nil
				}
			}
		}
		if err := d.alive(); err != nil {
			return 0, err
		}
		switch {
		case !seen && time.Since(start) > w.grace:
			return 0, fmt.Errorf("no stale row or queued entry in %s on %s: matcol never saw the change", w.grace, w.table)
		case time.Since(start) > w.limit:
			return time.Since(start), errBehind
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// errBehind: matcol had not caught up within the bench's limit (-limit).
var errBehind = errors.New("not caught up within the limit")

// behind counts the rows still stale or queued entries: what matcol had left at the limit.
func behind(ctx context.Context, conn *pgx.Conn, table string) (stale, queued int64, err error) {
	err = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+pgx.Identifier{"public", table}.Sanitize()+` WHERE materialized_at IS NULL),
		(SELECT count(*) FROM matcol.pending)`).Scan(&stale, &queued)
	return stale, queued, err
}

// dropSlot drops logical slot name once its walsender is gone.
func dropSlot(ctx context.Context, admin *pgx.Conn, name string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := admin.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, name)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("drop slot %s: %w", name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// dropDB drops a scenario's database, whatever is still connected.
func dropDB(ctx context.Context, admin *pgx.Conn, db string) error {
	_, err := admin.Exec(ctx, `DROP DATABASE IF EXISTS `+pgx.Identifier{db}.Sanitize()+` WITH (FORCE)`)
	if err != nil {
		return fmt.Errorf("drop database %s: %w", db, err)
	}
	return nil
}
