package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/matcol/matcol/config"
	"github.com/matcol/matcol/discovery"
	"github.com/matcol/matcol/internal/dial"
	"github.com/matcol/matcol/listener"
	"github.com/matcol/matcol/listener/logical"
	"github.com/matcol/matcol/listener/trigger"
	"github.com/matcol/matcol/materializer"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/refresh"
	"github.com/matcol/matcol/registry"
	"github.com/matcol/matcol/status"
)

// controlConns is the size of the pool of the drainer, the throttle's checks and /status, when
// database.max_conns leaves room for it beside the workers.
const controlConns = 3

// Daemon is a running matcol.
type Daemon struct {
	cfg       *config.Config
	log       hclog.Logger
	pool      *pgxpool.Pool // /status, the drainer and the checks; the workers' too when not split
	work      *pgxpool.Pool // the workers'
	Mat       *materializer.Materializer
	started   time.Time
	freshness prometheus.Histogram
	cache     *dial.CacheGuard
	// Version is reported by the status endpoint.
	Version string
	// Logical is the logical-mode listener, nil in trigger mode.
	Logical *logical.Listener

	rescanNow chan struct{}
	reloadNow chan struct{}
	// server, when Run started it before Start, is the status server Wait reports through.
	server *status.Server
	rates  rates
}

// Run applies the config, then keeps materialized columns fresh until ctx ends. An unreachable
// database is retried with backoff, at start and later; invalid enrichments end it with an error.
// The status server starts first, so that /healthz answers while the database is unreachable or
// the first apply is slow; /readyz waits for the daemon.
func Run(ctx context.Context, cfg *config.Config, log hclog.Logger, version string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan error, 1)
	var srv *status.Server
	if cfg.Status.Listen != "" {
		srv = &status.Server{Addr: cfg.Status.Listen, Token: cfg.Status.Token, Version: version, Log: log.Named("status")}
		ln, err := srv.Listen()
		if err != nil {
			return err
		}
		go func() {
			err := srv.Serve(ctx, ln)
			if err != nil {
				cancel() // a daemon nobody can probe is stopped rather than left running blind
			}
			served <- err
		}()
	} else {
		served <- nil
	}
	err := func() error {
		d, err := Start(ctx, cfg, log)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		d.Version = version
		d.server = srv
		return d.Wait(ctx)
	}()
	cancel()
	if serr := <-served; err == nil {
		err = serr
	}
	return err
}

// Start applies the config and connects; Wait runs the parts.
func Start(ctx context.Context, cfg *config.Config, log hclog.Logger) (*Daemon, error) {
	for attempt := 0; ; attempt++ {
		rep, err := Apply(ctx, cfg, log.Named("apply"))
		if err == nil {
			logReport(log, rep)
			break
		}
		if !dial.IsConnectionError(err) {
			return nil, err
		}
		wait := retryDelay(attempt)
		log.Warn("database unreachable; retrying", "error", err, "retry_in", wait.Round(time.Millisecond))
		if !dial.Sleep(ctx, wait) {
			return nil, ctx.Err()
		}
	}
	maxConns := cfg.Database.MaxConns
	if maxConns == 0 {
		maxConns = cfg.Materializer.Workers + 4
	}
	guard := &dial.CacheGuard{MaxBytes: int64(cfg.Database.MaxCacheBytes), Log: log.Named("pool")}
	// The drainer, the checks and /status get connections of their own, so that the workers'
	// pool serves batches alone (see materializer.Materializer.Control); a cap too small to
	// split leaves one pool for all.
	opts := dial.PoolOptions{MaxConns: int32(maxConns), MaxConnLifetime: cfg.Database.MaxConnLifetime, Cache: guard}
	split := maxConns >= cfg.Materializer.Workers+controlConns+1
	if split {
		opts.MaxConns -= controlConns
	}
	work, err := dial.Pool(ctx, cfg.DatabaseURL, "worker", opts)
	if err != nil {
		return nil, err
	}
	ctl := work
	if split {
		opts.MaxConns = controlConns
		if ctl, err = dial.Pool(ctx, cfg.DatabaseURL, "control", opts); err != nil {
			work.Close()
			return nil, err
		}
	}
	p, err := loadPlanOnce(ctx, cfg.DatabaseURL)
	for attempt := 0; dial.IsConnectionError(err); attempt++ {
		// As for apply above: a restart or a terminated backend is no reason to stop.
		wait := retryDelay(attempt)
		log.Warn("database unreachable; retrying", "error", err, "retry_in", wait.Round(time.Millisecond))
		if !dial.Sleep(ctx, wait) {
			closeBoth(work, ctl)
			return nil, ctx.Err()
		}
		p, err = loadPlanOnce(ctx, cfg.DatabaseURL)
	}
	if err != nil {
		closeBoth(work, ctl)
		return nil, err
	}
	m := materializer.New(work, p, materializer.Config{
		Workers:             cfg.Materializer.Workers,
		TableWorkers:        cfg.Materializer.TableWorkers,
		BatchSize:           cfg.Materializer.BatchSize,
		TargetBatchDuration: cfg.Materializer.TargetBatchDuration,
		SweepInterval:       cfg.Materializer.SweepInterval,
		MaxReplicaLag:       cfg.Throttle.MaxReplicaLag,
		LatencyFactor:       latencyFactor(cfg.Throttle.LatencyFactor),
		MaxDelay:            maxDelay(cfg.Throttle.MaxDelay),
	}, log.Named("materializer"))
	if ctl != work {
		m.Control = ctl
	}
	d := &Daemon{cfg: cfg, log: log, pool: ctl, work: work, Mat: m, started: time.Now(), freshness: status.NewFreshnessHistogram(),
		Version: "dev", cache: guard, rescanNow: make(chan struct{}, 1), reloadNow: make(chan struct{}, 1)}
	m.OnGone = d.RescanNow
	m.OnPlanChanged = d.ReloadNow
	m.OnFresh = func(lat time.Duration) { d.freshness.Observe(lat.Seconds()) }
	if cfg.Invalidation.Mode == "logical" {
		d.Logical = &logical.Listener{DSN: cfg.DatabaseURL, Slot: cfg.Invalidation.Slot,
			Publication: cfg.Invalidation.Publication, MaxRetainedWAL: int64(cfg.Invalidation.MaxRetainedWAL),
			Plan: m.Plan, Sink: m, Log: log.Named("listener"), Reload: d.ReloadNow, Yielding: m.Yielding,
			MaxHold: maxDelay(cfg.Throttle.MaxDelay)}
	}
	return d, nil
}

