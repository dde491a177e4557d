package refresh

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/internal/pgident"
)

// lockClass is the first key of the session advisory lock (lockClass, schedule id) held while a
// view is refreshed. It spells "matv".
//
// Why an advisory lock and not the row lock: holding the schedule row FOR UPDATE for a whole
// refresh would keep a transaction open on it for as long as the refresh takes, so apply, `schedule
// remove` and `run-now` would queue behind it for hours, and the execution row could not be seen
// until the end. Instead the row lock lasts only the claim (milliseconds: FOR UPDATE SKIP LOCKED,
// then this lock, then commit), and the advisory lock, taken inside the claim and held by the
// refreshing session, keeps a second instance away for exactly as long as the refresh runs. It
// needs no lease to tune, and it is released by PostgreSQL when the session ends, even if matcol
// is killed; an orphaned backend still refreshing keeps it, which is right.
const lockClass int32 = 0x6d617476

// Config tunes the scheduler.
type Config struct {
	// Workers is the number of views this instance refreshes at once. Defaults to 2.
	Workers int
	// PollInterval is the longest wait between looks at the schedule. Defaults to 1s.
	PollInterval time.Duration
	// RetryBase is the wait after a first failure; it doubles with each further one. Defaults to 5s.
	RetryBase time.Duration
	// RetryMax caps the wait between retries. Defaults to 1h.
	RetryMax time.Duration
	// DiscoverInterval is how often unscheduled and missing views are looked for. Defaults to 1m.
	DiscoverInterval time.Duration
}

func (c *Config) defaults() {
	if c.Workers <= 0 {
		c.Workers = 2
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.RetryBase <= 0 {
		c.RetryBase = 5 * time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = time.Hour
	}
	if c.DiscoverInterval <= 0 {
		c.DiscoverInterval = time.Minute
	}
}

// Scheduler refreshes due views. Several schedulers, in one process or many, share the work.
type Scheduler struct {
	pool *pgxpool.Pool
	cfg  Config
	log  hclog.Logger

	mu     sync.Mutex
	warned map[string]bool // one warning per view and problem for the life of the process
}

// New returns a scheduler on pool, which needs two connections per worker.
func New(pool *pgxpool.Pool, cfg Config, log hclog.Logger) *Scheduler {
	cfg.defaults()
	return &Scheduler{pool: pool, cfg: cfg, log: log, warned: map[string]bool{}}
}

// Run opens a pool on dsn and runs a scheduler on it until ctx ends.
func Run(ctx context.Context, dsn string, cfg Config, maxConnLifetime time.Duration, log hclog.Logger) error {
	cfg.defaults()
	pool, err := dial.Pool(ctx, dsn, "refresh", dial.PoolOptions{
		MaxConns: int32(2*cfg.Workers + 1), MaxConnLifetime: maxConnLifetime})
	if err != nil {
		return err
	}
	defer pool.Close()
	return New(pool, cfg, log).Run(ctx)
}

// Run refreshes due views until ctx ends. Database errors are logged and retried with backoff,
// never returned: a broken view or a restarting server must not stop the daemon.
func (s *Scheduler) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	for range s.cfg.Workers {
		g.Go(func() error { return s.work(gctx) })
	}
	g.Go(func() error { return s.discover(gctx) })
	return g.Wait()
}

