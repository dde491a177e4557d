#!/usr/bin/env bash
# Measures what trigger-mode invalidation costs application writers, with pgbench, against the
# same writes with no triggers and with the alternative design (triggers that UPDATE the target's
# materialized_at directly). Usage: bench/write_overhead.sh [seconds per run] [clients...]
# Runs on a throwaway cluster on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; shift || true
clients=("${@:-1 8}")
[ ${#clients[@]} -eq 1 ] && read -r -a clients <<<"${clients[0]}"

source bench/cluster.sh
start_cluster "shared_buffers = 256MB
max_connections = 100
wal_level = logical
${PGSETTINGS:-}"
dsn="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$dsn" "$@"; }

go build -o "$work/matcol" ./cmd/matcol
psql -f internal/demo/schema.sql
psql <<'SQL'
INSERT INTO cinema SELECT g, 'Cinema ' || g FROM generate_series(1, 100) g;
INSERT INTO venue (id, cinema_id, name) SELECT g, 1 + g % 100, 'Venue ' || g FROM generate_series(1, 1000) g;
INSERT INTO event SELECT g, 1 + g % 1000, g % 7, 50 + g % 200, now() FROM generate_series(1, 100000) g;
VACUUM ANALYZE;
SQL
cat >"$work/write.sql" <<'SQL'
\set id random(1, 100000)
\set v random(1, 1000)
BEGIN;
UPDATE event SET seat_count = seat_count + 1 WHERE id = :id;
UPDATE event SET venue_id = :v WHERE id = :id + 1 OR id = :id - 1;
END;
SQL

run() { # label
  for c in "${clients[@]}"; do
    psql -c CHECKPOINT
    local lsn0 lsn1 out tps
    lsn0=$(psql -Atc "SELECT pg_current_wal_lsn()")
    out=$("$bindir/pgbench" -n -h 127.0.0.1 -p "$port" -U postgres -c "$c" -j "$c" -T "$secs" -f "$work/write.sql" postgres 2>&1)
    lsn1=$(psql -Atc "SELECT pg_current_wal_lsn()")
    tps=$(grep -oP 'tps = \K[0-9.]+' <<<"$out" | head -1)
    local xacts; xacts=$(grep -oP 'number of transactions actually processed: \K[0-9]+' <<<"$out")
    local wal; wal=$(psql -Atc "SELECT round(pg_wal_lsn_diff('$lsn1', '$lsn0') / $xacts)")
    printf '%-28s clients=%-3s tps=%-10s wal_bytes/xact=%s\n' "$1" "$c" "$tps" "$wal"
  done
}

run "baseline (no matcol)"

cat >"$work/matcol.yaml" <<YAML
database_url: $dsn
status: {listen: ""}
log_level: warn
enrichments:
  - name: venue_counts
    table: public.venue
    columns: [auditorium_count, seat_count]
    sql: |
      SELECT v.id, count(DISTINCT e.auditorium_id)::int AS auditorium_count, sum(e.seat_count)::bigint AS seat_count
      FROM venue v LEFT JOIN event e ON e.venue_id = v.id WHERE v.id = ANY(\$1) GROUP BY v.id
    depends_on:
      - table: public.event
        columns: [venue_id]
YAML
"$work/matcol" apply -c "$work/matcol.yaml" >/dev/null
run "matcol triggers, daemon off"
if [ -n "${EXPERIMENT:-}" ]; then psql -c "$EXPERIMENT"; run "experiment"; fi
"$work/matcol" run -c "$work/matcol.yaml" 2>"$work/matcol.log" &
mpid=$!
sleep 3
run "matcol triggers, daemon on"

# The alternative: invalidate in place, inside the writer's transaction (the daemon keeps running
# and re-stamps the rows, as it would).
psql <<'SQL'
-- matcol's trigger names carry a hash of their definition, so drop whatever it created on event.
DO $$DECLARE t name;
BEGIN
  FOR t IN SELECT tgname FROM pg_trigger WHERE tgrelid = 'event'::regclass AND tgname LIKE 'matcol\_%' LOOP
    EXECUTE format('DROP TRIGGER %I ON event', t);
  END LOOP;
END$$;
CREATE FUNCTION direct_inv() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE venue SET materialized_at = NULL
  WHERE id IN (SELECT venue_id FROM old_rows UNION SELECT venue_id FROM new_rows);
  RETURN NULL;
END $$;
CREATE TRIGGER direct_inv AFTER UPDATE ON event REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION direct_inv();
SQL
run "direct UPDATE, daemon on"
kill -TERM $mpid; wait $mpid || true
