package main_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/matcol/matcol/internal/pgcluster"
	"github.com/matcol/matcol/internal/pgtest"
)

// The model test: a randomized differential test. Each seed draws a schema (model_schema_test.go),
// application writers change it at random (model_writer_test.go) while the daemon is killed and
// restarted, enrichments are changed with apply and backfill, materialization pauses and
// PostgreSQL restarts (model_events_test.go). When writers stop, matcol must catch up within a
// minute, and then `matcol verify --all` must find every stored value equal to a fresh
// computation. A failure prints the seed, the mode, the features, the schema, the config and
// verify's output, and the command that runs it again:
//
//	make test/model SEED=… DURATION=… MODE=… FEATURES=…
//
// The environment chooses what runs (model_options_test.go): MATCOL_MODEL_SEED,
// MATCOL_MODEL_DURATION (default 30s), MATCOL_MODEL_MODE, MATCOL_MODEL_FEATURES and
// MATCOL_MODEL_WRITERS. A configuration that matcol refuses at apply is reported as refused, never
// as drift.
func TestModelTriggerMode(t *testing.T) { testModel(t, "trigger") }

func TestModelLogicalMode(t *testing.T) { testModel(t, "logical") }

// modelCatchUp bounds the wait for matcol to catch up after the last write.
const modelCatchUp = 60 * time.Second

func testModel(t *testing.T, mode string) {
	if testing.Short() {
		t.Skip("the model test writes for 30 s per mode")
	}
	o, skip, err := modelOptionsFor(mode)
	require.NoError(t, err)
	if skip != "" {
		t.Skipf("%s: only that mode runs", skip)
	}
	m := &modelRun{t: t, mode: mode, o: o, r: rand.New(rand.NewPCG(o.seed, 0)), logs: &modelLog{}, start: time.Now()}
	m.cluster = pgtest.Cluster(t)
	if m.cluster == nil && o.features["restart"] {
		o.features["restart"] = false
		m.note("restart is off: MATCOL_TEST_DATABASE_URL names a server the test cannot restart")
	}
	m.s = newModelSchema(m.r, o.features)
	t.Logf("model: mode %s, seed %d, %s of writes, features %s\nreproduce: %s", mode, o.seed, o.duration, o.features, o.repro(mode))
	m.run()
}

type modelRun struct {
	t       *testing.T
	mode    string
	o       modelOptions
	r       *rand.Rand
	s       *modelSchema
	cluster *pgcluster.Cluster

	suDSN, appDSN string   // a superuser, for setup and checks; the application's writers
	env           []string // matcol's connection and settings
	matcolRole    string   // empty unless leastpriv
	slot          string
	cfgPath       string
	version       modelVersion
	daemon        *modelDaemon
	logs          *modelLog
	stats         *modelStats

	start    time.Time
	mu       sync.Mutex
	timeline []string
	problems []string
	verified string
}

// note adds a line to the run's timeline.
func (m *modelRun) note(format string, args ...any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.timeline = append(m.timeline, fmt.Sprintf("%6.1fs  %s", time.Since(m.start).Seconds(), fmt.Sprintf(format, args...)))
}

// problem records a failure of matcol under one of the labels the report explains.
func (m *modelRun) problem(label, format string, args ...any) {
	m.note("%s: %s", label, fmt.Sprintf(format, args...))
	m.mu.Lock()
	defer m.mu.Unlock()
	m.problems = append(m.problems, label+": "+fmt.Sprintf(format, args...))
}

func (m *modelRun) run() {
	t := m.t
	m.setup()
	if !m.applyInitial() {
		m.report()
		return
	}
	m.daemon = m.startDaemon()
	t.Cleanup(func() { m.daemon.kill() })
	if !m.waitCaughtUp("initial materialization", "") {
		m.report()
		return
	}

	rounds := m.o.rounds()
	for round := 1; round <= rounds; round++ {
		if !m.round(round, rounds) {
			break
		}
	}
	m.report()
}