func (s *Scheduler) work(ctx context.Context) error {
	errs := 0
	for {
		did, err := s.RunOnce(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var wait time.Duration
		switch {
		case err != nil:
			errs++
			wait = dial.Backoff(errs, 30*time.Second)
			s.log.Warn("refresh pass failed; retrying", "error", err, "retry_in", wait.Round(time.Millisecond))
		case did:
			errs = 0
			continue // right away: a dependent view may be waiting for the one just refreshed
		default:
			errs = 0
			wait = s.untilDue(ctx)
		}
		if !dial.Sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// untilDue is the wait until the earliest due time, jittered so instances spread out, at most
// PollInterval (views added meanwhile, and views waiting for another to finish).
func (s *Scheduler) untilDue(ctx context.Context) time.Duration {
	wait := s.cfg.PollInterval
	var next *time.Time
	if err := s.pool.QueryRow(ctx, `SELECT min(next_due_at) FROM matcol.matview_schedule WHERE next_due_at > now()`).Scan(&next); err == nil && next != nil {
		if d := time.Until(*next); d < wait {
			wait = d
		}
	}
	wait += time.Duration(rand.Int64N(int64(20*time.Millisecond) + int64(wait)/10))
	return max(wait, 10*time.Millisecond)
}

// discover logs, once each, the matviews nobody scheduled and the scheduled views that are gone.
func (s *Scheduler) discover(ctx context.Context) error {
	for {
		views, err := Unscheduled(ctx, s.pool)
		if err == nil {
			for _, v := range views {
				if s.once("unscheduled", v) {
					s.log.Info("materialized view is not scheduled; add it under matviews: or with matcol schedule add", "view", v.String())
				}
			}
			var all []View
			if all, err = List(ctx, s.pool); err == nil {
				for _, v := range all {
					if !v.Exists && s.once("missing", v.Name) {
						s.log.Warn("scheduled materialized view does not exist; it is skipped", "view", v.Name.String())
					}
				}
			}
		}
		if err != nil && ctx.Err() == nil {
			s.log.Debug("matview discovery failed", "error", err)
		}
		if !dial.Sleep(ctx, s.cfg.DiscoverInterval) {
			return ctx.Err()
		}
	}
}

func (s *Scheduler) once(problem string, t pgident.Table) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := problem + " " + t.String()
	if s.warned[k] {
		return false
	}
	s.warned[k] = true
	return true
}

//go:embed pick.sql
var pickSQL string

//go:embed counters.sql
var countersSQL string

// claim is one claimed refresh.
type claim struct {
	id                int
	view              pgident.Table
	relid             uint32
	populated, unique bool
	interval, maxDur  time.Duration
	skipIfUnchanged   bool
	keep, failures    int
	hasCounters       bool

	execID    int64
	startedAt time.Time
	mode      string
	counters  []byte
}

// Mode is how a view was refreshed.
const (
	ModeConcurrently = "concurrently"
	ModePlain        = "plain"
	ModeSkipped      = "skipped"
)

// Result is the outcome of one execution.
type Result struct {
	View     pgident.Table
	Mode     string
	Duration time.Duration
	// Err is the refresh's error; the execution is recorded either way.
	Err error
}

// RunOnce refreshes the next due view, if any, and reports whether it found one. The execution,
// failed or not, is recorded; the error is for the bookkeeping only.
func (s *Scheduler) RunOnce(ctx context.Context) (bool, error) {
	r, err := s.execute(ctx, nil)
	return r != nil, err
}

// RunNow refreshes one scheduled view at once, whatever its due time, unless another instance is
// refreshing it.
func (s *Scheduler) RunNow(ctx context.Context, name string) (*Result, error) {
	t, err := pgident.ParseTable(name)
	if err != nil {
		return nil, err
	}
	if t.Schema == "" {
		if t, err = Resolve(ctx, s.pool, name); err != nil {
			return nil, err
		}
	}
	var id int
	err = s.pool.QueryRow(ctx, `SELECT id FROM matcol.matview_schedule WHERE schema_name = $1 AND view_name = $2`,
		t.Schema, t.Name).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s is not scheduled", t)
	}
	if err != nil {
		return nil, fmt.Errorf("find %s in the schedule: %w", t, err)
	}
	r, err := s.execute(ctx, &id)
	if err == nil && r == nil {
		err = fmt.Errorf("%s is being refreshed by another session, or does not exist", t)
	}
	return r, err
}

// execute claims a view (the next due one, or only), refreshes it and records the outcome.
func (s *Scheduler) execute(ctx context.Context, only *int) (*Result, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire a connection: %w", err)
	}
	defer conn.Release()
	c, err := s.claim(ctx, conn, only)
	if c != nil {
		defer s.unlock(conn, c.id)
	}
	if err != nil || c == nil {
		return nil, err
	}
	r := &Result{View: c.view, Mode: c.mode}
	if c.mode == ModeSkipped {
		s.log.Debug("matview unchanged; refresh skipped", "view", c.view.String())
		return r, nil
	}
	start := time.Now()
	r.Err = s.refresh(ctx, conn, c)
	r.Duration = time.Since(start)
	if err := s.finish(ctx, c, r.Err); err != nil {
		return r, err
	}
	switch {
	case r.Err == nil:
		s.log.Debug("refreshed matview", "view", c.view.String(), "mode", c.mode, "duration", r.Duration)
	case ctx.Err() != nil:
		s.log.Info("matview refresh interrupted by shutdown", "view", c.view.String())
	default:
		s.log.Warn("matview refresh failed", "view", c.view.String(), "mode", c.mode,
			"failures", c.failures+1, "error", r.Err)
	}
	return r, nil
}