// closeBoth closes the workers' pool and the control pool, which may be one.
func closeBoth(work, control *pgxpool.Pool) {
	if work != nil && work != control {
		work.Close()
	}
	control.Close()
}

// Wait runs the listener, the materializer, the rescan loop and the matview scheduler until ctx
// ends.
func (d *Daemon) Wait(ctx context.Context) error {
	defer closeBoth(d.work, d.pool)
	var l listener.Listener
	var streaming func() bool
	var wake listener.Listener
	switch d.cfg.Invalidation.Mode {
	case "trigger":
		tl := &trigger.Listener{DSN: d.cfg.DatabaseURL, Sink: d.Mat, Log: d.log.Named("listener"), OnDDL: d.RescanNow, OnPlan: d.ReloadNow}
		l, streaming = tl, tl.Streaming
	case "logical":
		l = d.Logical
		// Every instance, leader or not, is woken by the leader's NOTIFY on queued entries.
		wl := &trigger.Listener{DSN: d.cfg.DatabaseURL, Sink: d.Mat, Log: d.log.Named("wake"), OnDDL: d.RescanNow, OnPlan: d.ReloadNow}
		wake = wl
		// A standby instance has no stream of its own; it is ready while it hears the leader.
		streaming = func() bool {
			if s := d.Logical.Stats(); s.Leader {
				return s.Streaming
			}
			return wl.Streaming()
		}
	default:
		return errors.New("invalidation.mode " + d.cfg.Invalidation.Mode + " is not available in this build")
	}
	d.log.Info("matcol running", "mode", d.cfg.Invalidation.Mode, "targets", len(d.Mat.Plan().Targets),
		"workers", d.cfg.Materializer.Workers)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return l.Run(gctx) })
	if wake != nil {
		g.Go(func() error { return wake.Run(gctx) })
	}
	g.Go(func() error { return d.Mat.Run(gctx) })
	g.Go(func() error { d.rescanLoop(gctx); return nil })
	if srv := d.server; srv != nil || d.cfg.Status.Listen != "" {
		if srv == nil {
			srv = &status.Server{Addr: d.cfg.Status.Listen, Token: d.cfg.Status.Token, Version: d.Version, Log: d.log.Named("status")}
			g.Go(func() error { return srv.Run(gctx) })
		}
		rep := &reporter{dsn: d.cfg.DatabaseURL, log: d.log.Named("status")}
		g.Go(func() error { rep.Run(gctx); return nil })
		g.Go(func() error { d.sampleRates(gctx); return nil })
		srv.Attach(d.statusSource(streaming, rep))
		defer srv.Attach(nil)
	}
	g.Go(func() error {
		materializer.RunQueuedBackfills(gctx, func(ctx context.Context) (*pgx.Conn, error) {
			return dial.Connect(ctx, d.cfg.DatabaseURL, "backfill")
		}, d.Mat.Plan, d.cfg.Throttle.MaxReplicaLag, d.cfg.Throttle.LatencyFactor, d.log.Named("backfill"), nil)
		return nil
	})
	g.Go(func() error {
		return refresh.Run(gctx, d.cfg.DatabaseURL, refresh.Config{}, d.cfg.Database.MaxConnLifetime, d.log.Named("refresh"))
	})
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	d.log.Info("matcol stopped")
	return err
}