// round runs writers and events for the round's share of the run, then waits for matcol to
// catch up and verifies. It reports whether the run may go on.
func (m *modelRun) round(round, rounds int) bool {
	d := m.o.duration / time.Duration(rounds)
	m.stats = newModelStats()
	ctx, stop := context.WithTimeout(context.Background(), d)
	defer stop()
	var wg sync.WaitGroup
	var truncated atomic.Int64
	tail := time.Now().Add(d - m.o.tail(d))
	for i := 0; i < m.o.writers; i++ {
		w := newModelWriter(m.s, m.appDSN, m.o.seed+uint64(round)<<32, i+1, m.stats, &truncated)
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx, tail)
		}()
	}
	m.note("round %d of %d: %d writers for %s, the last %s slowly", round, rounds, m.o.writers, d, m.o.tail(d))
	m.events(ctx)
	wg.Wait()
	summary, clean := m.stats.summary()
	m.note("writers stopped; %s", summary)
	if !clean {
		m.problem("WRITER ERRORS", "application writes failed in ways that concurrency does not explain (see the writer summary)")
	}
	if m.stats.committed() < 100 {
		m.t.Fatalf("the model wrote only %d times: a harness problem, not matcol's\n%s", m.stats.committed(), summary)
	}

	if !m.daemon.running() {
		m.problem("DAEMON EXITED", "matcol run exited by itself (%v); restarted", m.daemon.exitErr())
		m.daemon = m.startDaemon()
	}
	var lsn string
	if m.mode == "logical" {
		m.withConn(func(c *pgx.Conn) error {
			return c.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&lsn)
		})
	}
	// Verify even when matcol has not caught up: what it shows then may be work still queued.
	caught := m.waitCaughtUp(fmt.Sprintf("after the last write of round %d", round), lsn)
	m.verify(caught)
	m.mu.Lock()
	defer m.mu.Unlock()
	return caught && len(m.problems) == 0
}

