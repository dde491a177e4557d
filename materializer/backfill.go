package materializer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/plan"
)

// lockBackfill is the advisory-lock namespace of backfills: the process running backfill N holds
// (lockBackfill, N) on its connection, so a crashed run releases it at once and another may resume.
const lockBackfill = 0x6d617463

// BackfillSpec says what to fill.
type BackfillSpec struct {
	Target      *plan.Target
	Enrichments []*plan.Enrichment
	// Where limits the rows (SQL over the target's columns).
	Where string
	// BatchSize is the starting rows per batch; it adapts toward TargetDuration. Defaults to 1000.
	BatchSize int
	// Rate caps rows per second; 0 means no cap.
	Rate int
	// TargetDuration bounds how long a batch holds its row locks. Defaults to 150ms.
	TargetDuration time.Duration
	// Jobs is how many batches are written at once, each on its own connection from Connect.
	// Defaults to 1 (batches run on the backfill's own connection, one after another).
	Jobs    int
	Connect func(context.Context) (*pgx.Conn, error)
	// MaxReplicaLag holds the backfill while a replica's replay lag exceeds it, as it holds the
	// daemon; 0 disables. matcol pause holds it too.
	MaxReplicaLag time.Duration
	// LatencyFactor throttles the backfill as it throttles the daemon (see harm.go) when, while
	// application transactions are in flight, a trivial statement takes this many times its
	// quiet latency; 0 disables that signal (lock waits the backfill causes still throttle it).
	LatencyFactor float64
	// PlanVersion is the registry version of the plan Target comes from: the backfill stops with
	// ErrPlanChanged when the registry changes under it. 0 does not check.
	PlanVersion int64
}

// ErrPlanChanged means the registry changed while a backfill ran: its enrichments may no longer
// be what it computes. Run it again; it resumes from its checkpoint.
var ErrPlanChanged = errors.New("the registry changed (matcol apply) while the backfill ran; run it again to resume it with the new definitions, with --restart if the enrichment's sql changed")

// errBusyPlan means a registry change is committing; the batch is retried.
var errBusyPlan = errors.New("a registry change is committing")

// BackfillProgress is reported after each batch.
type BackfillProgress struct {
	ID      int64
	Done    int64
	Total   int64 // estimate; 0 when unknown
	Elapsed time.Duration
	Rate    float64 // rows per second in this run
	Failed  int64
	// Throttled counts the pauses the throttle made.
	Throttled int64
	Finished  bool
}

// Backfill is a backfill bound to a connection that holds its lock.
type Backfill struct {
	ID     int64
	spec   BackfillSpec
	conn   *pgx.Conn
	cursor []*string
	done   int64
	total  int64
	log    hclog.Logger
	loadAt time.Time // when hold last read the pause switch and replica lag
	// stepSQL is the one-statement batch; empty when the enrichment's SQL cannot take it, and
	// then every batch reads its keys first (rangeSQL).
	stepSQL, rangeSQL string
	noStep            atomic.Bool // set when the step does not plan
	harm              harm        // the throttle, read in hold
	throttled         int64
	lagWarned         bool
}

// EnrichmentNames returns the sorted names a backfill row is keyed by.
func (s BackfillSpec) EnrichmentNames() []string {
	names := make([]string, len(s.Enrichments))
	for i, e := range s.Enrichments {
		names[i] = e.Name
	}
	slices.Sort(names)
	return names
}

// ErrBackfillRunning means another live process runs that backfill.
var ErrBackfillRunning = errors.New("backfill is running in another process")

// ErrBackfillEnded means the backfill is no longer queued or running: done, failed or cancelled.
var ErrBackfillEnded = errors.New("backfill has ended")

// RunningError says which backfill another live process holds, and who took it last.
type RunningError struct {
	ID    int64
	Owner string // application_name and pid; empty when unknown
}

