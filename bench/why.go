package main

import "strings"

// Explanations printed under the summary for each missed target: what limits the figure and
// what would move it. They describe mechanisms, not numbers, so they hold across runs. Each
// starts with its bold title, which the summary's verdicts name.
const (
	whyBackfill = "**Backfill.** A batch is one statement that reads its keys, runs the enrichment over them and writes them, and commits with its checkpoint; the set-based UPDATE is one statement over the whole table, with no checkpoint and no bound on how long it holds its row locks. What remains is per key: the enrichment's `= ANY` over a batch's keys descends the child table's index once per key and aggregates in a nested loop, where the UPDATE reads that index once, in order; and the write finds each target row by its key a second time. By default two batches run at once on two connections, which on 2 cores share the CPU with each other and with the statement that reads the next chunk's bounds. What would move it: PostgreSQL 17's array index scans (one descent for neighbouring keys), and more cores (`--jobs`)."

	whyCatchUp = "**Catch-up.** matcol's time is the drain of the queue (queued entries to stale rows), then batch after batch of claim, compute and write, each a few round trips and a commit, with whatever waits the workers take between batches (the sweep interval when a batch is not seen as full, the latency throttle after a slow batch); the set-based UPDATE is one statement that reads the changed parents' children once and writes each row once. Against REFRESH, matcol's time is per changed row where REFRESH's is per view row, so the ratio falls as the change grows. The daemon log (`matcol run` at the default log level) shows the batch sizes and throttling."

	whyFreshness = "**Freshness.** Logical mode adds the walsender's decoding and the listener's batching (entries of committed transactions wait up to 100 ms to be inserted with more, in one synchronous commit) to trigger mode's path; under load on 2 cores the decoding competes with the writers and the batches. A shorter flush delay trades queue commits for latency."

	whyTrigger = "**Write overhead, trigger mode.** Each application statement on a source runs a statement trigger with transition tables: a plpgsql call, two tuplestores, an INSERT into `matcol.pending`, about 30–40 µs, which is large next to this workload's single-row UPDATEs of about 50 µs (see invalidation.md). With the daemon running, its recomputations (each moved event recomputes two venues over 100 events) share the 2 cores with pgbench. What would fix it: a C trigger function, or column lists (`AFTER UPDATE OF …`) so that updates of columns no enrichment reads fire nothing; logical mode takes the work off the write path entirely (its daemon-stopped rows)."

	whyLogical = "**Write overhead, logical mode.** The write path itself costs nothing measurable (the daemon-stopped rows: replica identity and a publication). With the daemon running, the walsender decodes every change and the daemon recomputes the venues, on the same 2 cores as pgbench, and the daemon's own writes add WAL. On a machine with spare cores, or with the daemon throttled (`throttle.latency_factor`), the gap shrinks; on 2 busy cores the recomputation itself is what costs."

	whyTPCB = "**pgbench tpcb-like.** Every tpcb transaction updates one `pgbench_accounts` row (its `abalance`) and inserts one `pgbench_history` row. Where matcol does not know that the enrichment never reads `abalance`, the default `self` makes the account's own UPDATE invalidate it as well. Each transaction then costs a stale mark, a queue entry or a decoded change, and a recomputation with its own WAL, on the same 2 cores as pgbench (in logical mode the walsender decodes every change there too). The hand-written trigger does one in-place increment in the writer's transaction. The CPU, RSS and WAL columns say where each variant's cost goes."

	whyFootprint = "**Footprint.** Idle, the daemon polls nothing but its LISTEN connection and a sweep every `sweep_interval`; any CPU above zero here is those sweeps and the status figures."
)

// whys are the explanations in the order the summary prints them.
var whys = []string{whyBackfill, whyCatchUp, whyFreshness, whyTrigger, whyLogical, whyTPCB, whyFootprint}

// whyTitle is an explanation's bold title without its full stop.
func whyTitle(why string) string {
	t, _, _ := strings.Cut(strings.TrimPrefix(why, "**"), ".**")
	return t
}
