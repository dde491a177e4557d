// Package status reports how far behind the derived data is: per enrichment stale rows, the age
// of the oldest pending invalidation and failures; the listener's slot and retained WAL; the
// matview schedule; backfills. Every figure is read from the database, so `matcol status` works
// with no daemon running and the ages survive restarts. The daemon adds its live figures and
// serves them over HTTP.
package status

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/matcol/matcol/internal/pgident"
	"github.com/matcol/matcol/plan"
	"github.com/matcol/matcol/refresh"
)

// Querier is what Collect needs; pgx connections and pools fit.
type Querier = refresh.Querier

// Report is the /status document.
type Report struct {
	GeneratedAt time.Time          `json:"generated_at"`
	Daemon      *Daemon            `json:"daemon,omitempty"`
	Enrichments []EnrichmentStatus `json:"enrichments"`
	Listener    Listener           `json:"listener"`
	Matviews    []Matview          `json:"matviews"`
	Backfills   []Backfill         `json:"backfills"`
}

// EnrichmentStatus is the lag of one enrichment.
type EnrichmentStatus struct {
	Name  string `json:"name"`
	Table string `json:"table"`
	// Template is the template an instance comes from (tenant_*.item); /metrics reports a
	// template's instances as one series, labelled with it.
	Template string `json:"template,omitempty"`
	// StaleRows counts rows marked stale plus queued invalidations not yet applied to the table.
	StaleRows int64 `json:"stale_rows"`
	// StaleRowsExact is false when the count is the planner's estimate (a big table without an
	// index on stale rows, or more than StaleCountCap stale rows).
	StaleRowsExact       bool    `json:"stale_rows_exact"`
	PendingInvalidations int64   `json:"pending_invalidations"`
	OldestPendingSeconds float64 `json:"oldest_pending_seconds"`
	Failures             int64   `json:"failures"`
	// Live figures of the serving process, present when a daemon serves the report. A batch
	// computes every enrichment of its table, so they are the table's: rows per second over the
	// last minute, the last batch's duration, and rows since the process started.
	RowsPerSecond         *float64 `json:"rows_per_second,omitempty"`
	LastBatchSeconds      *float64 `json:"last_batch_seconds,omitempty"`
	RowsMaterializedTotal *int64   `json:"rows_materialized_total,omitempty"`
}

// Listener describes the invalidation source.
type Listener struct {
	Mode              string `json:"mode"`
	Slot              string `json:"slot"`
	ConfirmedFlushLSN string `json:"confirmed_flush_lsn,omitempty"`
	RetainedWALBytes  int64  `json:"retained_wal_bytes"`
	WALStatus         string `json:"wal_status"`
	// LagSeconds is how long the slot's reader takes to confirm what it is sent (the walsender's
	// replay_lag), 0 when caught up; absent in trigger mode or with no reader attached.
	LagSeconds *float64 `json:"lag_seconds,omitempty"`
	Streaming  *bool    `json:"streaming,omitempty"`
	// Leader, Resyncs and Holding are known only to a running daemon in logical mode.
	Leader  *bool `json:"leader,omitempty"`
	Resyncs *int  `json:"resyncs,omitempty"`
	Holding *bool `json:"holding,omitempty"`
}

// Matview is one scheduled materialized view.
type Matview struct {
	Name          string     `json:"name"`
	LastSuccessAt *time.Time `json:"last_success_at"`
	NextDueAt     *time.Time `json:"next_due_at"`
	LastError     *string    `json:"last_error"`
}

// Backfill is one backfill's progress.
type Backfill struct {
	ID          int64     `json:"id"`
	Table       string    `json:"table"`
	Enrichments []string  `json:"enrichments"`
	Status      string    `json:"status"`
	RowsDone    int64     `json:"rows_done"`
	RowsTotal   *int64    `json:"rows_total"`
	Error       *string   `json:"error"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// Daemon holds the live figures of a running daemon.
type Daemon struct {
	Version       string    `json:"version"`
	StartedAt     time.Time `json:"started_at"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	// Leader is true on the one instance of a database that exports the figures read from the
	// database to /metrics.
	Leader      *bool        `json:"leader,omitempty"`
	Paused      bool         `json:"paused"`
	Connections []Connection `json:"connections"`
	// ReplicaLagKnown is false while standbys exist whose replay lag matcol's role cannot read
	// (it lacks pg_read_all_stats): throttle.max_replica_lag is then not enforced.
	ReplicaLagKnown bool `json:"replica_lag_known"`
	// ThrottleLevel is 0 while matcol runs flat out (see throttle.latency_factor).
	ThrottleLevel int `json:"throttle_level"`
}

