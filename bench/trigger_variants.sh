#!/usr/bin/env bash
# Measures what a target's own-row trigger costs an UPDATE of a column no enrichment reads, for
# the designs considered, with pgbench against the same UPDATE with no trigger. Usage:
# bench/trigger_variants.sh [seconds per run] [clients...]. A throwaway cluster on 127.0.0.1 only;
# synchronous_commit off, so that the per-statement cost shows rather than the WAL flush.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}; shift || true
clients=("${@:-1 8}")
[ ${#clients[@]} -eq 1 ] && read -r -a clients <<<"${clients[0]}"

source bench/cluster.sh
start_cluster "shared_buffers = 256MB
synchronous_commit = off"
dsn="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$dsn" "$@"; }

psql <<'SQL'
CREATE SCHEMA matcol;
CREATE TABLE acct (aid int PRIMARY KEY, bid int, abalance int, filler char(84), history_count bigint,
                   materialized_at timestamptz) WITH (fillfactor = 90);
INSERT INTO acct SELECT g, g % 10, 0, '', 0, now() FROM generate_series(1, 100000) g;
CREATE INDEX ON acct (aid) WHERE materialized_at IS NULL;
CREATE FUNCTION matcol.self() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN NEW.materialized_at := NULL; RETURN NEW; END$$;
-- matcol's: the watched columns (here the key) compared in a SQL function the WHEN calls and
-- PostgreSQL inlines.
CREATE FUNCTION matcol.selfw(anyelement, anyelement) RETURNS boolean LANGUAGE sql STABLE AS
  $$SELECT NOT ((pg_catalog.to_jsonb($1) OPERATOR(pg_catalog.-) '{bid,abalance,filler,history_count,materialized_at}'::text[])
     OPERATOR(pg_catalog.=) (pg_catalog.to_jsonb($2) OPERATOR(pg_catalog.-) '{bid,abalance,filler,history_count,materialized_at}'::text[]))$$;
-- The previous design: a function call on every UPDATE, comparing every column but matcol's.
CREATE FUNCTION matcol.self_old() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN
    IF (to_jsonb(OLD) - '{materialized_at,history_count}'::text[]) = (to_jsonb(NEW) - '{materialized_at,history_count}'::text[]) THEN
      RETURN NEW;
    END IF;
    NEW.materialized_at := NULL; RETURN NEW;
  END$$;
CREATE FUNCTION matcol.stale_old() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN PERFORM 1 FROM n WHERE materialized_at IS NULL LIMIT 1; RETURN NULL; END$$;
VACUUM ANALYZE;
SQL
echo '\set aid random(1, 100000)
UPDATE acct SET abalance = abalance + 1 WHERE aid = :aid;' >"$work/update.sql"

own="current_setting('matcol.own_write', true) IS DISTINCT FROM 'on'"
declare -A variant=(
  [0-none]=""
  [1-matcol-when-function]="CREATE TRIGGER t BEFORE UPDATE ON acct FOR EACH ROW WHEN ($own AND matcol.selfw(OLD, NEW)) EXECUTE FUNCTION matcol.self();"
  [2-when-inline]="CREATE TRIGGER t BEFORE UPDATE ON acct FOR EACH ROW WHEN ($own AND (to_jsonb(OLD) - '{bid,abalance,filler,history_count,materialized_at}'::text[]) IS DISTINCT FROM (to_jsonb(NEW) - '{bid,abalance,filler,history_count,materialized_at}'::text[])) EXECUTE FUNCTION matcol.self();"
  [3-update-of-columns]="CREATE TRIGGER t BEFORE UPDATE OF aid ON acct FOR EACH ROW WHEN ($own AND OLD.aid IS DISTINCT FROM NEW.aid) EXECUTE FUNCTION matcol.self();"
  [4-previous-row-function]="CREATE TRIGGER t BEFORE UPDATE ON acct FOR EACH ROW WHEN ($own) EXECUTE FUNCTION matcol.self_old();"
  [5-previous-with-statement-trigger]="CREATE TRIGGER t BEFORE UPDATE ON acct FOR EACH ROW WHEN ($own) EXECUTE FUNCTION matcol.self_old(); CREATE TRIGGER s AFTER UPDATE ON acct REFERENCING NEW TABLE AS n FOR EACH STATEMENT EXECUTE FUNCTION matcol.stale_old();"
)
printf '| variant | clients | TPS | ÷ no trigger |\n|---|---|---|---|\n'
for c in "${clients[@]}"; do
  base=0
  for v in $(printf '%s\n' "${!variant[@]}" | sort); do
    psql -c "DROP TRIGGER IF EXISTS t ON acct; DROP TRIGGER IF EXISTS s ON acct; ${variant[$v]}"
    psql -c "UPDATE acct SET materialized_at = now() WHERE materialized_at IS NULL; CHECKPOINT"
    tps=$("$bindir/pgbench" -n -c "$c" -j "$c" -T "$secs" -f "$work/update.sql" "$dsn" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    [ "$v" = 0-none ] && base=$tps
    printf '| %s | %s | %.0f | %.2f |\n' "${v#*-}" "$c" "$tps" "$(echo "$tps / $base" | bc -l)"
  done
done
