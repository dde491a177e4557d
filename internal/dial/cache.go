package dial

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// CacheGuard recycles connections whose backend has cached too much. Each backend caches every
// relation it touches, without limit, and keeps a plan for every statement prepared on it; with
// thousands of schemas that alone can exhaust the server. The size is read from
// pg_backend_memory_contexts (PostgreSQL 14+): every memory context of the backend, since the
// plans of prepared statements live partly outside CacheMemoryContext (a write statement of a
// template instance holds about 50 kB, a third of it there).
//
// Where that view cannot be read (PostgreSQL 13, or a role without pg_read_all_stats), the guard
// counts instead the distinct relations each connection's statements have read, as callers note
// them with Touching, and recycles a connection past MaxBytes / PerRelation of them.
type CacheGuard struct {
	// MaxBytes is the cap; 0 disables the guard.
	MaxBytes int64
	// Every is how often one connection is measured. Defaults to 1s: a worker going through
	// thousands of tenants caches a few MB a second, and the query costs well under a millisecond.
	Every time.Duration
	// PerRelation is what one relation a backend has read is taken to hold, where memory cannot
	// be measured: its catalog entries, its indexes' and the plans of the statements over it.
	// Defaults to DefaultPerRelation.
	PerRelation int64
	// Log, when set, is told once that memory cannot be measured, and why.
	Log hclog.Logger

	mode     atomic.Int32 // modeUnknown, modeMeasure or modeCount
	mu       sync.Mutex
	checked  map[*pgx.Conn]time.Time
	sizes    map[uint32]int64 // by backend pid, the last measurement
	relsSeen map[*pgx.Conn]map[uint32]struct{}
	// Recycled counts connections closed for their cache size.
	Recycled int64
}

// DefaultPerRelation errs on the safe side: workers going through 800 tenants of docs/tenants.md
// (two small tables each, with their indexes and the statements over them) grew by 20–40 kB per
// relation read; wider tables with more indexes take more.
const DefaultPerRelation = 64 << 10

const (
	modeUnknown = iota
	modeMeasure
	modeCount
)

// cacheSizeSQL runs only where the view exists and may be read.
const cacheSizeSQL = `SELECT sum(total_bytes)::bigint FROM pg_backend_memory_contexts`

// canMeasureSQL tells whether this role may read pg_backend_memory_contexts. Both the view and
// its function are checked: PostgreSQL 15 grants each to pg_read_all_stats, 14 to superusers.
const canMeasureSQL = `SELECT coalesce(has_table_privilege(to_regclass('pg_catalog.pg_backend_memory_contexts'), 'SELECT')
	AND has_function_privilege(to_regprocedure('pg_catalog.pg_get_backend_memory_contexts()'), 'EXECUTE'), false)`

// connected is a pgxpool AfterConnect hook: the first connection finds out how backends can be
// measured.
func (g *CacheGuard) connected(ctx context.Context, conn *pgx.Conn) error {
	if g == nil || g.MaxBytes <= 0 {
		return nil
	}
	if g.mode.Load() != modeUnknown {
		return nil
	}
	var can bool
	if err := conn.QueryRow(ctx, canMeasureSQL).Scan(&can); err != nil {
		return nil // the first release tries the measurement itself
	}
	if can {
		g.setMode(modeMeasure, conn)
	} else {
		g.setMode(modeCount, conn)
	}
	return nil
}

// setMode records how backends are measured, and says once why they cannot be.
func (g *CacheGuard) setMode(mode int32, conn *pgx.Conn) {
	if mode != modeCount {
		g.mode.CompareAndSwap(modeUnknown, mode)
		return
	}
	if g.mode.Swap(modeCount) == modeCount || g.Log == nil {
		return
	}
	major := serverMajor(conn)
	limit := g.MaxBytes / g.perRelation()
	switch {
	case major > 0 && major < 14:
		g.Log.Info("PostgreSQL before 14 cannot report a backend's memory; recycling pooled connections by the tables they have read instead",
			"max_relations", limit)
	case major == 14:
		g.Log.Warn("cannot read pg_backend_memory_contexts (PostgreSQL 14 allows only superusers); recycling pooled connections by the tables they have read instead",
			"max_relations", limit, "role", conn.Config().User)
	default:
		g.Log.Warn("cannot read pg_backend_memory_contexts; recycling pooled connections by the tables they have read instead",
			"max_relations", limit, "role", conn.Config().User,
			"fix", "GRANT pg_read_all_stats TO "+pgx.Identifier{conn.Config().User}.Sanitize())
	}
}

func (g *CacheGuard) perRelation() int64 {
	if g.PerRelation > 0 {
		return g.PerRelation
	}
	return DefaultPerRelation
}

// prepare is a pgxpool PrepareConn hook: it reports whether conn may be handed out, or must be
// closed for what its backend has cached. It runs at acquire rather than at release: pgxpool
// returns a connection to its idle stack in a goroutine of its own when an AfterRelease hook is
// set, so the next batch often found the connection it had just used still out, took another,
// and left the warm one's caches to go cold (the workers' pool relies on handing out the
// connection released last).
func (g *CacheGuard) prepare(ctx context.Context, conn *pgx.Conn) (bool, error) {
	return g.keep(ctx, conn), nil
}

