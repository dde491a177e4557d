package status

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/matcol/matcol/plan"
)

// Server serves /status, /metrics, /healthz and /readyz.
type Server struct {
	// Addr is the listen address. Defaults to 127.0.0.1:9180.
	Addr string
	// Token, when set, is required as a bearer token on /status and /metrics.
	Token string
	DB    Querier
	Plan  func() *plan.Plan
	Opts  Options
	// Live adds the daemon's in-memory figures to a report.
	Live func(*Report)
	// Ready returns nil while the database answers and the listener streams.
	Ready func(context.Context) error
	Log   hclog.Logger

	// Freshness observes source-commit-to-stamp latency; the materializer feeds it.
	Freshness prometheus.Histogram

	mu     sync.Mutex
	cached *Report
	at     time.Time
}

// NewFreshnessHistogram returns the histogram Server exports as matcol_freshness_seconds.
func NewFreshnessHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "matcol_freshness_seconds",
		Help:    "Latency from a source change's commit to its row being materialized.",
		Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300},
	})
}

// report returns a report at most a second old, so /status and /metrics scrapes share one read.
func (s *Server) report(ctx context.Context) (*Report, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cached != nil && time.Since(s.at) < time.Second {
		return s.cached, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err := Collect(ctx, s.DB, s.Plan(), s.Opts)
	if err != nil {
		return nil, err
	}
	if s.Live != nil {
		s.Live(r)
	}
	s.cached, s.at = r, time.Now()
	return r, nil
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&collector{s: s})
	if s.Freshness != nil {
		reg.MustRegister(s.Freshness)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if s.Ready != nil {
			if err := s.Ready(ctx); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /status", s.auth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rep, err := s.report(r.Context())
		if err != nil {
			http.Error(w, "status unavailable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if s.Token == "" {
			rep = redacted(rep)
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	})))
	mux.Handle("GET /metrics", s.auth(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})))
	return mux
}

