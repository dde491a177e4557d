package main

import "strings"

// Explanations printed under the summary for each missed target: what limits the figure and
// what would move it. They describe mechanisms, not numbers, so they hold across runs. Each
// starts with its bold title, which the summary's verdicts name.
const (
	whyBackfill = "**Backfill.** A batch is one statement that reads its keys, runs the enrichment over them and writes them, and commits with its checkpoint; the set-based UPDATE is one statement over the whole table, with no checkpoint and no bound on how long it holds its row locks. What remains is per key: the enrichment's `= ANY` over a batch's keys descends the child table's index once per key and aggregates in a nested loop, where the UPDATE reads that index once, in order; and the write finds each target row by its key a second time. By default two batches run at once on two connections, which on 2 cores share the CPU with each other and with the statement that reads the next chunk's bounds. What would move it: PostgreSQL 17's array index scans (one descent for neighbouring keys), and more cores (`--jobs`)."

	whyCatchUp = "**Catch-up.** The change queues the changed snapshots' keys (the dependency has no `sql`). matcol's time is then batch after batch in which a worker takes a table's queued keys and locks their rows in one statement, computes and stamps them in the next, and commits, with batch sizes set from each batch's rate toward 100 ms, on one worker for the backlog's first half second and then on up to `table_workers` (2) at once, so that a burst's batches run on one warm backend rather than four cold ones. Workers pause between batches only while the throttle sees the application suffer. Without huge pages (the heading's line says which ran), a backend's first touch of each 4 kB page of shared memory (the buffer mapping table, buffer pages, WAL buffers) faults, at several µs each on a virtual machine. The set-based UPDATE runs on the connection whose change has just touched those pages; matcol's batches run on its workers' own backends, which a change's first round finds cold: the first round's time in parentheses is that cost. The workers' pool serves batches alone and hands out the connection released last, so a second change to the same rows runs on the backend that has the pages mapped ([architecture.md](architecture.md#the-workers-pool)); with `huge_pages = on` the first round is as fast ([operations.md](operations.md#huge-pages)). What remains per batch: the separate lock step (matcol takes the row locks before the computing statement's snapshot, so that no change committed before them is missed), full-page images of target pages first changed since the CHECKPOINT, and the first visit's pruning of the pages the change left dead versions on, which both sides pay. Against REFRESH, matcol's time is per changed row where REFRESH's is per view row, so the ratio falls as the change grows. At `--log-level trace` the daemon logs each batch's rows, size and time."

	whyFreshness = "**Freshness.** Logical mode adds the walsender's decoding and the listener's batching (entries of committed transactions wait up to 100 ms to be inserted with more, in one synchronous commit) to trigger mode's path; under load on 2 cores the decoding competes with the writers and the batches. A shorter flush delay trades queue commits for latency."

	whyTrigger = "**Write overhead, trigger mode.** Each application statement on a source runs a statement trigger with transition tables: a PL/pgSQL call as the writer, two tuplestores, the rows compared on the columns the enrichment watches, and an insert into `matcol.pending` in the same statement. That fixed cost is large next to this workload's single-row UPDATEs of about 50 µs ([invalidation.md](invalidation.md)), and every UPDATE here changes a watched column (`seat_count` is summed, `venue_id` names the venue), so each one queues. With the daemon running, its recomputations (each moved event recomputes two venues over 100 events) share the 2 cores with pgbench. What would move it: a C trigger function; logical mode takes the work off the write path entirely (its daemon-stopped rows)."

	whyLogical = "**Write overhead, logical mode.** The write path itself costs nothing measurable (the daemon-stopped rows: replica identity and a publication). With the daemon running, the walsender decodes every change and the daemon recomputes the venues, on the same 2 cores as pgbench, and the daemon's own writes add WAL. On a machine with spare cores, or with the daemon throttled (`throttle.latency_factor`), the gap shrinks; on 2 busy cores the recomputation itself is what costs."

	whyTPCB = "**pgbench tpcb-like.** Every tpcb transaction updates one `pgbench_accounts` row (its `abalance`) and inserts one `pgbench_history` row. The enrichment reads only `aid` of `pgbench_accounts`, so the account's own UPDATE leaves the row fresh (in trigger mode a row trigger compares the key on each UPDATE; in logical mode there is none, since the stream shows key changes), and the history insert queues the account's key. Each transaction then costs a queue entry (in logical mode a decoded change, and the walsender decodes every change on the same cores) and a recomputation by a worker, with its own WAL, on the same 2 cores as pgbench. The hand-written trigger does one in-place increment in the writer's transaction. The CPU, RSS and WAL columns say where each variant's cost goes."

	whyFootprint = "**Footprint.** Idle, the daemon polls nothing but its LISTEN connection and a sweep every `sweep_interval`; any CPU above zero here is those sweeps and the status figures."
)

// whys are the explanations in the order the summary prints them.
var whys = []string{whyBackfill, whyCatchUp, whyFreshness, whyTrigger, whyLogical, whyTPCB, whyFootprint}

// whyTitle is an explanation's bold title without its full stop.
func whyTitle(why string) string {
	t, _, _ := strings.Cut(strings.TrimPrefix(why, "**"), ".**")
	return t
}