// keep reports whether conn may be used again, measuring its backend at most every Every.
func (g *CacheGuard) keep(ctx context.Context, conn *pgx.Conn) bool {
	if g == nil || g.MaxBytes <= 0 {
		return true
	}
	every := g.Every
	if every <= 0 {
		every = time.Second
	}
	g.mu.Lock()
	if g.mode.Load() == modeCount {
		// No query: the count is kept as statements start.
		if int64(len(g.relsSeen[conn])) <= g.MaxBytes/g.perRelation() {
			g.mu.Unlock()
			return true
		}
		delete(g.relsSeen, conn)
		g.Recycled++
		g.mu.Unlock()
		return false
	}
	if g.checked == nil {
		g.checked, g.sizes = map[*pgx.Conn]time.Time{}, map[uint32]int64{}
	}
	last, seen := g.checked[conn]
	// Past half the cap, every use is measured: one batch over a cold table adds a few hundred
	// kB, and a second of them can add megabytes.
	if seen && time.Since(last) < every && g.sizes[conn.PgConn().PID()] < g.MaxBytes/2 {
		g.mu.Unlock()
		return true
	}
	g.checked[conn] = time.Now()
	g.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var size *int64
	if err := conn.QueryRow(ctx, cacheSizeSQL).Scan(&size); err != nil {
		var pe *pgconn.PgError
		if !errors.As(err, &pe) {
			return false // the connection itself failed
		}
		// The server answered: the connection is fine. Without the privilege (or the view),
		// count relations instead, rather than close every connection on every release.
		if pe.Code == "42501" || pe.Code == "42P01" || pe.Code == "42883" {
			g.setMode(modeCount, conn)
		}
		return true
	}
	if size == nil {
		return true
	}
	pid := conn.PgConn().PID()
	g.mu.Lock()
	defer g.mu.Unlock()
	if *size > g.MaxBytes {
		delete(g.checked, conn)
		delete(g.sizes, pid)
		g.Recycled++
		return false
	}
	g.sizes[pid] = *size
	return true
}

// touch records that conn's statement reads rels, where relations are counted.
func (g *CacheGuard) touch(conn *pgx.Conn, rels []uint32) {
	if g.mode.Load() != modeCount {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.relsSeen == nil {
		g.relsSeen = map[*pgx.Conn]map[uint32]struct{}{}
	}
	seen := g.relsSeen[conn]
	if seen == nil {
		seen = map[uint32]struct{}{}
		g.relsSeen[conn] = seen
	}
	for _, r := range rels {
		seen[r] = struct{}{}
	}
}

// Counting reports whether the guard counts relations, unable to measure memory.
func (g *CacheGuard) Counting() bool { return g.mode.Load() == modeCount }

// RecycledCount returns how many connections were closed for their cache size.
func (g *CacheGuard) RecycledCount() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.Recycled
}

// Sizes returns the last measured cache size of each pooled backend, by pid.
func (g *CacheGuard) Sizes() map[uint32]int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[uint32]int64, len(g.sizes))
	for k, v := range g.sizes {
		out[k] = v
	}
	return out
}

// forget drops what the guard knows of a closed connection.
func (g *CacheGuard) forget(conn *pgx.Conn) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.checked, conn)
	delete(g.relsSeen, conn)
	if conn.PgConn() != nil {
		delete(g.sizes, conn.PgConn().PID())
	}
}

type touchingKey struct{}

// Touching returns ctx noting that the statements run with it read the relations rels (by
// OID). A CacheGuard that cannot measure its backends counts them per connection; otherwise
// the note costs nothing.
func Touching(ctx context.Context, rels []uint32) context.Context {
	return context.WithValue(ctx, touchingKey{}, rels)
}

// guardTracer passes the relations noted with Touching to the guard as statements start.
type guardTracer struct{ g *CacheGuard }

func (t guardTracer) note(ctx context.Context, conn *pgx.Conn) {
	if rels, ok := ctx.Value(touchingKey{}).([]uint32); ok && len(rels) > 0 {
		t.g.touch(conn, rels)
	}
}

func (t guardTracer) TraceQueryStart(ctx context.Context, conn *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	t.note(ctx, conn)
	return ctx
}

func (guardTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (t guardTracer) TraceBatchStart(ctx context.Context, conn *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	t.note(ctx, conn)
	return ctx
}

func (guardTracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (guardTracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// serverMajor is the server's major version from the connection's parameters, 0 if unknown.
func serverMajor(conn *pgx.Conn) int {
	v := conn.PgConn().ParameterStatus("server_version")
	major, _, _ := strings.Cut(v, ".")
	major, _, _ = strings.Cut(major, " ")
	n, _ := strconv.Atoi(major)
	return n
}