// rescanLoop picks up registry changes made by other processes (another apply, SQL registration)
// and, for templates, schemas created or dropped since. Each tick costs one registry read and one
// catalog query; the plan is rebuilt (and validated) only when either changed, or when the DDL
// event trigger or a vanished table says the catalog moved.
func (d *Daemon) rescanLoop(ctx context.Context) {
	st := rescanState{fingerprint: fingerprint(d.Mat.Plan())}
	// What the partitions were at the last look of any daemon, so that one attached or
	// detached while none ran counts as a change; without that record, what they are now. A
	// rescan answers at once only when they differ.
	if conn, err := dial.Connect(ctx, d.cfg.DatabaseURL, "rescan"); err == nil {
		saved, serr := savedPartitions(ctx, conn)
		if st.partitions, err = partitionTrees(ctx, conn, d.Mat.Plan()); err == nil {
			switch {
			case serr == nil && saved == nil:
				_ = savePartitions(ctx, conn, st.partitions) // else the next change records them
			case serr == nil && !maps.EqualFunc(saved, st.partitions, slices.Equal):
				st.partitions = saved
				d.RescanNow()
			}
		} else if serr == nil {
			st.partitions = saved
		}
		conn.Close(context.WithoutCancel(ctx))
	}
	tick := time.NewTicker(d.cfg.Materializer.RescanInterval)
	defer tick.Stop()
	for {
		forced := false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-d.rescanNow:
			// A CREATE SCHEMA is usually followed by its CREATE TABLEs: take them together.
			if !dial.Sleep(ctx, 500*time.Millisecond) {
				return
			}
			forced = true
		case <-d.reloadNow:
			// Work waits for this plan.
			forced = true
		}
		if err := d.rescan(ctx, forced, &st); err != nil && ctx.Err() == nil {
			if d.Mat.PlanBehind() {
				// Work waits for this plan: try again soon, not at the next tick.
				d.log.Error("the registry changed but its plan cannot be built; materialization waits for it", "error", err)
				time.AfterFunc(2*time.Second, d.ReloadNow)
				continue
			}
			d.log.Warn("rescan failed; keeping the current plan", "error", err)
		}
	}
}

// rescanState is what the last rescan saw: the catalog probe, the plan's fingerprint and the
// partitions of its partitioned sources and targets.
type rescanState struct {
	probe, fingerprint string
	partitions         map[uint32][]discovery.Attached // per partitioned source or target, nil before the first rescan
}

// rescan reads the registry and the catalog and applies a changed plan. Catalog reads over
// thousands of tables leave a backend big: it runs on a connection of its own, closed after.
func (d *Daemon) rescan(ctx context.Context, forced bool, st *rescanState) error {
	conn, err := dial.Connect(ctx, d.cfg.DatabaseURL, "rescan")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	probe := ""
	if !forced {
		if probe, err = d.probe(ctx, conn); err != nil {
			return err
		}
		if probe == st.probe {
			return nil
		}
	}
	p, _, err := LoadPlan(ctx, conn)
	if err != nil {
		return err
	}
	st.probe = probe
	fp := fingerprint(p)
	parts, err := partitionTrees(ctx, conn, p)
	if err != nil {
		return err
	}
	partsChanged := !maps.EqualFunc(parts, st.partitions, slices.Equal)
	if fp == st.fingerprint && !partsChanged {
		return nil
	}
	if partsChanged && st.partitions != nil {
		// A partition attached with rows, detached or dropped changes what a source or target
		// holds without a row change that a trigger or the WAL would report.
		if err := invalidatePartitioned(ctx, conn, p, st.partitions, parts, d.log); err != nil {
			return err
		}
		if err := queueArrivedRows(ctx, conn, p, st.partitions, parts, d.log); err != nil {
			return err
		}
	}
	if partsChanged {
		if err := savePartitions(ctx, conn, parts); err != nil {
			return err
		}
	}
	if fp != st.fingerprint {
		d.log.Info("registry or catalog changed; reloading", "targets", len(p.Targets), "skipped", len(p.Skipped))
		for _, s := range p.Skipped {
			d.log.Warn("template instance skipped", "problem", s)
		}
	}
	// Enrichments registered in SQL, new tenants of a template and new partitions of a source
	// (TRUNCATE has no row triggers to clone) need triggers too.
	if err := syncTriggers(ctx, conn, p, d.cfg.Invalidation.Mode == "trigger", d.log); err != nil {
		d.log.Warn("regenerating triggers failed; retrying at the next rescan", "error", err)
		st.probe = ""
		return nil
	}
	st.partitions = parts
	if fp != st.fingerprint {
		d.Mat.SetPlan(p)
		st.fingerprint = fp
	}
	return nil
}

