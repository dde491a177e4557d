package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A run of some scenarios replaces their sections and target rows and keeps everything else.
func TestPartialReportKeepsOtherSections(t *testing.T) {
	out := filepath.Join(t.TempDir(), "benchmarks.md")
	full := &report{provenance: "Produced by `go run ./bench`."}
	full.heading("Full backfill of an aggregate (300000 snapshots × 50 seats)")
	full.add("old backfill table")
	full.target("backfill of seat_counts", "0.75×", "≥ 0.7×", true, whyBackfill)
	full.heading("Catch-up after a change (200000 snapshots × 50 seats)")
	full.add("old catch-up table")
	full.target("catch-up after a 10% change", "0.02×", "≥ 0.5×", false, whyCatchUp)
	full.heading("Write overhead")
	full.add("old write table")
	full.target("write TPS", "0.66×", "≥ 90%", false, whyTrigger)
	require.NoError(t, full.finish(out, time.Now()))

	part := &report{provenance: "Produced by `go run ./bench -only catchup`.", partial: true}
	part.heading("Catch-up after a change (20000 snapshots × 50 seats)")
	part.add("new catch-up table")
	part.target("catch-up after a 10% change", "0.60×", "≥ 0.5×", true, whyCatchUp)
	part.heading("Writers under pgbench tpcb-like (scale 1, 8 clients, 5s)")
	part.add("new tpcb table")
	part.target("tpcb-like TPS, trigger mode", "0.50×", "≥ 0.85×", false, whyTPCB)
	require.NoError(t, part.finish(out, time.Now()))

	b, err := os.ReadFile(out)
	require.NoError(t, err)
	doc := string(b)
	for _, want := range []string{"old backfill table", "new catch-up table", "old write table", "new tpcb table",
		"Produced by `go run ./bench -only catchup`.", "| Catch-up after a change | catch-up after a 10% change | 0.60× | ≥ 0.5× | met |",
		"| Write overhead | write TPS | 0.66× | ≥ 90% | **missed** (Write overhead, trigger mode) |",
		"**missed** (pgbench tpcb-like)", whyTrigger, whyTPCB} {
		require.Contains(t, doc, want)
	}
	for _, gone := range []string{"old catch-up table", "0.02×", whyCatchUp} {
		require.NotContains(t, doc, gone)
	}
	// Sections keep their places; the new one comes after them, before the summary.
	order := []string{"## Full backfill", "## Catch-up after a change (20000", "## Write overhead", "## Writers under pgbench", "## Against the targets"}
	last := -1
	for _, h := range order {
		i := strings.Index(doc, h)
		require.Greater(t, i, last, h)
		last = i
	}
}