// claim picks and locks a view in one short transaction and opens its execution.
func (s *Scheduler) claim(ctx context.Context, conn *pgxpool.Conn, only *int) (*claim, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin claim: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	c := &claim{}
	var interval, maxDur float64
	err = tx.QueryRow(ctx, pickSQL, lockClass, only).Scan(&c.id, &c.view.Schema, &c.view.Name, &c.relid,
		&c.populated, &c.unique, &interval, &maxDur, &c.skipIfUnchanged, &c.keep, &c.failures, &c.hasCounters)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pick a due matview: %w", err)
	}
	c.interval, c.maxDur = seconds(interval), seconds(maxDur)
	var locked bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, lockClass, int32(c.id)).Scan(&locked); err != nil {
		return nil, fmt.Errorf("lock matview %s: %w", c.view, err)
	}
	if !locked {
		return nil, nil // being refreshed; the row lock raced the lock check in pick.sql
	}
	// From here the caller must unlock, so c is returned with any error.
	if _, err := tx.Exec(ctx, `UPDATE matcol.matview_execution SET ended_at = clock_timestamp(),
			terminated_at = clock_timestamp(), execution_is_successful = false, error_name = 'abandoned',
			error_message = 'the matcol session running this refresh ended before it did'
		WHERE schedule_id = $1 AND ended_at IS NULL`, c.id); err != nil {
		return c, fmt.Errorf("close abandoned executions of %s: %w", c.view, err)
	}
	c.mode = ModePlain
	if c.populated && c.unique {
		c.mode = ModeConcurrently
	}
	if c.skipIfUnchanged {
		var same bool
		if err := tx.QueryRow(ctx, countersSQL, c.relid).Scan(&c.counters); err != nil {
			return c, fmt.Errorf("read source counters of %s: %w", c.view, err)
		}
		if err := tx.QueryRow(ctx, `SELECT coalesce(source_counters = $2::jsonb, false)
			FROM matcol.matview_schedule WHERE id = $1`, c.id, c.counters).Scan(&same); err != nil {
			return c, fmt.Errorf("compare source counters of %s: %w", c.view, err)
		}
		if same && c.hasCounters && c.populated && only == nil {
			c.mode = ModeSkipped
		}
	}
	if c.mode == ModeSkipped {
		err = tx.QueryRow(ctx, `INSERT INTO matcol.matview_execution
				(schedule_id, mode, pid, ended_at, execution_is_successful)
			VALUES ($1, $2, pg_backend_pid(), clock_timestamp(), true) RETURNING id, started_at`,
			c.id, c.mode).Scan(&c.execID, &c.startedAt)
	} else {
		err = tx.QueryRow(ctx, `INSERT INTO matcol.matview_execution (schedule_id, mode, pid)
			VALUES ($1, $2, pg_backend_pid()) RETURNING id, started_at`, c.id, c.mode).Scan(&c.execID, &c.startedAt)
	}
	if err != nil {
		return c, fmt.Errorf("record execution of %s: %w", c.view, err)
	}
	if _, err := tx.Exec(ctx, `UPDATE matcol.matview_schedule SET last_attempted_at = $2,
			next_due_at = CASE WHEN $4 THEN $2::timestamptz + make_interval(secs => $3) ELSE next_due_at END
		WHERE id = $1`, c.id, c.startedAt, c.interval.Seconds(), c.mode == ModeSkipped); err != nil {
		return c, fmt.Errorf("claim %s: %w", c.view, err)
	}
	if c.mode == ModeSkipped {
		if err := prune(ctx, tx, c); err != nil {
			return c, err
		}
	}
	// Not cancellable: a stop arriving mid-commit could leave the execution committed yet never
	// recorded as ended, and the next claim would call it abandoned.
	if err := tx.Commit(context.WithoutCancel(ctx)); err != nil {
		return c, fmt.Errorf("commit claim of %s: %w", c.view, err)
	}
	if c.mode == ModePlain && s.once("plain", c.view) {
		if c.populated {
			s.log.Warn("matview has no unique index usable by REFRESH CONCURRENTLY, so readers block while it refreshes; add a unique index on plain columns, with no WHERE clause",
				"view", c.view.String())
		} else {
			s.log.Info("matview is not populated; its first refresh is plain", "view", c.view.String())
		}
	}
	return c, nil
}