// Connection is one of matcol's backends.
type Connection struct {
	PID             int       `json:"pid"`
	ApplicationName string    `json:"application_name"`
	BackendStart    time.Time `json:"backend_start"`
	State           string    `json:"state"`
	// CacheBytes is the backend's memory (catalog cache, prepared statements) as last measured
	// (pooled backends, PostgreSQL 14+).
	CacheBytes *int64 `json:"cache_bytes,omitempty"`
}

// Options say what Collect reports besides the enrichments.
type Options struct {
	Mode string
	Slot string
}

// StaleCountCap bounds an exact count of stale rows; above it the figure is a lower bound.
const StaleCountCap = 1_000_000

// Collect reads the report from the database.
func Collect(ctx context.Context, q Querier, p *plan.Plan, opts Options) (*Report, error) {
	r := &Report{GeneratedAt: time.Now().UTC(), Enrichments: []EnrichmentStatus{}, Matviews: []Matview{}, Backfills: []Backfill{}}
	pend, err := pending(ctx, q)
	if err != nil {
		return nil, err
	}
	fails, err := failures(ctx, q)
	if err != nil {
		return nil, err
	}
	for _, t := range p.Targets {
		stale, exact, err := staleRows(ctx, q, t)
		if err != nil {
			return nil, err
		}
		var since *time.Time
		if err := q.QueryRow(ctx, `SELECT stale_since FROM matcol.target WHERE id = $1`, t.ID).Scan(&since); err != nil &&
			!errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("read stale time of %s: %w", t.Table, err)
		}
		pe := pend[t.ID]
		oldest := pe.oldest
		if stale > 0 && since != nil && (oldest == nil || since.Before(*oldest)) {
			oldest = since
		}
		age := 0.0
		if oldest != nil && (stale > 0 || pe.count > 0) {
			age = max(0, r.GeneratedAt.Sub(*oldest).Seconds())
		}
		for _, e := range t.Enrichments {
			r.Enrichments = append(r.Enrichments, EnrichmentStatus{
				Name: e.Name, Table: t.Table.String(), Template: e.TemplateTable(), StaleRows: stale + pe.count, StaleRowsExact: exact,
				PendingInvalidations: pe.count, OldestPendingSeconds: age, Failures: fails[failKey{t.ID, e.Name}],
			})
		}
	}
	r.Listener = Listener{Mode: opts.Mode, Slot: opts.Slot, WALStatus: "n/a"}
	if opts.Mode == "logical" {
		if err := slot(ctx, q, &r.Listener); err != nil {
			return nil, err
		}
	} else {
		r.Listener.Slot = ""
	}
	if r.Backfills, err = backfills(ctx, q); err != nil {
		return nil, err
	}
	if r.Matviews, err = matviews(ctx, q); err != nil {
		return nil, err
	}
	return r, nil
}

type pendingStat struct {
	count  int64
	oldest *time.Time
}

// pending counts queued invalidations per target, distinct values once; markers that only say
// "new stale rows" count toward the age but not the rows, which the table itself shows.
func pending(ctx context.Context, q Querier) (map[int]pendingStat, error) {
	rows, err := q.Query(ctx, `SELECT target_id,
			count(DISTINCT (dependency_id, vals)) FILTER (WHERE vals IS NOT NULL AND vals <> '[]'::jsonb),
			min(enqueued_at)
		FROM matcol.pending GROUP BY target_id`)
	if err != nil {
		return nil, fmt.Errorf("read pending invalidations: %w", err)
	}
	out := map[int]pendingStat{}
	for rows.Next() {
		var id int
		var s pendingStat
		if err := rows.Scan(&id, &s.count, &s.oldest); err != nil {
			rows.Close()
			return nil, err
		}
		out[id] = s
	}
	rows.Close()
	return out, rows.Err()
}

type failKey struct {
	target     int
	enrichment string
}

