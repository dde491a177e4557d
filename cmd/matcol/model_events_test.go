package main_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgtest"
)

// events runs operator events and failures until ctx ends, one every 1.5–4 s: every enabled
// kind once in random order, then at random.
func (m *modelRun) events(ctx context.Context) {
	weights := map[string]int{"kill": 3, "apply": 3, "pause": 2, "attach": 1, "restart": 1, "slotloss": 1}
	var kinds []string
	for _, k := range []string{"kill", "apply", "pause", "attach", "restart", "slotloss"} {
		if m.o.features[k] && (k != "slotloss" || m.mode == "logical") {
			kinds = append(kinds, k)
		}
	}
	queue := append([]string(nil), kinds...)
	m.r.Shuffle(len(queue), func(i, j int) { queue[i], queue[j] = queue[j], queue[i] })
	for {
		sleepCtx(ctx, time.Duration(1500+m.r.IntN(2500))*time.Millisecond)
		if ctx.Err() != nil || len(kinds) == 0 {
			if len(kinds) == 0 {
				<-ctx.Done()
			}
			return
		}
		if !m.daemon.running() {
			m.problem("DAEMON EXITED", "matcol run exited by itself (%v); restarted", m.daemon.exitErr())
			m.daemon = m.startDaemon()
		}
		var kind string
		if len(queue) > 0 {
			kind, queue = queue[0], queue[1:]
		} else {
			total := 0
			for _, k := range kinds {
				total += weights[k]
			}
			n := m.r.IntN(total)
			for _, k := range kinds {
				if n < weights[k] {
					kind = k
					break
				}
				n -= weights[k]
			}
		}
		switch kind {
		case "kill":
			m.killAndRestart()
		case "apply":
			m.applyChange()
		case "pause":
			m.pauseResume()
		case "attach":
			m.attachPartition()
		case "slotloss":
			m.loseSlot()
		case "restart":
			require.NoError(m.t, m.cluster.Restart(context.Background(), "immediate"))
			m.note("PostgreSQL restarted with -m immediate")
		}
	}
}

func (m *modelRun) killAndRestart() {
	pid := m.daemon.cmd.Process.Pid
	m.daemon.kill()
	down := time.Duration(m.r.IntN(1500)) * time.Millisecond
	time.Sleep(down)
	m.daemon = m.startDaemon()
	m.note("SIGKILL of the daemon (pid %d); a new one %s later", pid, down.Round(time.Millisecond))
}

// loseSlot drops the slot while the daemon is down, as a failover or an operator would: the
// changes it held are gone, and the daemon must recreate it and resync every target.
func (m *modelRun) loseSlot() {
	pid := m.daemon.cmd.Process.Pid
	m.daemon.kill()
	pgtest.DropSlot(m.suDSN, m.slot)
	var left bool
	m.withConn(func(c *pgx.Conn) error {
		return c.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, m.slot).Scan(&left)
	})
	m.daemon = m.startDaemon()
	if left {
		m.note("SIGKILL of the daemon (pid %d); its slot stayed active and was not dropped; a new daemon", pid)
		return
	}
	m.note("SIGKILL of the daemon (pid %d), its slot dropped, and a new daemon", pid)
}

// refusal tells a validation error, which names an enrichment, from a passing failure such as
// a lock timeout. apply runs each enrichment on existing rows, so under writers a validation
// message can carry a deadlock or a timeout: that is passing too, and retried.
var (
	refusal   = regexp.MustCompile(`invalid enrichments|enrichment [^ ]+( on [^ ]+)?: `)
	transient = regexp.MustCompile(`deadlock detected|lock timeout|canceling statement|could not serialize|SQLSTATE (40P01|40001|55P03|57014|57P0[1-3])|connection`)
)

func refused(stderr string) bool {
	return refusal.MatchString(stderr) && !transient.MatchString(stderr)
}

