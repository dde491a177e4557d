# Sourced by the shell benchmarks: start_cluster SETTINGS starts a throwaway PostgreSQL on
# 127.0.0.1 with SETTINGS appended to postgresql.conf, removed when the script exits. It sets
# bindir, work (the cluster's directory), port and as_pg (runs a command as the cluster's owner:
# initdb refuses root).
start_cluster() {
  bindir=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  work=$(mktemp -d /tmp/matcol-bench-XXXX)
  as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
  [ "$(id -u)" = 0 ] && chown postgres "$work"
  port=$(( 20000 + RANDOM % 20000 ))
  as_pg "$bindir/initdb -D $work/data -U postgres -A trust --no-sync >/dev/null"
  printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n%s\n" "$port" "$work" "$1" \
    >>"$work/data/postgresql.conf"
  as_pg "$bindir/pg_ctl -D $work/data -l $work/log -w start >/dev/null"
  trap 'as_pg "$bindir/pg_ctl -D $work/data -m immediate stop" >/dev/null 2>&1; rm -rf "$work"' EXIT
}
