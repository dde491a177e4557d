package daemon

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/status"
)

// statusSource lends the status server this daemon's pool, plan and live figures.
func (d *Daemon) statusSource(streaming func() bool, rep *reporter) *status.Source {
	return &status.Source{
		DB:        d.pool,
		Plan:      d.Mat.Plan,
		Opts:      status.Options{Mode: d.cfg.Invalidation.Mode, Slot: d.cfg.Invalidation.Slot},
		Live:      func(r *status.Report) { d.live(r, rep) },
		Reporter:  rep.Leader,
		Freshness: d.freshness,
		Process: func() status.Process {
			return status.Process{RowsMaterialized: d.Mat.Stats.RowsMaterialized.Load(),
				LastBatchSeconds: time.Duration(d.Mat.Stats.LastBatchNanos.Load()).Seconds(), Paused: d.Mat.Paused(),
				ReplicaLagKnown: d.Mat.ReplicaLagKnown(), ThrottleLevel: d.Mat.ThrottleLevel(),
				Throttled: d.Mat.Stats.Throttled.Load(), EntriesDropped: d.Mat.Stats.EntriesDropped.Load(), DecodingHolds: d.holds()}
		},
		Ready: func(ctx context.Context) error {
			if err := d.pool.Ping(ctx); err != nil {
				return errors.New("database unreachable")
			}
			if streaming != nil && !streaming() {
				return errors.New("listener not streaming")
			}
			return nil
		},
	}
}

// live adds what only the running daemon knows to a report read from the database.
func (d *Daemon) live(r *status.Report, rep *reporter) {
	p := d.Mat.Plan()
	// By enrichment and table: a template's instances share its name.
	ids := map[[2]string]int{}
	for _, t := range p.Targets {
		for _, e := range t.Enrichments {
			ids[[2]string{e.Name, t.Table.String()}] = t.ID
		}
	}
	if d.Logical != nil {
		s := d.Logical.Stats()
		r.Listener.Leader, r.Listener.Streaming, r.Listener.Resyncs, r.Listener.Holding = &s.Leader, &s.Streaming, &s.Resyncs, &s.Holding
	}
	now := time.Now()
	up := now.Sub(d.started).Seconds()
	for i := range r.Enrichments {
		e := &r.Enrichments[i]
		id := ids[[2]string{e.Name, e.Table}]
		rows, last := d.Mat.TargetStats(id)
		rate := d.rates.observe(id, rows, now)
		secs := last.Seconds()
		e.RowsPerSecond, e.LastBatchSeconds, e.RowsMaterializedTotal = &rate, &secs, &rows
	}
	leader := rep.Leader()
	r.Daemon = &status.Daemon{Version: d.Version, StartedAt: d.started.UTC(), UptimeSeconds: up, Paused: d.Mat.Paused(),
		Leader: &leader, ReplicaLagKnown: d.Mat.ReplicaLagKnown(), ThrottleLevel: d.Mat.ThrottleLevel(), Connections: []status.Connection{}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	rows, err := d.pool.Query(ctx, `SELECT pid, application_name, backend_start, coalesce(state, '')
		FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'matcol%' ORDER BY pid`)
	if err != nil {
		return
	}
	conns, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (status.Connection, error) {
		var c status.Connection
		return c, row.Scan(&c.PID, &c.ApplicationName, &c.BackendStart, &c.State)
	})
	if err == nil {
		sizes := d.cache.Sizes()
		for i := range conns {
			if n, ok := sizes[uint32(conns[i].PID)]; ok {
				conns[i].CacheBytes = &n
			}
		}
		r.Daemon.Connections = conns
	}
}

// sampleRates records every target's row count every few seconds, so that rows_per_second
// covers the last minute whenever /status is read.
func (d *Daemon) sampleRates(ctx context.Context) {
	tick := time.NewTicker(rateSampleEvery)
	defer tick.Stop()
	for {
		now := time.Now()
		for _, t := range d.Mat.Plan().Targets {
			rows, _ := d.Mat.TargetStats(t.ID)
			d.rates.observe(t.ID, rows, now)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

const (
	rateWindow      = time.Minute
	rateSampleEvery = 5 * time.Second
)

// rates keeps recent row counts per target and turns them into a rate over the last minute.
type rates struct {
	mu      sync.Mutex
	samples map[int][]rateSample
}

type rateSample struct {
	at   time.Time
	rows int64
}

// observe records rows for target id at now and returns the rows per second since the oldest
// sample of the last minute.
func (r *rates) observe(id int, rows int64, now time.Time) float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.samples == nil {
		r.samples = map[int][]rateSample{}
	}
	s := r.samples[id]
	if n := len(s); n > 0 && rows < s[n-1].rows {
		s = nil // the count restarted
	}
	for len(s) > 1 && now.Sub(s[1].at) >= rateWindow {
		s = s[1:] // keep one sample at or beyond the window's start
	}
	s = append(s, rateSample{at: now, rows: rows})
	r.samples[id] = s
	first := s[0]
	if secs := now.Sub(first.at).Seconds(); secs >= 1 {
		return float64(rows-first.rows) / secs
	}
	return 0
}

// holds is how often this process's slot stream stopped decoding for a saturated application.
func (d *Daemon) holds() int64 {
	if d.Logical == nil {
		return 0
	}
	return int64(d.Logical.Stats().Holds)
}