func (e *RunningError) Error() string {
	if e.Owner == "" {
		return fmt.Sprintf("backfill %d: %v", e.ID, ErrBackfillRunning)
	}
	return fmt.Sprintf("backfill %d: %v (last taken by %s; matcol status shows its progress)", e.ID, ErrBackfillRunning, e.Owner)
}

func (e *RunningError) Unwrap() error { return ErrBackfillRunning }

// QueueBackfill records a backfill for a running daemon to take (--async), or returns the one
// already queued or running for the same enrichments.
func QueueBackfill(ctx context.Context, conn *pgx.Conn, spec BackfillSpec, restart bool) (int64, error) {
	var id int64
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if restart {
			if _, err := tx.Exec(ctx, `UPDATE matcol.backfill SET status = 'cancelled', finished_at = now()
				WHERE target_id = $1 AND enrichments = $2 AND status IN ('queued', 'running')`,
				spec.Target.ID, spec.EnrichmentNames()); err != nil {
				return err
			}
		}
		return tx.QueryRow(ctx, `
			WITH ins AS (
				INSERT INTO matcol.backfill (target_id, enrichments, where_sql, batch_size, rate, rows_total, status)
				VALUES ($1, $2, $3, $4, $5, $6, 'queued')
				ON CONFLICT (target_id, enrichments) WHERE status IN ('queued', 'running') DO NOTHING
				RETURNING id)
			SELECT id FROM ins UNION ALL
			SELECT id FROM matcol.backfill WHERE target_id = $1 AND enrichments = $2 AND status IN ('queued', 'running')
			LIMIT 1`, spec.Target.ID, spec.EnrichmentNames(), spec.Where, spec.BatchSize, spec.Rate,
			estimateRows(ctx, tx, spec)).Scan(&id)
	})
	if err != nil {
		return 0, fmt.Errorf("queue backfill: %w", err)
	}
	return id, nil
}

// OpenBackfill takes the backfill of spec on conn: it resumes an unfinished one from its
// checkpoint, or starts one (restart starts over). conn must stay dedicated to it until Run ends.
func OpenBackfill(ctx context.Context, conn *pgx.Conn, spec BackfillSpec, restart bool, log hclog.Logger) (*Backfill, error) {
	id, err := QueueBackfill(ctx, conn, spec, restart)
	if err != nil {
		return nil, err
	}
	return ClaimBackfill(ctx, conn, spec, id, log)
}

// ClaimBackfill takes backfill id, queued or running, when no live process holds it.
func ClaimBackfill(ctx context.Context, conn *pgx.Conn, spec BackfillSpec, id int64, log hclog.Logger) (*Backfill, error) {
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, int32(lockBackfill), int32(id)).Scan(&got); err != nil {
		return nil, err
	}
	if !got {
		// Name the holder: after a kill, a running daemon may have taken the backfill over.
		e := &RunningError{ID: id}
		_ = conn.QueryRow(ctx, `SELECT coalesce(owner, '') FROM matcol.backfill WHERE id = $1`, id).Scan(&e.Owner)
		return nil, e
	}
	b := &Backfill{ID: id, spec: spec, conn: conn, log: log}
	var total *int64
	err := conn.QueryRow(ctx, `UPDATE matcol.backfill SET status = 'running', started_at = coalesce(started_at, now()),
			owner = current_setting('application_name') || ' pid ' || pg_backend_pid(), updated_at = now()
		WHERE id = $1 AND status IN ('queued', 'running') RETURNING cursor, rows_done, rows_total`, id).Scan(&b.cursor, &b.done, &total)
	if err != nil {
		_, _ = conn.Exec(ctx, `SELECT pg_advisory_unlock($1, $2)`, int32(lockBackfill), int32(id))
		if errors.Is(err, pgx.ErrNoRows) {
			// Its holder finished or cancelled it between our read and our lock.
			return nil, fmt.Errorf("backfill %d: %w", id, ErrBackfillEnded)
		}
		return nil, fmt.Errorf("start backfill %d: %w", id, err)
	}
	if total != nil {
		b.total = *total
	}
	if b.spec.BatchSize <= 0 {
		b.spec.BatchSize = 1000
	}
	if b.spec.TargetDuration <= 0 {
		b.spec.TargetDuration = 150 * time.Millisecond
	}
	return b, nil
}

