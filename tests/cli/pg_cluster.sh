#!/usr/bin/env bash
# A private, throwaway PostgreSQL server for tests: initdb + pg_ctl in a directory of its own,
# listening on loopback TCP (127.0.0.1, a free port chosen at start) and on a Unix socket in that
# directory, password authentication (scram-sha-256) for the superuser "lowbit" (password
# "lowbit"); clients connect over TCP, as workers on other machines would. PostgreSQL refuses to run as root: as root the
# server runs as the `postgres` system user (runuser), otherwise as the current user.
#
#   pg_cluster.sh available     exit 0 when the server binaries are installed (Debian: postgresql)
#   pg_cluster.sh start DIR     create and start a cluster in DIR (new or empty, e.g. from mktemp -d;
#                               its parent must be open to the postgres user, as /tmp is); prints
#                               the connection URI of its database "postgres"
#   pg_cluster.sh stop DIR      stop it (immediately) and remove DIR
set -euo pipefail

bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] && { echo "$d"; return 0; }
  done
  if command -v initdb > /dev/null && command -v pg_ctl > /dev/null; then
    dirname "$(command -v initdb)"
    return 0
  fi
  return 1
}

as_owner() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
  available)
    bindir > /dev/null
    ;;
  start)
    dir="$2"
    bin=$(bindir) || { echo "pg_cluster.sh: the PostgreSQL server binaries are not installed" >&2; exit 1; }
    mkdir -p "$dir/sock"
    echo lowbit > "$dir/pw"
    if [[ $(id -u) -eq 0 ]]; then chown -R postgres "$dir"; chmod 755 "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -U lowbit -A scram-sha-256 --pwfile="$dir/pw" -E UTF8 --locale=C \
      --no-sync > "$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    # Loopback only, no durability (a test's data is thrown away). A port another process holds
    # makes the start fail: up to 8 random ports are tried.
    started=0
    for _ in 1 2 3 4 5 6 7 8; do
      port=$((20000 + RANDOM % 30000))
      if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
           -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/sock -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
           start > /dev/null 2>&1; then
        started=1
        break
      fi
    done
    [[ $started -eq 1 ]] || { cat "$dir/server.log" >&2; exit 1; }
    echo "postgresql://lowbit:lowbit@127.0.0.1:$port/postgres"
    ;;
  stop)
    dir="$2"
    if bin=$(bindir) && [[ -d "$dir/data" ]]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop > /dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  *)
    echo "usage: pg_cluster.sh available | start DIR | stop DIR" >&2
    exit 2
    ;;
esac
