#!/usr/bin/env bash
# Splits what trigger mode costs pgbench's tpcb-like writers into its parts, each measured in pairs
# against the same database with no trigger: runs alternate, so that the machine's drift, which
# moves one run's TPS by 20% on a 2-core VM, cancels in each pair's ratio. Usage:
# bench/tpcb_triggers.sh [pairs] [seconds per run]. A throwaway cluster on 127.0.0.1 only; scale
# 10, 8 clients, synchronous_commit on, as docs/benchmarks.md's tpcb-like section; no daemon runs.
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-8}; secs=${2:-8}

source bench/cluster.sh
start_cluster "shared_buffers = 1GB
max_wal_size = 8GB
checkpoint_timeout = 30min
synchronous_commit = on"
go build -o "$work/matcol" ./cmd/matcol
su_dsn="postgres://postgres@127.0.0.1:$port/tp?sslmode=disable"
app_dsn="postgres://app@127.0.0.1:$port/tp?sslmode=disable"
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$su_dsn" "$@"; }

command psql -X -q "postgres://postgres@127.0.0.1:$port/postgres" -c "CREATE ROLE app LOGIN" -c "CREATE DATABASE tp OWNER app"
"$bindir/pgbench" -q -i -I dt -s 10 "$app_dsn" >/dev/null 2>&1
command psql -X -q "$app_dsn" -c "ALTER TABLE pgbench_accounts ADD history_count bigint DEFAULT 0,
  ADD history_delta bigint DEFAULT 0, ADD materialized_at timestamptz DEFAULT now()"
"$bindir/pgbench" -q -i -I Gvp -s 10 "$app_dsn" >/dev/null 2>&1
command psql -X -q "$app_dsn" -c "ALTER TABLE pgbench_accounts ALTER materialized_at DROP DEFAULT" \
  -c "CREATE INDEX pgbench_history_aid ON pgbench_history (aid)" \
  -c "CREATE INDEX pgbench_accounts_stale ON pgbench_accounts (aid) WHERE materialized_at IS NULL" \
  -c "VACUUM ANALYZE pgbench_accounts"
psql -c "CREATE EXTENSION IF NOT EXISTS pg_prewarm" 2>/dev/null || true

cat >"$work/matcol.yaml" <<YAML
database_url: $su_dsn
status:
  listen: ""
enrichments:
  - name: history_totals
    table: public.pgbench_accounts
    columns: [history_count, history_delta]
    sql: "SELECT a.aid, count(h.aid)::bigint AS history_count, coalesce(sum(h.delta), 0)::bigint AS history_delta FROM pgbench_accounts a LEFT JOIN pgbench_history h ON h.aid = a.aid WHERE a.aid = ANY(\$1) GROUP BY a.aid"
    depends_on:
      - table: public.pgbench_history
        columns: [aid]
YAML
"$work/matcol" install --config "$work/matcol.yaml" >/dev/null
"$work/matcol" apply --config "$work/matcol.yaml" >/dev/null
psql <<'SQL'
CREATE FUNCTION public.noop_stmt() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
CREATE TRIGGER x_noop AFTER INSERT ON pgbench_history REFERENCING NEW TABLE AS n FOR EACH STATEMENT EXECUTE FUNCTION public.noop_stmt();
CREATE FUNCTION public.history_totals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE pgbench_accounts SET history_count = history_count + 1, history_delta = history_delta + NEW.delta
  WHERE aid = NEW.aid;
  RETURN NULL;
END $$;
CREATE TRIGGER x_hand AFTER INSERT ON pgbench_history FOR EACH ROW EXECUTE FUNCTION public.history_totals();
SQL

# Each variant enables exactly its triggers.
off="ALTER TABLE pgbench_history DISABLE TRIGGER USER; ALTER TABLE pgbench_accounts DISABLE TRIGGER USER;"
names=(
  "statement trigger with a transition table, empty body"
  "hand-written row trigger (one UPDATE of the account)"
  "matcol's pgbench_history triggers alone"
  "matcol's pgbench_accounts triggers alone"
  "matcol's triggers (trigger mode)"
)
setups=(
  "$off ALTER TABLE pgbench_history ENABLE TRIGGER x_noop;"
  "$off ALTER TABLE pgbench_history ENABLE TRIGGER x_hand;"
  "$off ALTER TABLE pgbench_history ENABLE TRIGGER USER; ALTER TABLE pgbench_history DISABLE TRIGGER x_noop; ALTER TABLE pgbench_history DISABLE TRIGGER x_hand;"
  "$off ALTER TABLE pgbench_accounts ENABLE TRIGGER USER;"
  "$off ALTER TABLE pgbench_history ENABLE TRIGGER USER; ALTER TABLE pgbench_history DISABLE TRIGGER x_noop; ALTER TABLE pgbench_history DISABLE TRIGGER x_hand; ALTER TABLE pgbench_accounts ENABLE TRIGGER USER;"
)
run() {
  psql -c "$1 TRUNCATE matcol.pending" >/dev/null
  psql -c "SELECT pg_prewarm('pgbench_accounts'), pg_prewarm('pgbench_accounts_pkey')" >/dev/null 2>&1 || true
  psql -c "CHECKPOINT"
  sync
  "$bindir/pgbench" -n -b tpcb-like -c 8 -j 2 -T "$secs" "$app_dsn" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
printf '| variant | TPS ÷ no trigger, geometric mean of %s pairs | lowest, highest pair |\n|---|---|---|\n' "$pairs"
for v in "${!names[@]}"; do
  ratios=()
  for _ in $(seq "$pairs"); do
    base=$(run "$off")
    tps=$(run "${setups[$v]}")
    ratios+=("$(echo "$tps / $base" | bc -l)")
  done
  printf '%s\n' "${ratios[@]}" | awk -v name="${names[$v]}" '{l += log($1); if (NR == 1 || $1 < lo) lo = $1; if ($1 > hi) hi = $1}
    END {printf "| %s | %.3f | %.2f, %.2f |\n", name, exp(l / NR), lo, hi}'
done
