package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/status"
)

// statusServer builds the HTTP status server over this daemon's pool and live figures.
func (d *Daemon) statusServer(streaming func() bool) *status.Server {
	return &status.Server{
		Addr:      d.cfg.Status.Listen,
		Token:     d.cfg.Status.Token,
		DB:        d.pool,
		Plan:      d.Mat.Plan,
		Opts:      status.Options{Mode: d.cfg.Invalidation.Mode, Slot: d.cfg.Invalidation.Slot},
		Live:      d.live,
		Freshness: d.freshness,
		Log:       d.log.Named("status"),
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
func (d *Daemon) live(r *status.Report) {
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
		r.Listener.Leader, r.Listener.Streaming, r.Listener.Resyncs = &s.Leader, &s.Streaming, &s.Resyncs
	}
	up := time.Since(d.started).Seconds()
	for i := range r.Enrichments {
		e := &r.Enrichments[i]
		rows, last := d.Mat.TargetStats(ids[[2]string{e.Name, e.Table}])
		rate := float64(rows) / max(up, 1)
		secs := last.Seconds()
		e.RowsPerSecond, e.LastBatchSeconds, e.RowsMaterializedTotal = &rate, &secs, &rows
	}
	r.Daemon = &status.Daemon{Version: d.Version, StartedAt: d.started.UTC(), UptimeSeconds: up, Paused: d.Mat.Paused(),
		ReplicaLagKnown: d.Mat.ReplicaLagKnown(), Connections: []status.Connection{}}
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
