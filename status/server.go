package status

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/matcol/matcol/plan"
)

// Server serves /status, /metrics, /healthz and /readyz. It starts before the daemon has applied
// its config, so that /healthz answers while the database is unreachable or a first apply is
// slow; until Attach, /readyz and /status answer 503 and /metrics has only what needs no
// database.
type Server struct {
	// Addr is the listen address. Defaults to 127.0.0.1:9180.
	Addr string
	// Token, when set, is required as a bearer token on /status and /metrics.
	Token string
	// Version labels matcol_build_info.
	Version string
	Log     hclog.Logger

	src atomic.Pointer[Source]

	mu     sync.Mutex
	cached *Report
	at     time.Time
}

// Source is what a running daemon lends the server.
type Source struct {
	DB   Querier
	Plan func() *plan.Plan
	Opts Options
	// Live adds the daemon's in-memory figures to a report.
	Live func(*Report)
	// Ready returns nil while the database answers and the listener streams.
	Ready func(context.Context) error
	// Reporter reports whether this instance exports the figures read from the database; nil
	// means it does.
	Reporter func() bool
	// Process returns the figures of this process alone.
	Process func() Process
	// Freshness observes source-commit-to-stamp latency; the materializer feeds it.
	Freshness prometheus.Histogram
}

// Process holds what one process counts, whichever instance reports the database's figures.
type Process struct {
	RowsMaterialized int64
	LastBatchSeconds float64
	Paused           bool
	// ReplicaLagKnown is false while standbys exist whose replay lag matcol's role cannot read.
	ReplicaLagKnown bool
	// ThrottleLevel is the materializer's throttle level; Throttled counts its pauses.
	ThrottleLevel int
	Throttled     int64
	// EntriesDropped counts queued invalidations that could not be applied as they were.
	EntriesDropped int64
	// DecodingHolds counts the times logical decoding stopped for a saturated application.
	DecodingHolds int64
}

// Attach makes the server report on a running daemon; nil detaches it.
func (s *Server) Attach(src *Source) {
	s.src.Store(src)
	s.mu.Lock()
	s.cached = nil
	s.mu.Unlock()
}

const freshnessHelp = "Latency from a source change's commit to its row being materialized by this process."

// NewFreshnessHistogram returns the histogram Server exports as matcol_freshness_seconds.
func NewFreshnessHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "matcol_freshness_seconds",
		Help:    freshnessHelp,
		Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300},
	})
}

var errStarting = errors.New("matcol is starting (applying its config) or stopping")