// setup creates the database, the roles with the leastpriv feature, the schema and its rows.
func (m *modelRun) setup() {
	t := m.t
	ctx := context.Background()
	m.suDSN = pgtest.NewDB(t)
	su := pgtest.Connect(t, m.suDSN)
	var db string
	require.NoError(t, su.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	suffix := strings.TrimPrefix(db, "matcol_test_")
	m.slot = "model_" + suffix
	matcolDSN := m.suDSN
	m.appDSN = m.suDSN
	script := m.s.ddl() + m.s.seedSQL()
	if m.o.features["leastpriv"] {
		app, mc := "model_app_"+suffix, "model_matcol_"+suffix
		m.matcolRole = mc
		t.Cleanup(func() {
			c, err := pgx.Connect(context.Background(), m.suDSN)
			if err != nil {
				return
			}
			defer c.Close(context.Background())
			_, _ = c.Exec(context.Background(), fmt.Sprintf(`DROP OWNED BY %s, %s CASCADE`, app, mc))
			_, _ = c.Exec(context.Background(), fmt.Sprintf(`DROP ROLE IF EXISTS %s, %s`, mc, app))
		})
		// The application's role owns its schema and tables, and matcol gets the grants of
		// docs/security.md. In logical mode it also needs REPLICATION, and ownership of the
		// tables (membership in their owner's role) to add them to its publication.
		pre := fmt.Sprintf("CREATE ROLE %s LOGIN;\nCREATE ROLE %s LOGIN;\nGRANT CREATE ON DATABASE %s TO %s;\n", app, mc, qident(db), mc)
		if m.mode == "logical" {
			pre += fmt.Sprintf("ALTER ROLE %s REPLICATION;\nGRANT %s TO %s;\n", mc, app, mc)
		}
		if m.s.ns == "public" {
			pre += fmt.Sprintf("GRANT CREATE ON SCHEMA public TO %s;\n", app)
		} else {
			pre += fmt.Sprintf("CREATE SCHEMA %s AUTHORIZATION %s;\n", qident(m.s.ns), app)
			script = strings.TrimPrefix(script, fmt.Sprintf("CREATE SCHEMA %s;\n", qident(m.s.ns)))
		}
		script = pre + "SET ROLE " + app + ";\n" + script + m.s.grants(mc) + "RESET ROLE;\n"
		m.appDSN = withUser(t, m.suDSN, app)
		matcolDSN = withUser(t, m.suDSN, mc)
	}
	pgtest.Exec(t, su, script)
	m.s.setupSQL = script
	if m.mode == "logical" {
		t.Cleanup(func() { pgtest.DropSlot(m.suDSN, m.slot) })
	}
	m.env = []string{"MATCOL_DATABASE_URL=" + matcolDSN, "MATCOL_STATUS_LISTEN="}
	m.cfgPath = writeConfig(t, m.s.config(m.version, m.mode, m.slot))
	who := "a superuser"
	if m.matcolRole != "" {
		who = "role " + m.matcolRole
	}
	m.note("schema created in database %s; matcol runs as %s", db, who)
}

func withUser(t *testing.T, dsn, user string) string {
	return strings.Replace(dsn, "://"+userOf(t, dsn)+"@", "://"+user+"@", 1)
}

// applyInitial installs and applies the first config as matcol's role. A refusal is reported
// as such: the generator produced something matcol does not accept, which is not drift.
func (m *modelRun) applyInitial() bool {
	r := matcol(m.t, m.env, "install", "-c", m.cfgPath)
	if r.code != 0 {
		m.problem("COMMAND FAILED", "matcol install exited %d: %s", r.code, strings.TrimSpace(r.stderr))
		return false
	}
	r = matcol(m.t, m.env, "apply", "-c", m.cfgPath)
	if r.code != 0 && refused(r.stderr) {
		m.problem("REFUSED", "matcol apply refused the generated configuration (not drift; either matcol rejects what it should support, or the generator must stop producing this): %s",
			strings.TrimSpace(r.stderr))
		return false
	}
	if r.code != 0 {
		m.problem("COMMAND FAILED", "matcol apply exited %d: %s", r.code, strings.TrimSpace(r.stderr))
		return false
	}
	m.note("applied the first config")
	return true
}

// withConn runs f on a fresh superuser connection, retrying while PostgreSQL restarts.
func (m *modelRun) withConn(f func(*pgx.Conn) error) {
	var err error
	for i := 0; i < 100; i++ {
		var c *pgx.Conn
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err = pgx.Connect(ctx, m.suDSN)
		if err == nil {
			err = f(c)
			_ = c.Close(context.Background())
		}
		cancel()
		if err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	m.t.Fatalf("model: the test's own connection keeps failing: %v", err)
}

type modelLag struct {
	stale    map[string]int
	pending  int
	failures int
	slotOK   bool
}

func (l modelLag) caughtUp() bool {
	for _, n := range l.stale {
		if n > 0 {
			return false
		}
	}
	return l.pending == 0 && l.slotOK
}

func (l modelLag) String() string {
	var parts []string
	for name, n := range l.stale {
		parts = append(parts, fmt.Sprintf("%s %d stale", name, n))
	}
	parts = append(parts, fmt.Sprintf("%d queued invalidations", l.pending), fmt.Sprintf("%d quarantined rows", l.failures))
	if !l.slotOK {
		parts = append(parts, "the slot has not confirmed the last write")
	}
	return strings.Join(parts, ", ")
}

func (m *modelRun) lag(lsn string) modelLag {
	var l modelLag
	m.withConn(func(c *pgx.Conn) error {
		ctx := context.Background()
		l = modelLag{stale: map[string]int{}, slotOK: true}
		for _, t := range m.s.targets() {
			var n int
			if err := c.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE materialized_at IS NULL", m.s.q(t))).Scan(&n); err != nil {
				return err
			}
			l.stale[t.name] = n
		}
		if err := c.QueryRow(ctx, `SELECT (SELECT count(*) FROM matcol.pending), (SELECT count(*) FROM matcol.failure)`).Scan(&l.pending, &l.failures); err != nil {
			return err
		}
		if m.mode == "logical" {
			return c.QueryRow(ctx, `SELECT coalesce((SELECT confirmed_flush_lsn >= coalesce($1::pg_lsn, '0/0')
				FROM pg_replication_slots WHERE slot_name = $2), false)`, nilIfEmpty(lsn), m.slot).Scan(&l.slotOK)
		}
		return nil
	})
	return l
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// waitCaughtUp waits until no row is stale, the queue is empty and (logical mode) the slot has
// confirmed lsn, twice in a row a second apart, for at most modelCatchUp.
func (m *modelRun) waitCaughtUp(what, lsn string) bool {
	start := time.Now()
	deadline := start.Add(modelCatchUp)
	seen := false
	var l modelLag
	for time.Now().Before(deadline) {
		if !m.daemon.running() {
			m.problem("DAEMON EXITED", "matcol run exited by itself (%v) while catching up; restarted", m.daemon.exitErr())
			m.daemon = m.startDaemon()
		}
		l = m.lag(lsn)
		if l.caughtUp() {
			if seen {
				m.note("caught up (%s) in %.1fs", what, time.Since(start).Seconds())
				return true
			}
			seen = true
			time.Sleep(time.Second)
			continue
		}
		seen = false
		time.Sleep(250 * time.Millisecond)
	}
	failures := matcol(m.t, m.env, "failures", "-c", m.cfgPath)
	m.problem("NOT CAUGHT UP", "%s, matcol had not caught up after %s: %s\nmatcol failures:\n%s", what, modelCatchUp, l, strings.TrimSpace(failures.stdout+failures.stderr))
	return false
}

// verify runs matcol verify --all; drift it finds is run again 5 s later, to tell drift that
// stays from work that was still under way. Drift is only called drift once matcol says it
// has caught up; before, it is shown as what was found meanwhile.
func (m *modelRun) verify(caughtUp bool) {
	r := matcol(m.t, m.env, "verify", "-c", m.cfgPath, "--all", "--rate", "0")
	m.verified = strings.TrimSpace(r.stdout + r.stderr)
	if r.code == 0 && strings.Contains(r.stdout, " checked, 0 values differ") {
		m.note("verify --all: %s", lastLine(r.stdout))
		return
	}
	if !caughtUp {
		m.note("verify --all while not caught up: %s", lastLine(r.stdout+r.stderr))
		return
	}
	time.Sleep(5 * time.Second)
	again := matcol(m.t, m.env, "verify", "-c", m.cfgPath, "--all", "--rate", "0")
	stays := "and 5 s later: " + lastLine(again.stdout+again.stderr)
	m.problem("DRIFT", "matcol verify --all exited %d: %s (%s); %s", r.code, lastLine(r.stdout+r.stderr), driftByEnrichment(r.stdout), stays)
}

// driftByEnrichment counts verify's drift lines per enrichment, which names the feature at fault.
func driftByEnrichment(out string) string {
	counts := map[string]int{}
	var names []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "drift:" {
			continue
		}
		if counts[f[1]] == 0 {
			names = append(names, f[1])
		}
		counts[f[1]]++
	}
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %d", n, counts[n])
	}
	return "by enrichment: " + strings.Join(parts, ", ")
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// report fails the test with everything needed to understand and rerun it.
func (m *modelRun) report() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.problems) == 0 {
		m.t.Logf("model: PASS, mode %s, seed %d\n%s", m.mode, m.o.seed, strings.Join(m.timeline, "\n"))
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "model: FAILED, mode %s, seed %d, %s of writes, features %s\n", m.mode, m.o.seed, m.o.duration, m.o.features)
	fmt.Fprintf(&b, "reproduce: %s\n", m.o.repro(m.mode))
	for _, p := range m.problems {
		fmt.Fprintf(&b, "  - %s\n", p)
	}
	fmt.Fprintf(&b, "\n--- schema\n%s\n--- config (last applied version %+v)\n%s\n--- timeline\n%s\n",
		m.s.setupSQL, m.version, m.s.config(m.version, m.mode, m.slot), strings.Join(m.timeline, "\n"))
	if m.verified != "" {
		lines := strings.Split(m.verified, "\n")
		if len(lines) > 60 {
			lines = append(append(lines[:50:50], fmt.Sprintf("… %d more lines …", len(lines)-55)), lines[len(lines)-5:]...)
		}
		fmt.Fprintf(&b, "\n--- matcol verify --all\n%s\n", strings.Join(lines, "\n"))
	}
	fmt.Fprintf(&b, "\n--- daemon log (last lines, warnings and errors)\n%s\n", m.logs.tail(60))
	m.t.Fatal(b.String())
}