// refresh runs the REFRESH with statement_timeout = maximum_execution_duration. On shutdown it
// cancels the statement on the server rather than dropping the connection, so the backend stops
// too instead of running on orphaned.
func (s *Scheduler) refresh(ctx context.Context, conn *pgxpool.Conn, c *claim) error {
	stop := context.AfterFunc(ctx, func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Conn().PgConn().CancelRequest(cctx)
	})
	defer stop()
	stmt := "REFRESH MATERIALIZED VIEW " + c.view.Sanitize()
	if c.mode == ModeConcurrently {
		stmt = "REFRESH MATERIALIZED VIEW CONCURRENTLY " + c.view.Sanitize()
	}
	timeout := "0"
	if c.maxDur > 0 {
		timeout = strconv.FormatInt(max(1, (c.maxDur+time.Millisecond-1).Milliseconds()), 10)
	}
	return pgx.BeginFunc(context.WithoutCancel(ctx), conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('statement_timeout', $1, true)`, timeout); err != nil {
			return err
		}
		_, err := tx.Exec(context.WithoutCancel(ctx), stmt)
		return err
	})
}

// finish records the outcome, sets the next due time and trims the history. It runs on another
// connection of the pool, so the refresh's own may be broken, and while the advisory lock is
// still held.
func (s *Scheduler) finish(ctx context.Context, c *claim, refreshErr error) error {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := pgx.BeginFunc(fctx, s.pool, func(tx pgx.Tx) error {
		if refreshErr == nil {
			if _, err := tx.Exec(fctx, `UPDATE matcol.matview_execution SET ended_at = clock_timestamp(),
				execution_is_successful = true WHERE id = $1`, c.execID); err != nil {
				return err
			}
			// Intervals run from start to start; a refresh longer than its interval is followed by
			// the next one at once, never overlapped.
			if _, err := tx.Exec(fctx, `UPDATE matcol.matview_schedule SET last_success_at = clock_timestamp(),
					consecutive_failures = 0,
					next_due_at = greatest($2::timestamptz + make_interval(secs => $3), clock_timestamp()),
					source_counters = coalesce($4::jsonb, source_counters)
				WHERE id = $1`, c.id, c.startedAt, c.interval.Seconds(), c.counters); err != nil {
				return err
			}
			return prune(fctx, tx, c)
		}
		name, msg, terminated := describe(refreshErr)
		if ctx.Err() != nil {
			// Stopping is not the view's fault: no failure counted, and it stays due.
			name, msg, terminated = "shutdown", "matcol stopped during the refresh", true
		}
		if _, err := tx.Exec(fctx, `UPDATE matcol.matview_execution SET ended_at = clock_timestamp(),
				execution_is_successful = false, error_name = $2, error_message = $3,
				terminated_at = CASE WHEN $4 THEN clock_timestamp() END
			WHERE id = $1`, c.execID, name, msg, terminated); err != nil {
			return err
		}
		if ctx.Err() == nil {
			wait := retryDelay(c.failures+1, s.cfg.RetryBase, s.cfg.RetryMax)
			if _, err := tx.Exec(fctx, `UPDATE matcol.matview_schedule SET
					consecutive_failures = consecutive_failures + 1,
					last_error = $2, last_error_at = clock_timestamp(),
					next_due_at = clock_timestamp() + make_interval(secs => $3)
				WHERE id = $1`, c.id, name+": "+msg, wait.Seconds()); err != nil {
				return err
			}
		}
		return prune(fctx, tx, c)
	})
	if err != nil {
		return fmt.Errorf("record the refresh of %s: %w", c.view, err)
	}
	return nil
}

// prune keeps the view's newest keep executions.
func prune(ctx context.Context, tx pgx.Tx, c *claim) error {
	_, err := tx.Exec(ctx, `DELETE FROM matcol.matview_execution WHERE schedule_id = $1 AND id <= (
		SELECT id FROM matcol.matview_execution WHERE schedule_id = $1 ORDER BY id DESC OFFSET $2 LIMIT 1)`,
		c.id, c.keep)
	if err != nil {
		return fmt.Errorf("trim the history of %s: %w", c.view, err)
	}
	return nil
}

// unlock releases the view's advisory lock. If that fails, the connection is closed, which
// releases it too: a lock left on a pooled connection would block the view for good.
func (s *Scheduler) unlock(conn *pgxpool.Conn, id int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_advisory_unlock($1, $2)`, lockClass, int32(id)).Scan(&ok); err != nil || !ok {
		_ = conn.Conn().Close(ctx)
	}
}

