package main

// Explanations printed under the summary for each missed target: what limits the figure and
// what would move it. They describe mechanisms, not numbers, so they hold across runs.
const (
	whyBackfill = "**Backfill.** A batch is one statement that reads its keys, runs the enrichment over them and writes them, and commits with its checkpoint; the set-based UPDATE is one statement over the whole table, with no checkpoint and no bound on how long it holds its row locks. What remains is per key: the enrichment's `= ANY` over a batch's keys descends the child table's index once per key and aggregates in a nested loop, where the UPDATE reads that index once, in order; and the write finds each target row by its key a second time. By default two batches run at once on two connections, which on 2 cores share the CPU with each other and with the statement that reads the next chunk's bounds. What would move it: PostgreSQL 17's array index scans (one descent for neighbouring keys), and more cores (`--jobs`)."

	whyCatchUp = "**Catch-up.** matcol's time is per changed row (queue, drain, claim, compute, write) where REFRESH's is per view row, so the ratio grows with the table: at this scale's small view REFRESH is cheap. With statistics that still say most rows are stale the claim scans the table, which is why the bench ANALYZEs after stamping (see troubleshooting.md). The time runs from the commit of the changing statement."

	whyFreshness = "**Freshness.** Logical mode adds the walsender's decoding and the listener's batching (entries of committed transactions wait up to 100 ms to be inserted with more, in one synchronous commit) to trigger mode's path; under load on 2 cores the decoding competes with the writers and the batches. A shorter flush delay trades queue commits for latency."

	whyTrigger = "**Write overhead, trigger mode.** Each application statement on a source runs a statement trigger with transition tables: a plpgsql call, two tuplestores, an INSERT into `matcol.pending`, about 30–40 µs, which is large next to this workload's single-row UPDATEs of about 50 µs (see invalidation.md). With the daemon running, its recomputations (each moved event recomputes two venues over 100 events) share the 2 cores with pgbench. What would fix it: a C trigger function, or column lists (`AFTER UPDATE OF …`) so that updates of columns no enrichment reads fire nothing; logical mode takes the work off the write path entirely (its daemon-stopped rows)."

	whyLogical = "**Write overhead, logical mode.** The write path itself costs nothing measurable (the daemon-stopped rows: replica identity and a publication). With the daemon running, the walsender decodes every change and the daemon recomputes the venues, on the same 2 cores as pgbench, and the daemon's own writes add WAL. On a machine with spare cores, or with the daemon throttled (`throttle.latency_factor`), the gap shrinks; on 2 busy cores the recomputation itself is what costs."

	whyFootprint = "**Footprint.** Idle, the daemon polls nothing but its LISTEN connection and a sweep every `sweep_interval`; any CPU above zero here is those sweeps and the status figures."
)