// modelDaemon is one `matcol run` process.
type modelDaemon struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func (m *modelRun) startDaemon() *modelDaemon {
	cmd := exec.Command(binary, "run", "-c", m.cfgPath, "--log-level", "warn", "--log-format", "text")
	cmd.Env = append(os.Environ(), m.env...)
	cmd.Stdout, cmd.Stderr = m.logs, m.logs
	require.NoError(m.t, cmd.Start())
	d := &modelDaemon{cmd: cmd, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	return d
}

func (d *modelDaemon) running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

func (d *modelDaemon) exitErr() error {
	<-d.done
	return d.err
}

func (d *modelDaemon) kill() {
	if d == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
}

// modelLog keeps the daemons' output, bounded.
type modelLog struct {
	mu    sync.Mutex
	lines []string
	part  string
}

func (l *modelLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	text := l.part + string(p)
	parts := strings.Split(text, "\n")
	l.part = parts[len(parts)-1]
	l.lines = append(l.lines, parts[:len(parts)-1]...)
	if len(l.lines) > 2000 {
		l.lines = append([]string(nil), l.lines[len(l.lines)-1000:]...)
	}
	return len(p), nil
}

func (l *modelLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	start := max(0, len(l.lines)-n)
	return strings.Join(l.lines[start:], "\n")
}