func failures(ctx context.Context, q Querier) (map[failKey]int64, error) {
	rows, err := q.Query(ctx, `SELECT target_id, coalesce(enrichment, ''), count(*) FROM matcol.failure GROUP BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("read failures: %w", err)
	}
	out := map[failKey]int64{}
	for rows.Next() {
		var k failKey
		var n int64
		if err := rows.Scan(&k.target, &k.enrichment, &n); err != nil {
			rows.Close()
			return nil, err
		}
		out[k] += n
	}
	rows.Close()
	return out, rows.Err()
}

// staleRows counts exactly when that is cheap (an index on stale rows, or a small table), and
// asks the planner otherwise.
func staleRows(ctx context.Context, q Querier, t *plan.Target) (int64, bool, error) {
	var reltuples float64
	if err := q.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = $1`, t.OID).Scan(&reltuples); err != nil {
		return 0, false, fmt.Errorf("read size of %s: %w", t.Table, err)
	}
	if t.StaleIndex || reltuples < 200_000 {
		var n int64
		err := q.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM (SELECT 1 FROM %s WHERE materialized_at IS NULL LIMIT %d) s`,
			t.Table.Sanitize(), StaleCountCap)).Scan(&n)
		if err != nil {
			return 0, false, fmt.Errorf("count stale rows of %s: %w", t.Table, err)
		}
		return n, n < StaleCountCap, nil
	}
	var plan []map[string]any
	if err := q.QueryRow(ctx, fmt.Sprintf(`EXPLAIN (FORMAT JSON) SELECT 1 FROM %s WHERE materialized_at IS NULL`,
		t.Table.Sanitize())).Scan(&plan); err != nil {
		return 0, false, fmt.Errorf("estimate stale rows of %s: %w", t.Table, err)
	}
	if len(plan) > 0 {
		if p, ok := plan[0]["Plan"].(map[string]any); ok {
			if rows, ok := p["Plan Rows"].(float64); ok {
				return int64(rows), false, nil
			}
		}
	}
	return 0, false, nil
}

func slot(ctx context.Context, q Querier, l *Listener) error {
	var lsn *string
	var retained *int64
	var walStatus *string
	// The lag is the slot's walsender's replay_lag: how long the reader took to confirm what it
	// was sent. PostgreSQL clears it once the reader is caught up and idle (0 then); with no
	// reader attached it is unknown.
	err := q.QueryRow(ctx, `SELECT s.confirmed_flush_lsn::text, pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,
			s.wal_status, (SELECT CASE WHEN r.state IS NOT NULL THEN coalesce(extract(epoch FROM r.replay_lag), 0)::float8 END
				FROM pg_stat_replication r WHERE r.pid = s.active_pid)
		FROM pg_replication_slots s WHERE s.slot_name = $1 AND s.database = current_database()`, l.Slot).Scan(&lsn, &retained, &walStatus, &l.LagSeconds)
	if errors.Is(err, pgx.ErrNoRows) {
		l.WALStatus = "missing"
		return nil
	}
	if err != nil {
		return fmt.Errorf("read replication slot %s: %w", l.Slot, err)
	}
	if lsn != nil {
		l.ConfirmedFlushLSN = *lsn
	}
	if retained != nil {
		l.RetainedWALBytes = *retained
	}
	if walStatus != nil {
		l.WALStatus = *walStatus
	}
	return nil
}

func backfills(ctx context.Context, q Querier) ([]Backfill, error) {
	rows, err := q.Query(ctx, `SELECT b.id, t.schema_name, t.table_name, b.enrichments, b.status, b.rows_done, b.rows_total,
			b.error, b.updated_at
		FROM matcol.backfill b JOIN matcol.target t ON t.id = b.target_id
		WHERE b.status IN ('queued', 'running') OR b.updated_at > now() - interval '1 day'
		ORDER BY b.id`)
	if err != nil {
		return nil, fmt.Errorf("read backfills: %w", err)
	}
	out := []Backfill{}
	for rows.Next() {
		var b Backfill
		var schema, name string
		if err := rows.Scan(&b.ID, &schema, &name, &b.Enrichments, &b.Status, &b.RowsDone, &b.RowsTotal, &b.Error, &b.UpdatedAt); err != nil {
			rows.Close()
			return nil, err
		}
		b.Table = tableString(schema, name)
		out = append(out, b)
	}
	rows.Close()
	return out, rows.Err()
}

func tableString(schema, name string) string {
	return pgident.Table{Schema: schema, Name: name}.String()
}

// matviews reads the refresh schedule.
func matviews(ctx context.Context, q Querier) ([]Matview, error) {
	views, err := refresh.List(ctx, q)
	if err != nil {
		return nil, err
	}
	out := []Matview{}
	for _, v := range views {
		m := Matview{Name: v.Name.String(), LastSuccessAt: v.LastSuccessAt}
		due := v.NextDueAt
		m.NextDueAt = &due
		if v.LastError != "" {
			e := v.LastError
			m.LastError = &e
		}
		out = append(out, m)
	}
	return out, nil
}