// retryDelay is the wait after the n-th consecutive failure: base doubled n-1 times, capped at
// max, with ±10% jitter so views that failed together do not retry together.
func retryDelay(n int, base, max time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}

// describe splits an error into a condition name and a message for the history, and says
// whether the statement was cut short (statement timeout or cancel).
func describe(err error) (name, msg string, terminated bool) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		msg = pe.Message
		if pe.Detail != "" {
			msg += " (" + pe.Detail + ")"
		}
		name = conditions[pe.Code]
		if name == "" {
			name = "sqlstate " + pe.Code
		}
		return name, msg, pe.Code == "57014"
	}
	if dial.IsConnectionError(err) {
		return "connection_failure", err.Error(), true
	}
	return "error", err.Error(), false
}

// conditions names the SQLSTATEs a refresh commonly ends with; others are shown by code.
var conditions = map[string]string{
	"57014": "query_canceled", "55P03": "lock_not_available", "40P01": "deadlock_detected",
	"40001": "serialization_failure", "22012": "division_by_zero", "42P01": "undefined_table",
	"42703": "undefined_column", "42883": "undefined_function", "55000": "object_not_in_prerequisite_state",
	"21000": "cardinality_violation", "23505": "unique_violation", "23502": "not_null_violation",
	"42501": "insufficient_privilege", "53100": "disk_full", "53200": "out_of_memory",
	"53400": "configuration_limit_exceeded", "57P01": "admin_shutdown", "22003": "numeric_value_out_of_range",
	"22P02": "invalid_text_representation", "P0001": "raise_exception", "XX000": "internal_error",
}