// report returns a report at most a second old, so /status and /metrics scrapes share one read.
func (s *Server) report(ctx context.Context) (*Report, error) {
	src := s.src.Load()
	if src == nil {
		return nil, errStarting
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cached != nil && time.Since(s.at) < time.Second {
		return s.cached, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	r, err := Collect(ctx, src.DB, src.Plan(), src.Opts)
	if err != nil {
		return nil, err
	}
	if src.Live != nil {
		src.Live(r)
	}
	s.cached, s.at = r, time.Now()
	return r, nil
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&collector{s: s})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		src := s.src.Load()
		if src == nil {
			http.Error(w, "not ready: "+errStarting.Error(), http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if src.Ready != nil {
			if err := src.Ready(ctx); err != nil {
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

// Listen binds the address, so that a taken port fails at once rather than in Serve.
func (s *Server) Listen() (net.Listener, error) {
	addr := s.Addr
	if addr == "" {
		addr = "127.0.0.1:9180"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, errors.New("status server: " + err.Error())
	}
	return ln, nil
}

// Serve serves on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	s.Log.Info("status server listening", "address", ln.Addr().String())
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		<-stopped
		return nil
	}
	return err
}

// Run listens and serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ln, err := s.Listen()
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// collector turns a report into Prometheus metrics at scrape time.
type collector struct{ s *Server }

// Metric describes one metric family matcol exports, for docs/metrics.md and its test.
type Metric struct {
	Name   string
	Type   string // gauge, counter or histogram
	Labels []string
	Help   string
	// Reporter is true for the figures read from the database, which only the reporting
	// instance (matcol_leader 1) exports.
	Reporter bool
}

var metrics []Metric

func newDesc(typ string, reporter bool, name, help string, labels ...string) *prometheus.Desc {
	metrics = append(metrics, Metric{Name: name, Type: typ, Labels: labels, Help: help, Reporter: reporter})
	return prometheus.NewDesc(name, help, labels, nil)
}

// Every instance exports these: they need no database, or count this process alone.
var (
	descBuild     = newDesc("gauge", false, "matcol_build_info", "1, labelled with the running version.", "version", "go_version")
	descUp        = newDesc("gauge", false, "matcol_status_up", "1 when this instance's last read of the database succeeded; 0 while it cannot read it, or is starting.")
	descLeader    = newDesc("gauge", false, "matcol_leader", "1 on the one instance of a database that exports the figures read from the database.")
	descRows      = newDesc("counter", false, "matcol_rows_materialized_total", "Rows this process materialized, across all tables.")
	descBatch     = newDesc("gauge", false, "matcol_last_batch_seconds", "Duration of this process's most recent batch, of any table.")
	descPaused    = newDesc("gauge", false, "matcol_paused", "1 while this process sees materialization paused (matcol pause).")
	descLagKnown  = newDesc("gauge", false, "matcol_replica_lag_known", "0 while standbys exist whose replay lag matcol cannot read, so throttle.max_replica_lag is not enforced.")
	descLevel     = newDesc("gauge", false, "matcol_throttle_level", "The throttle level: 0 runs flat out; at k one worker runs and pauses k times as long as each batch took.")
	descThrottled = newDesc("counter", false, "matcol_throttled_total", "Pauses the throttle made after a batch.")
	descHolds     = newDesc("counter", false, "matcol_decoding_holds_total", "Logical mode: times this process stopped its slot's decoding while the application was saturated.")
	descDropped   = newDesc("counter", false, "matcol_invalidations_unreadable_total", "Queued invalidations that could not be applied as they were: values that are no key (dropped) or that mapping SQL failed on (the whole table invalidated).")
)

// Only the reporting instance exports these, read from the database, so that a sum over
// instances counts each once.
var (
	descStale    = newDesc("gauge", true, "matcol_stale_rows", "Rows waiting to be materialized, including queued invalidations.", "enrichment", "table")
	descExact    = newDesc("gauge", true, "matcol_stale_rows_exact", "1 when matcol_stale_rows is an exact count, 0 when estimated.", "enrichment", "table")
	descOldest   = newDesc("gauge", true, "matcol_oldest_pending_seconds", "Age of the oldest invalidation not yet materialized.", "enrichment", "table")
	descPending  = newDesc("gauge", true, "matcol_pending_invalidations", "Queued invalidations not yet applied to the table.", "enrichment", "table")
	descFailures = newDesc("gauge", true, "matcol_failures", "Quarantined rows whose enrichment failed.", "enrichment", "table")
	descWAL      = newDesc("gauge", true, "matcol_replication_slot_retained_wal_bytes", "WAL the replication slot holds back.", "slot")
	descWALState = newDesc("gauge", true, "matcol_replication_slot_wal_status", "1 for the slot's current wal_status.", "slot", "wal_status")
	descLag      = newDesc("gauge", true, "matcol_listener_lag_seconds", "How long the slot's reader takes to confirm the changes it is sent (replay_lag).", "slot")
	descBackfill = newDesc("gauge", true, "matcol_backfill_rows_done", "Rows done by a queued or running backfill.", "backfill", "table", "status")
)

var descFreshness = NewFreshnessHistogram().Desc()

// Metrics returns every metric family matcol exports, Go and process metrics aside.
func Metrics() []Metric {
	return append(append([]Metric{}, metrics...), Metric{Name: "matcol_freshness_seconds", Type: "histogram", Help: freshnessHelp})
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuild, descUp, descLeader, descRows, descBatch, descPaused, descLagKnown, descLevel, descThrottled, descHolds, descDropped,
		descStale, descExact, descOldest, descPending, descFailures, descWAL, descWALState, descLag, descBackfill, descFreshness} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descBuild, prometheus.GaugeValue, 1, c.s.Version, runtime.Version())
	src := c.s.src.Load()
	if src == nil {
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0)
		ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, 0)
		return
	}
	if src.Process != nil {
		p := src.Process()
		ch <- prometheus.MustNewConstMetric(descRows, prometheus.CounterValue, float64(p.RowsMaterialized))
		ch <- prometheus.MustNewConstMetric(descBatch, prometheus.GaugeValue, p.LastBatchSeconds)
		ch <- prometheus.MustNewConstMetric(descPaused, prometheus.GaugeValue, b2f(p.Paused))
		ch <- prometheus.MustNewConstMetric(descLagKnown, prometheus.GaugeValue, b2f(p.ReplicaLagKnown))
		ch <- prometheus.MustNewConstMetric(descLevel, prometheus.GaugeValue, float64(p.ThrottleLevel))
		ch <- prometheus.MustNewConstMetric(descThrottled, prometheus.CounterValue, float64(p.Throttled))
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(p.EntriesDropped))
		ch <- prometheus.MustNewConstMetric(descHolds, prometheus.CounterValue, float64(p.DecodingHolds))
	}
	if src.Freshness != nil {
		src.Freshness.Collect(ch)
	}
	reporter := src.Reporter == nil || src.Reporter()
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, b2f(reporter))
	if !reporter {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		var one int
		err := src.DB.QueryRow(ctx, `SELECT 1`).Scan(&one)
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, b2f(err == nil))
		return
	}
	r, err := c.s.report(context.Background())
	if err != nil {
		c.s.Log.Warn("status read failed", "error", err)
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 1)
	for _, e := range aggregateTemplates(r.Enrichments) {
		l := []string{e.Name, e.Table}
		ch <- prometheus.MustNewConstMetric(descStale, prometheus.GaugeValue, float64(e.StaleRows), l...)
		ch <- prometheus.MustNewConstMetric(descExact, prometheus.GaugeValue, b2f(e.StaleRowsExact), l...)
		ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, e.OldestPendingSeconds, l...)
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(e.PendingInvalidations), l...)
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.GaugeValue, float64(e.Failures), l...)
	}
	if r.Listener.Mode == "logical" {
		ch <- prometheus.MustNewConstMetric(descWAL, prometheus.GaugeValue, float64(r.Listener.RetainedWALBytes), r.Listener.Slot)
		ch <- prometheus.MustNewConstMetric(descWALState, prometheus.GaugeValue, 1, r.Listener.Slot, r.Listener.WALStatus)
		if r.Listener.LagSeconds != nil {
			ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, *r.Listener.LagSeconds, r.Listener.Slot)
		}
	}
	for _, b := range r.Backfills {
		ch <- prometheus.MustNewConstMetric(descBackfill, prometheus.GaugeValue, float64(b.RowsDone),
			strings.TrimSpace(itoa(b.ID)), b.Table, b.Status)
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
