#!/usr/bin/env bash
# Throughput of a study shared by workers: the same spec with 1, 2, 4 ... workers on one machine,
# each on a fresh database of a private PostgreSQL server (tests/cli/pg_cluster.sh), beside the
# single-process SQLite run; every store's results are checked equal to the SQLite run's.
#
#   bench/study_workers.sh SPEC [WORKER_COUNTS] [lowbit study options for every worker...]
#   bench/study_workers.sh examples/quick-testbed.toml "1 2 4" --threads 1
#   DEVICES="cuda:0 cuda:1" bench/study_workers.sh SPEC "1 2" --threads 4   # worker i on DEVICES[i % n]
#
# LOWBIT: the lowbit binary (default build/tools/lowbit/lowbit).
set -euo pipefail
SPEC="$(realpath "${1:?usage: study_workers.sh SPEC [COUNTS] [options]}")"
COUNTS="${2:-1 2 4}"
shift $(($# >= 2 ? 2 : 1))
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
B="$(realpath "${LOWBIT:-$HERE/build/tools/lowbit/lowbit}")"
read -r -a devices <<< "${DEVICES:-}"
T=$(mktemp -d)
PGD=$(mktemp -d)
trap 'bash "$HERE/tests/cli/pg_cluster.sh" stop "$PGD"; rm -rf "$T"' EXIT
URI=$(bash "$HERE/tests/cli/pg_cluster.sh" start "$PGD")
now() { date +%s.%N; }
# CPU seconds (user + system) of every child process waited for so far.
# (`times` runs in this shell, not in a $(...) subshell, which has no children of its own.)
cpu() {
  times > "$T/times"
  tail -1 "$T/times" | awk '{ split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%.2f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }'
}
dev_opt() { if [[ ${#devices[@]} -gt 0 ]]; then echo "--device ${devices[$(($1 % ${#devices[@]}))]}"; fi; }

t0=$(now)
cpu > "$T/c0"; c0=$(cat "$T/c0")
# shellcheck disable=SC2046
"$B" study "$SPEC" --db "$T/ref.sqlite" $(dev_opt 0) "$@" > "$T/ref.log" 2>&1 || { tail -3 "$T/ref.log"; exit 1; }
t1=$(now)
cpu > "$T/c1"; c1=$(cat "$T/c1")
"$B" report "$T/ref.sqlite" --format rows > "$T/ref.rows"
printf "%-26s %7.1f s wall %7.1f s CPU   %d results\n" "SQLite, one process" "$(echo "$t1 - $t0" | bc)" \
  "$(echo "$c1 - $c0" | bc)" "$(wc -l < "$T/ref.rows")"
for n in $COUNTS; do
  psql "$URI" -qAtc "CREATE DATABASE w$n" > /dev/null
  db="${URI%/postgres}/w$n"
  t0=$(now)
  cpu > "$T/c0"; c0=$(cat "$T/c0")
  pids=()
  for ((i = 0; i < n; i++)); do
    # shellcheck disable=SC2046
    "$B" study "$SPEC" --db "$db" --worker $(dev_opt "$i") "$@" > "$T/w$n-$i.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { echo "a worker failed:"; tail -3 "$T"/w$n-*.log; exit 1; }; done
  t1=$(now)
  cpu > "$T/c1"; c1=$(cat "$T/c1")
  "$B" report "$db" --format rows > "$T/w$n.rows"
  same=$(cmp -s "$T/ref.rows" "$T/w$n.rows" && echo "equal to SQLite's" || echo "DIFFERENT from SQLite's")
  printf "%-26s %7.1f s wall %7.1f s CPU   %d results, %s\n" "PostgreSQL, $n worker(s)" "$(echo "$t1 - $t0" | bc)" \
    "$(echo "$c1 - $c0" | bc)" "$(wc -l < "$T/w$n.rows")" "$same"
done
