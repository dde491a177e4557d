package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// backendSampler samples, while a workload runs, the server backends of one database whose
// application_name starts with "matcol": their CPU (from /proc, the server runs on this
// machine), and what the busy ones were doing.
type backendSampler struct {
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	first   map[int]float64 // CPU seconds at a backend's first sample
	last    map[int]float64
	doing   map[string]int // busy samples by application, wait event and statement
	samples int
	start   time.Time
	bySec   map[int]int // busy samples by second since the start
}

// sampleBackends starts sampling db's matcol backends over conn, which it owns until stopped:
// every second, or every 100 ms with MATCOL_BENCH_SAMPLE set, for what they do. Each sample is a
// query the baselines do not run, so the default keeps its cost off the variant it measures.
func sampleBackends(ctx context.Context, conn *pgx.Conn) *backendSampler {
	every := time.Second
	if os.Getenv("MATCOL_BENCH_SAMPLE") != "" {
		every = 100 * time.Millisecond
	}
	s := &backendSampler{stop: make(chan struct{}), done: make(chan struct{}),
		first: map[int]float64{}, last: map[int]float64{}, doing: map[string]int{},
		start: time.Now(), bySec: map[int]int{}}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			s.sample(ctx, conn)
			select {
			case <-s.stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *backendSampler) sample(ctx context.Context, conn *pgx.Conn) {
	rows, err := conn.Query(ctx, `SELECT pid, application_name, state, coalesce(wait_event_type || ':' || wait_event, 'CPU'),
		regexp_replace(left(query, 50), '\s+', ' ', 'g')
		FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'matcol%' AND pid <> pg_backend_pid()`)
	if err != nil {
		return
	}
	defer rows.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples++
	for rows.Next() {
		var pid int
		var app, state, wait, query string
		if rows.Scan(&pid, &app, &state, &wait, &query) != nil {
			return
		}
		cpu := procCPU(pid)
		if _, ok := s.first[pid]; !ok {
			s.first[pid] = cpu
			if s.samples > 1 {
				s.first[pid] = 0 // born since the last sample: all its CPU is the run's
			}
		}
		s.last[pid] = cpu
		if state == "active" || strings.HasPrefix(state, "idle in transaction") {
			s.doing[fmt.Sprintf("%s, %s, %s: %s", app, state, wait, query)]++
			if !strings.HasPrefix(query, "START_REPLICATION") {
				s.bySec[int(time.Since(s.start).Seconds())]++
			}
		}
	}
}

// end stops sampling and returns the CPU seconds the sampled backends used.
func (s *backendSampler) end() float64 {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	total := 0.0
	for pid, c := range s.last {
		total += c - s.first[pid]
	}
	return total
}

// print writes the busiest activities to stdout when MATCOL_BENCH_SAMPLE is set.
func (s *backendSampler) print(label string) {
	if os.Getenv("MATCOL_BENCH_SAMPLE") == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.doing))
	for k := range s.doing {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return s.doing[keys[i]] > s.doing[keys[j]] })
	fmt.Printf("matcol's backends in %s, busy samples of %d:\n", label, s.samples)
	for _, k := range keys[:min(len(keys), 12)] {
		fmt.Printf("  %5d  %s\n", s.doing[k], k)
	}
	var secs []string
	for i := 0; i <= int(time.Since(s.start).Seconds()); i++ {
		secs = append(secs, fmt.Sprint(s.bySec[i]))
	}
	fmt.Printf("  busy samples by second (replication stream aside): %s\n", strings.Join(secs, " "))
}