// Resumed reports whether the backfill continues from a checkpoint.
func (b *Backfill) Resumed() bool { return b.cursor != nil }

func estimateRows(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, spec BackfillSpec) *int64 {
	var n int64
	if spec.Where != "" {
		return nil
	}
	if err := q.QueryRow(ctx, `SELECT reltuples::bigint FROM pg_class WHERE oid = $1`, spec.Target.OID).Scan(&n); err != nil {
		return nil
	}
	if n < 0 { // never analyzed
		if err := q.QueryRow(ctx, "SELECT count(*) FROM "+spec.Target.Table.Sanitize()).Scan(&n); err != nil {
			return nil
		}
	}
	return &n
}

// Run fills the columns batch by batch in key order until the end of the table, committing the
// cursor with every batch. It writes only the spec's enrichments' columns and leaves
// materialized_at alone. Rows are not locked before they are computed: the write only lands on
// rows whose stamp is unchanged since the keys were read (see plan.BackfillWriteSQL); rows that
// changed meanwhile are retried at the end. A row whose enrichment fails is marked stale and left
// to the daemon, which quarantines it.
func (b *Backfill) Run(ctx context.Context, progress func(BackfillProgress)) error {
	defer func() {
		_, _ = b.conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1, $2)`, int32(lockBackfill), int32(b.ID))
	}()
	t := b.spec.Target
	b.rangeSQL = plan.RangeKeysSQL(t, b.spec.Where)
	if step, err := plan.BackfillStepSQL(t, b.spec.Enrichments, b.spec.Where); err == nil {
		b.stepSQL = step
	} else {
		b.log.Info("backfill reads each batch's keys first", "reason", err)
	}
	size := b.spec.BatchSize
	start := time.Now()
	startDone := b.done
	var failed int64
	var retry [][]*string // keys of rows that changed under a batch
	report := func(finished bool) {
		if progress == nil {
			return
		}
		el := time.Since(start)
		progress(BackfillProgress{ID: b.ID, Done: b.done, Total: b.total, Elapsed: el, Failed: failed, Finished: finished,
			Rate: float64(b.done-startDone) / max(el.Seconds(), 1e-9), Throttled: b.throttled})
	}
	if b.spec.Jobs > 1 && b.spec.Connect != nil {
		var err error
		if retry, failed, err = b.runParallel(ctx, report); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return b.fail(ctx, err)
		}
		return b.finish(ctx, retry, report)
	}
	for {
		if err := b.hold(ctx); err != nil {
			return err
		}
		batchStart := time.Now()
		f, err := b.fill(ctx, b.conn, span{lo: b.cursor, limit: size}, func(tx pgx.Tx, f filled) error {
			_, err := tx.Exec(ctx, `UPDATE matcol.backfill SET cursor = $2, rows_done = rows_done + $3, updated_at = now()
				WHERE id = $1`, b.ID, f.last, f.n)
			return err
		})
		if err != nil {
			if isBusy(err) {
				b.log.Info("rows are busy; retrying the batch", "table", t.Table.String())
				size = max(1, size/2)
				continue
			}
			return b.fail(ctx, err)
		}
		if f.n == 0 {
			break
		}
		failed += f.failed
		retry = append(retry, f.skipped...)
		b.cursor = f.last
		b.done += int64(f.n)
		took := time.Since(batchStart)
		size = b.adapt(size, f.n, took)
		report(false)
		if err := b.pace(ctx, start, startDone); err != nil {
			return err
		}
		if err := b.backOff(ctx, f.n, took); err != nil {
			return err
		}
	}
	return b.finish(ctx, retry, report)
}

// fail records err on the backfill's row, for status, and returns it.
func (b *Backfill) fail(ctx context.Context, err error) error {
	_, _ = b.conn.Exec(context.WithoutCancel(ctx), `UPDATE matcol.backfill SET error = $2, updated_at = now() WHERE id = $1`,
		b.ID, err.Error())
	return fmt.Errorf("backfill %d of %s: %w", b.ID, b.spec.Target.Table, err)
}

// hold waits while materialization is paused or a replica lags more than MaxReplicaLag, reading
// both at most once a second.
func (b *Backfill) hold(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if time.Since(b.loadAt) < time.Second {
		return nil
	}
	for waited := false; ; waited = true {
		var paused bool
		var lag float64
		if err := b.conn.QueryRow(ctx, loadSQL).Scan(&paused, &lag); err != nil {
			return fmt.Errorf("read the pause switch and replica lag: %w", err)
		}
		b.loadAt = time.Now()
		if s, err := probe(ctx, b.conn, true); err == nil {
			b.harm.factor = b.spec.LatencyFactor
			if _, reason := b.harm.add(s, b.loadAt); reason != "" && b.harm.level == 1 {
				b.log.Info("backfill throttles: the application is busy", "backfill", b.ID, "reason", reason)
			}
		}
		if lag < 0 && b.spec.MaxReplicaLag > 0 && !b.lagWarned {
			b.log.Warn("cannot read the standbys' replay lag; throttle.max_replica_lag is not enforced", "backfill", b.ID, "fix", lagFix)
			b.lagWarned = true
		}
		behind := b.spec.MaxReplicaLag > 0 && lag > b.spec.MaxReplicaLag.Seconds()
		if !paused && !behind {
			if waited {
				b.log.Info("backfill continues", "backfill", b.ID)
			}
			return nil
		}
		if !waited {
			b.log.Info("backfill holds: materialization is paused or a replica lags", "backfill", b.ID,
				"paused", paused, "replica_lag_seconds", lag, "limit", b.spec.MaxReplicaLag)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// adapt moves the batch size toward TargetDuration after a batch of n rows took d.
func (b *Backfill) adapt(size, n int, d time.Duration) int {
	switch {
	case d > b.spec.TargetDuration*3/2 && size > 1:
		return max(1, size*2/3)
	case d < b.spec.TargetDuration/2 && n >= size && size < 50000:
		return min(50000, size*3/2)
	}
	return size
}

// backOff pauses after a batch that took d while the throttle is up (see harm.go): level times
// as long as the batch took.
func (b *Backfill) backOff(ctx context.Context, _ int, d time.Duration) error {
	if b.harm.level == 0 {
		return nil
	}
	b.throttled++
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d * time.Duration(b.harm.level)):
	}
	return nil
}

// pace sleeps as long as the rows done since start run ahead of the rate cap.
func (b *Backfill) pace(ctx context.Context, start time.Time, startDone int64) error {
	if b.spec.Rate <= 0 {
		return nil
	}
	due := time.Duration(float64(b.done-startDone) / float64(b.spec.Rate) * float64(time.Second))
	if wait := due - time.Since(start); wait > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	return nil
}

func (b *Backfill) finish(ctx context.Context, retry [][]*string, report func(bool)) error {
	if err := b.retryChanged(ctx, retry); err != nil {
		return err
	}
	if _, err := b.conn.Exec(ctx, `UPDATE matcol.backfill SET status = 'done', finished_at = now(), updated_at = now()
		WHERE id = $1`, b.ID); err != nil {
		return err
	}
	report(true)
	return nil
}

// write runs the optimistic write for rows (key columns, then the stamp each row had) under a
// savepoint. It returns the keys it skipped because their row changed meanwhile, and how many
// rows failed; failing rows are isolated by halving and marked stale for the daemon.
func (b *Backfill) write(ctx context.Context, tx pgx.Tx, rows [][]*string) ([][]*string, int64, error) {
	if _, err := tx.Exec(ctx, "SAVEPOINT matcol_part"); err != nil {
		return nil, 0, err
	}
	width := len(b.spec.Target.Key)
	args := append(keyArgs(rows[:width]), plan.ArrayLiteral(rows[width]))
	tag, err := tx.Exec(ctx, plan.BackfillWriteSQL(b.spec.Target, b.spec.Enrichments), args...)
	if err == nil {
		var skipped [][]*string
		if int(tag.RowsAffected()) < len(rows[0]) {
			skipped, err = b.changed(ctx, tx, rows)
		}
		if err == nil {
			_, err = tx.Exec(ctx, "RELEASE SAVEPOINT matcol_part")
		}
		return skipped, 0, err
	}
	if !isRowError(err) {
		return nil, 0, err
	}
	if _, rbErr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT matcol_part"); rbErr != nil {
		return nil, 0, rbErr
	}
	n := len(rows[0])
	if n == 1 {
		key := make([]string, width)
		for i := range key {
			key[i] = *rows[i][0]
		}
		b.log.Warn("row failed during backfill; marked stale for the daemon to retry", "table", b.spec.Target.Table.String(),
			"key", key, "error", err)
		_, uerr := tx.Exec(ctx, plan.MarkStaleSQL(b.spec.Target), keyArgs(rows[:width])...)
		return nil, 1, uerr
	}
	s1, f1, err := b.write(ctx, tx, slice(rows, 0, n/2))
	if err != nil {
		return nil, f1, err
	}
	s2, f2, err := b.write(ctx, tx, slice(rows, n/2, n))
	return append(s1, s2...), f1 + f2, err
}

// changed returns, one key per element, the keys of rows (key columns, then the stamp each row
// had) whose row now has another stamp: the write skipped them. It runs only when the write came
// up short, in the same transaction, so a row the write did update still holds its stamp and
// its lock. Deleted rows are not returned.
func (b *Backfill) changed(ctx context.Context, tx pgx.Tx, rows [][]*string) ([][]*string, error) {
	width := len(b.spec.Target.Key)
	now, err := claim(ctx, tx, plan.KeysWithStampSQL(b.spec.Target), width+1, keyArgs(rows[:width])...)
	if err != nil {
		return nil, fmt.Errorf("read stamps of skipped rows: %w", err)
	}
	seen := map[string]*string{}
	for i := range rows[0] {
		seen[keyString(rows[:width], i)] = rows[width][i]
	}
	var out [][]*string
	for i := range now[0] {
		if was := seen[keyString(now[:width], i)]; !sameText(was, now[width][i]) {
			out = append(out, keyAt(now[:width], i))
		}
	}
	return out, nil
}

// keyAt returns the i-th key of key columns.
func keyAt(cols [][]*string, i int) []*string {
	k := make([]*string, len(cols))
	for c := range cols {
		k[c] = cols[c][i]
	}
	return k
}

func sameText(a, b *string) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && *a == *b)
}

func keyString(cols [][]*string, i int) string {
	s := ""
	for _, c := range cols {
		if c[i] != nil {
			s += *c[i]
		}
		s += "\x00"
	}
	return s
}

// retryChanged writes, with fresh stamps, rows that changed under their batch. A row that keeps
// changing is left to the daemon, which recomputes it whole anyway.
func (b *Backfill) retryChanged(ctx context.Context, keys [][]*string) error {
	t := b.spec.Target
	width := len(t.Key)
	for round := 0; round < 3 && len(keys) > 0; round++ {
		cols := make([][]*string, width)
		for _, k := range keys {
			for c := range cols {
				cols[c] = append(cols[c], k[c])
			}
		}
		err := pgx.BeginFunc(ctx, b.conn, func(tx pgx.Tx) error {
			if err := b.settings(ctx, tx, ""); err != nil {
				return err
			}
			rows, err := claim(ctx, tx, plan.KeysWithStampSQL(t), width+1, keyArgs(cols)...)
			if err != nil {
				return err
			}
			if len(rows[0]) == 0 {
				keys = nil
				return nil
			}
			keys, _, err = b.write(ctx, tx, rows)
			return err
		})
		if isBusy(err) {
			// Contended with the application (a lock timeout, a deadlock): a row that changed
			// went stale or was stamped by a batch, which computes every enrichment, so the
			// daemon has it either way. Try again, gently.
			b.log.Info("rows are busy; retrying the changed rows", "backfill", b.ID, "error", err)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(round+1) * 200 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("backfill %d: retry changed rows: %w", b.ID, err)
		}
	}
	if len(keys) > 0 {
		b.log.Info("rows kept changing during the backfill; the daemon recomputes them", "rows", len(keys))
	}
	return nil
}

// isBusy reports an error that says the batch's rows are contended, not wrong: its lock wait
// timed out, or it was chosen to break a deadlock with the application. The batch is retried.
func isBusy(err error) bool {
	if errors.Is(err, errBusyPlan) {
		return true
	}
	var pe interface{ SQLState() string }
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.SQLState() {
	case "55P03", "40P01", "40001":
		return true
	}
	return false
}

// RunQueuedBackfills takes backfills queued with --async (or left by a crashed run) and runs
// them, one at a time, until ctx ends.
func RunQueuedBackfills(ctx context.Context, connect func(context.Context) (*pgx.Conn, error), planOf func() *plan.Plan,
	maxLag time.Duration, latencyFactor float64, log hclog.Logger, progress func(BackfillProgress)) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		if err := runOneQueued(ctx, connect, planOf, maxLag, latencyFactor, log, progress); err != nil && ctx.Err() == nil {
			log.Warn("queued backfill failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func runOneQueued(ctx context.Context, connect func(context.Context) (*pgx.Conn, error), planOf func() *plan.Plan,
	maxLag time.Duration, latencyFactor float64, log hclog.Logger, progress func(BackfillProgress)) error {
	conn, err := connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT id, target_id, enrichments, where_sql, batch_size, rate FROM matcol.backfill
		WHERE status IN ('queued', 'running') ORDER BY id`)
	if err != nil {
		return err
	}
	type row struct {
		id          int64
		target      int
		names       []string
		where       string
		batch, rate int
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		return x, r.Scan(&x.id, &x.target, &x.names, &x.where, &x.batch, &x.rate)
	})
	if err != nil {
		return err
	}
	p := planOf()
	for _, x := range list {
		spec, ok := specFor(p, x.target, x.names)
		if !ok {
			continue
		}
		spec.Where, spec.BatchSize, spec.Rate = x.where, x.batch, x.rate
		spec.MaxReplicaLag, spec.LatencyFactor = maxLag, latencyFactor
		b, err := ClaimBackfill(ctx, conn, spec, x.id, log)
		if errors.Is(err, ErrBackfillRunning) || errors.Is(err, ErrBackfillEnded) {
			continue
		}
		if err != nil {
			return err
		}
		log.Info("running queued backfill", "backfill", x.id, "table", spec.Target.Table.String(), "enrichments", x.names)
		return b.Run(ctx, progress)
	}
	return nil
}

func specFor(p *plan.Plan, targetID int, names []string) (BackfillSpec, bool) {
	for _, t := range p.Targets {
		if t.ID != targetID {
			continue
		}
		spec := BackfillSpec{Target: t, PlanVersion: p.Version}
		for _, e := range t.Enrichments {
			if slices.Contains(names, e.Name) {
				spec.Enrichments = append(spec.Enrichments, e)
			}
		}
		return spec, len(spec.Enrichments) == len(names)
	}
	return BackfillSpec{}, false
}