func (s *Server) auth(next http.Handler) http.Handler {
	if s.Token == "" {
		return next
	}
	want := []byte("Bearer " + s.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", "Bearer")
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	addr := s.Addr
	if addr == "" {
		addr = "127.0.0.1:9180"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return errors.New("status server: " + err.Error())
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	s.Log.Info("status server listening", "address", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// collector turns a report into Prometheus metrics at scrape time.
type collector struct{ s *Server }

var (
	descStale    = prometheus.NewDesc("matcol_stale_rows", "Rows waiting to be materialized, including queued invalidations.", []string{"enrichment", "table"}, nil)
	descExact    = prometheus.NewDesc("matcol_stale_rows_exact", "1 when matcol_stale_rows is an exact count, 0 when estimated.", []string{"enrichment", "table"}, nil)
	descOldest   = prometheus.NewDesc("matcol_oldest_pending_seconds", "Age of the oldest invalidation not yet materialized.", []string{"enrichment", "table"}, nil)
	descPending  = prometheus.NewDesc("matcol_pending_invalidations", "Queued invalidations not yet applied to the table.", []string{"enrichment", "table"}, nil)
	descFailures = prometheus.NewDesc("matcol_failures", "Quarantined rows whose enrichment failed.", []string{"enrichment", "table"}, nil)
	descRows     = prometheus.NewDesc("matcol_rows_materialized_total", "Rows materialized by this daemon.", nil, nil)
	descBatch    = prometheus.NewDesc("matcol_last_batch_seconds", "Duration of the last batch.", nil, nil)
	descWAL      = prometheus.NewDesc("matcol_replication_slot_retained_wal_bytes", "WAL the replication slot holds back.", []string{"slot"}, nil)
	descWALState = prometheus.NewDesc("matcol_replication_slot_wal_status", "1 for the slot's current wal_status.", []string{"slot", "wal_status"}, nil)
	descBackfill = prometheus.NewDesc("matcol_backfill_rows_done", "Rows done by a queued or running backfill.", []string{"backfill", "table", "status"}, nil)
	descPaused   = prometheus.NewDesc("matcol_paused", "1 while materialization is paused.", nil, nil)
	descLagKnown = prometheus.NewDesc("matcol_replica_lag_known", "0 while standbys exist whose replay lag matcol cannot read, so throttle.max_replica_lag is not enforced.", nil, nil)
	descUp       = prometheus.NewDesc("matcol_status_up", "1 when the last status read from the database succeeded.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descStale, descExact, descOldest, descPending, descFailures, descRows, descBatch,
		descWAL, descWALState, descBackfill, descPaused, descLagKnown, descUp} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	r, err := c.s.report(context.Background())
	if err != nil {
		c.s.Log.Warn("status read failed", "error", err)
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 1)
	var rows int64
	var last float64
	for _, e := range aggregateTemplates(r.Enrichments) {
		l := []string{e.Name, e.Table}
		ch <- prometheus.MustNewConstMetric(descStale, prometheus.GaugeValue, float64(e.StaleRows), l...)
		ch <- prometheus.MustNewConstMetric(descExact, prometheus.GaugeValue, b2f(e.StaleRowsExact), l...)
		ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, e.OldestPendingSeconds, l...)
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(e.PendingInvalidations), l...)
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.GaugeValue, float64(e.Failures), l...)
		if e.RowsMaterializedTotal != nil {
			rows = *e.RowsMaterializedTotal
		}
		if e.LastBatchSeconds != nil {
			last = *e.LastBatchSeconds
		}
	}
	ch <- prometheus.MustNewConstMetric(descRows, prometheus.CounterValue, float64(rows))
	ch <- prometheus.MustNewConstMetric(descBatch, prometheus.GaugeValue, last)
	if r.Listener.Mode == "logical" {
		ch <- prometheus.MustNewConstMetric(descWAL, prometheus.GaugeValue, float64(r.Listener.RetainedWALBytes), r.Listener.Slot)
		ch <- prometheus.MustNewConstMetric(descWALState, prometheus.GaugeValue, 1, r.Listener.Slot, r.Listener.WALStatus)
	}
	for _, b := range r.Backfills {
		ch <- prometheus.MustNewConstMetric(descBackfill, prometheus.GaugeValue, float64(b.RowsDone),
			strings.TrimSpace(itoa(b.ID)), b.Table, b.Status)
	}
	if r.Daemon != nil {
		ch <- prometheus.MustNewConstMetric(descPaused, prometheus.GaugeValue, b2f(r.Daemon.Paused))
		ch <- prometheus.MustNewConstMetric(descLagKnown, prometheus.GaugeValue, b2f(r.Daemon.ReplicaLagKnown))
	}
}

// aggregateTemplates folds the instances of each template into one entry labelled with the
// template (tenant_*.item), so that thousands of tenants do not make thousands of series: stale
// rows, pending invalidations and failures add up, the oldest age is the maximum, and the count
// is exact only if every instance's is.
func aggregateTemplates(in []EnrichmentStatus) []EnrichmentStatus {
	out := make([]EnrichmentStatus, 0, len(in))
	at := map[[2]string]int{}
	for _, e := range in {
		if e.Template == "" {
			out = append(out, e)
			continue
		}
		k := [2]string{e.Name, e.Template}
		i, ok := at[k]
		if !ok {
			at[k] = len(out)
			agg := e
			agg.Table = e.Template
			out = append(out, agg)
			continue
		}
		a := &out[i]
		a.StaleRows += e.StaleRows
		a.StaleRowsExact = a.StaleRowsExact && e.StaleRowsExact
		a.PendingInvalidations += e.PendingInvalidations
		a.Failures += e.Failures
		a.OldestPendingSeconds = max(a.OldestPendingSeconds, e.OldestPendingSeconds)
		if e.RowsMaterializedTotal != nil && a.RowsMaterializedTotal != nil {
			n := *a.RowsMaterializedTotal + *e.RowsMaterializedTotal
			a.RowsMaterializedTotal = &n
		}
	}
	return out
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