// loadPlanOnce builds the plan on a connection of its own, closed afterwards.
func loadPlanOnce(ctx context.Context, dsn string) (*plan.Plan, error) {
	conn, err := dial.Connect(ctx, dsn, "rescan")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	p, _, err := LoadPlan(ctx, conn)
	return p, err
}

// Cache returns the guard that recycles pooled connections by catalog-cache size.
func (d *Daemon) Cache() *dial.CacheGuard { return d.cache }

// RescanNow asks the rescan loop to read the registry and the catalog again soon.
func (d *Daemon) RescanNow() {
	select {
	case d.rescanNow <- struct{}{}:
	default:
	}
}

// ReloadNow asks the rescan loop for the registry's new plan at once: the registry changed.
func (d *Daemon) ReloadNow() {
	select {
	case d.reloadNow <- struct{}{}:
	default:
	}
}

// probe fingerprints the registry and the tables discovery finds, in one read each.
func (d *Daemon) probe(ctx context.Context, conn *pgx.Conn) (string, error) {
	h := sha256.New()
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		defs, err := registry.Load(ctx, tx)
		if err != nil {
			return err
		}
		tables, err := discovery.Scan(ctx, tx)
		if err != nil {
			return err
		}
		// Without the DDL event trigger, a new partition of a source or target shows only here.
		parts, err := partitionTrees(ctx, tx, d.Mat.Plan())
		if err != nil {
			return err
		}
		_ = json.NewEncoder(h).Encode(defs)
		_ = json.NewEncoder(h).Encode(parts)
		return json.NewEncoder(h).Encode(tables)
	})
	return hex.EncodeToString(h.Sum(nil)), err
}

// syncTriggers regenerates the triggers of p, in transactions of at most trigger.ChunkTables
// tables each.
func syncTriggers(ctx context.Context, conn *pgx.Conn, p *plan.Plan, stale bool, log hclog.Logger) error {
	changes, err := trigger.SyncAll(ctx, conn, p, stale)
	logChanges(log, changes)
	return err
}

func logChanges(log hclog.Logger, changes []trigger.Change) {
	if len(changes) > 20 {
		log.Info("triggers changed", "changes", len(changes))
		return
	}
	for _, c := range changes {
		log.Info(c.Action, "table", c.Table.String())
	}
}

// maxDelay maps the config's 0 (never wait) to the materializer's negative.
func maxDelay(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// latencyFactor maps the config's 0 (off) to the materializer's negative (off).
func latencyFactor(f float64) float64 {
	if f == 0 {
		return -1
	}
	return f
}

// fingerprint identifies a plan: its definitions and, for templates, which tables it covers.
func fingerprint(p *plan.Plan) string {
	h := sha256.New()
	fmt.Fprintf(h, "version %d\n", p.Version)
	_ = json.NewEncoder(h).Encode(p.Definitions())
	for _, t := range p.Targets {
		fmt.Fprintf(h, "%d %d %s %d\n", t.ID, t.OID, t.Table.Sanitize(), len(t.Enrichments))
	}
	return hex.EncodeToString(h.Sum(nil))
}

func logReport(log hclog.Logger, rep *Report) {
	for _, m := range rep.Installed {
		log.Info("installed schema matcol migration", "version", m.Version, "name", m.Name)
	}
	for _, n := range rep.Changes.Added {
		log.Info("registered enrichment", "enrichment", n)
	}
	for _, n := range rep.Changes.Updated {
		log.Info("updated enrichment", "enrichment", n)
	}
	for _, n := range rep.Changes.Removed {
		log.Info("removed enrichment", "enrichment", n)
	}
	logChanges(log, rep.Triggers)
	for _, n := range rep.Matviews.Added {
		log.Info("scheduled matview", "view", n)
	}
	for _, n := range rep.Matviews.Updated {
		log.Info("updated matview schedule", "view", n)
	}
	for _, n := range rep.Matviews.Removed {
		log.Info("unscheduled matview", "view", n)
	}
	for _, c := range rep.Publication {
		log.Info("logical mode setup", "change", c)
	}
}