// applyChange moves the config one version on, applies it while the daemon runs, and then
// backfills the changed enrichment, as docs/operations.md says to.
func (m *modelRun) applyChange() {
	next := m.version
	var enrichment, what string
	if next.extra < 2 && (next.extra == 0 || m.r.IntN(2) == 0) {
		next.extra++
		enrichment = "extra"
		what = map[int]string{1: "extra's sql now reads the extra table, an added dependency", 2: "extra's sql changed"}[next.extra]
	} else {
		next.children = (next.children + 1 + m.r.IntN(modelChildrenVariants-1)) % modelChildrenVariants
		enrichment = "children"
		what = fmt.Sprintf("children's sql changed to variant %d", next.children)
	}
	old, err := os.ReadFile(m.cfgPath)
	require.NoError(m.t, err)
	require.NoError(m.t, os.WriteFile(m.cfgPath, []byte(m.s.config(next, m.mode, m.slot)), 0o600))
	for attempt := 1; ; attempt++ {
		r := matcol(m.t, m.env, "apply", "-c", m.cfgPath)
		if r.code == 0 {
			break
		}
		validation := refused(r.stderr)
		if validation || attempt == 3 {
			// A daemon restarted later applies the file: it must say what is registered.
			require.NoError(m.t, os.WriteFile(m.cfgPath, old, 0o600))
			if validation {
				m.problem("REFUSED", "matcol apply refused a generated change (%s; not drift): %s", what, strings.TrimSpace(r.stderr))
			} else {
				m.problem("COMMAND FAILED", "matcol apply (%s) failed 3 times: %s", what, strings.TrimSpace(r.stderr))
			}
			return
		}
		m.note("apply (%s) failed, retrying: %s", what, lastLine(r.stderr))
		time.Sleep(time.Second)
	}
	m.version = next
	m.note("apply: %s", what)
	r := matcol(m.t, m.env, "backfill", "-c", m.cfgPath, "--enrichment", enrichment)
	if r.code != 0 {
		m.problem("COMMAND FAILED", "matcol backfill --enrichment %s exited %d: %s", enrichment, r.code, strings.TrimSpace(r.stderr))
		return
	}
	m.note("backfill --enrichment %s: %s", enrichment, lastLine(r.stdout))
}

func (m *modelRun) pauseResume() {
	if r := matcol(m.t, m.env, "pause", "-c", m.cfgPath); r.code != 0 {
		m.problem("COMMAND FAILED", "matcol pause exited %d: %s", r.code, strings.TrimSpace(r.stderr))
		return
	}
	d := time.Duration(1000+m.r.IntN(2000)) * time.Millisecond
	time.Sleep(d)
	if r := matcol(m.t, m.env, "resume", "-c", m.cfgPath); r.code != 0 {
		m.problem("COMMAND FAILED", "matcol resume exited %d: %s", r.code, strings.TrimSpace(r.stderr))
		return
	}
	m.note("matcol pause, and resume %s later", d)
}

// attachPartition adds the next partition of the partitioned source while writers run, empty:
// every row it ever holds arrives by a write that names it or the parent. Alternately it is
// created as a partition, or created alone and then attached. The application's role owns it
// and grants matcol what docs/security.md asks for any source table.
func (m *modelRun) attachPartition() {
	s := m.s
	s.mu.Lock()
	if s.attached >= len(s.spare) {
		s.mu.Unlock()
		return
	}
	p := s.spare[s.attached]
	s.mu.Unlock()
	var sql string
	if p.value%2 == 0 {
		sql = fmt.Sprintf("CREATE TABLE %s (LIKE %s);\nALTER TABLE %s ATTACH PARTITION %s FOR VALUES IN (%d);\n",
			s.qn(p.name), s.q(s.part), s.q(s.part), s.qn(p.name), p.value)
	} else {
		sql = fmt.Sprintf("CREATE TABLE %s PARTITION OF %s FOR VALUES IN (%d);\n", s.qn(p.name), s.q(s.part), p.value)
	}
	if m.matcolRole != "" {
		sql += fmt.Sprintf("GRANT SELECT, TRIGGER ON %s TO %s;\n", s.qn(p.name), m.matcolRole)
	}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		var c *pgx.Conn
		if c, err = pgx.Connect(context.Background(), m.appDSN); err != nil {
			time.Sleep(time.Second)
			continue
		}
		_, err = c.Exec(context.Background(), "SET lock_timeout = '10s';\n"+sql)
		_ = c.Close(context.Background())
		if err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	require.NoError(m.t, err, "the model could not attach a partition")
	s.mu.Lock()
	s.parts = append(s.parts, p)
	s.attached++
	s.setupSQL += "-- while writers ran:\n" + sql
	s.mu.Unlock()
	m.note("partition %s attached for part = %d", p.name, p.value)
}
