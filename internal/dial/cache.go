package dial

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// CacheGuard recycles connections whose backend has cached too much. Each backend caches every
// relation it touches, without limit, and keeps a plan for every statement prepared on it; with
// thousands of schemas that alone can exhaust the server. The size is read from
// pg_backend_memory_contexts (PostgreSQL 14+): every memory context of the backend, since the
// plans of prepared statements live partly outside CacheMemoryContext (a write statement of a
// template instance holds about 50 kB, a third of it there).
type CacheGuard struct {
	// MaxBytes is the cap; 0 disables the guard.
	MaxBytes int64
	// Every is how often one connection is measured. Defaults to 1s: a worker going through
	// thousands of tenants caches a few MB a second, and the query costs well under a millisecond.
	Every time.Duration

	mu      sync.Mutex
	checked map[*pgx.Conn]time.Time
	sizes   map[uint32]int64 // by backend pid, the last measurement
	// Recycled counts connections closed for their cache size.
	Recycled int64
}

const cacheSizeSQL = `SELECT CASE WHEN current_setting('server_version_num')::int < 140000 THEN NULL ELSE
	(SELECT sum(total_bytes)::bigint FROM pg_backend_memory_contexts) END`

// keep is a pgxpool AfterRelease hook: it reports whether conn may go back to the pool.
func (g *CacheGuard) keep(conn *pgx.Conn) bool {
	if g == nil || g.MaxBytes <= 0 {
		return true
	}
	every := g.Every
	if every <= 0 {
		every = time.Second
	}
	g.mu.Lock()
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

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var size *int64
	if err := conn.QueryRow(ctx, cacheSizeSQL).Scan(&size); err != nil || size == nil {
		return err == nil // unmeasurable (PostgreSQL 13): lifetime recycling still applies
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
	if conn.PgConn() != nil {
		delete(g.sizes, conn.PgConn().PID())
	}
}
