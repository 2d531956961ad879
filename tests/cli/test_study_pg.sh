#!/usr/bin/env bash
# A study shared by workers through a real PostgreSQL server (a private cluster on loopback TCP,
# tests/cli/pg_cluster.sh), checked against a single-process SQLite run of the same spec:
#   - 4 workers at once (registration from all of them at the same moment), 2 of them killed
#     with SIGKILL at random moments and 1 restarted: every (cell, evaluation) result exactly
#     once, value for value the SQLite run's; `lowbit report` of both stores the same tables
#   - a worker killed while it holds a lease: --status shows the item running on its host, the
#     lease expires, and the next worker takes the item over
#   - a cell that fails (a calibration text too short): its items retried --retries times, then
#     failed with the error in --status, while every other item is done; once the cause is
#     fixed, --retry-failed runs them
#   - bad input: unreachable server, wrong password (never echoed), a store of another study,
#     another grid under the same study name, an older schema, a database with other tables;
#     each a clear error that writes nothing
# Skips only when the PostgreSQL server binaries (Debian: postgresql) or the test model are absent.
set -u
export LC_ALL=C
B="$LOWBIT_BIN"
M="$LOWBIT_TEST_MODELS"
D="$LOWBIT_TEST_DATA"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/expect.sh"

if [[ ! -f "$M/stories260K/stories260K.bin" || ! -f "$D/piqa/valid.jsonl" ]]; then
  echo "skipped: stories260K or the data are not available"
  exit 0
fi
if ! bash "$HERE/pg_cluster.sh" available; then
  echo "skipped: the PostgreSQL server binaries are not installed (Debian: apt-get install postgresql)"
  exit 0
fi
command -v psql > /dev/null || { echo "FAIL: the PostgreSQL server is installed but psql is not"; exit 1; }

T=$(mktemp -d)
PGD=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2> /dev/null; done
  bash "$HERE/pg_cluster.sh" stop "$PGD"
  rm -rf "$T"
}
trap cleanup EXIT
URI=$(bash "$HERE/pg_cluster.sh" start "$PGD") || { echo "FAIL: cannot start a PostgreSQL cluster"; exit 1; }
# db NAME: the URI of a new database NAME on the test server
db() {
  psql "$URI" -qAtc "CREATE DATABASE $1" > /dev/null || { echo "FAIL: CREATE DATABASE $1"; exit 1; }
  echo "${URI%/postgres}/$1"
}
die() { echo "FAIL: $*"; exit 1; }

export LOWBIT_MODELS="$M" LOWBIT_DATA="$D"
# write_spec FILE NAME CALIBRATION [EXTRA METHODS]: 11 cells x 3 evaluations on stories260K
write_spec() {
  cat > "$1" <<EOF
[study]
name = "$2"
db = "ref.sqlite"
threads = 1

[[model]]
name = "stories260K"
path = "\${LOWBIT_MODELS}/stories260K/stories260K.bin"

[calibration]
set = "$3"
nsamples = 4
seqlen = 128

[eval]
ppl = ["ptb"]
seqlen = 128
limit = 2
tasks = ["piqa", "winogrande"]
task_limit = 8

[[method]]
name = "fp16"

[[method]]
name = "rtn"
w = [8, 4, 3, 2]
g = [32, -1]

[[method]]
name = "gptq"
w = [4, 3]
g = 32
${4:-}
EOF
}
head -c 100000 "$D/ptb/ptb.train.txt" > "$T/calib.txt"
write_spec "$T/pg.toml" pg calib.txt
N_ITEMS=33
rows() { "$B" report "$1" --format rows; }

# The single-process SQLite run.
t0=$(date +%s%N)
"$B" study "$T/pg.toml" > "$T/ref.log" 2>&1 || die "SQLite run: $(tail -3 "$T/ref.log")"
ref_ms=$((($(date +%s%N) - t0) / 1000000))
rows "$T/ref.sqlite" > "$T/ref.rows"
n_ref=$(wc -l < "$T/ref.rows")
echo "SQLite, one process: $n_ref results in $ref_ms ms"

# --- 4 workers, 2 killed at random moments, 1 restarted --------------------------------------
A=$(db study_a)
RANDOM=$$
# (Started as "$B" itself, not through a shell function, so that $! is the worker's pid.)
W=(study "$T/pg.toml" --db "$A" --worker --lease 2 --threads 1)
for i in 1 2 3 4; do
  "$B" "${W[@]}" > "$T/w$i.log" 2>&1 &
  pids+=($!)
done
# Each victim is killed at a random moment (0-100 ms) after it first holds a lease (its worker id
# names its pid), so that it dies with work in hand. Both victims are watched at once: the study
# takes well under a second, and a victim watched only after the other's death could have
# finished by then.
holds_lease() { [[ $(psql "$A" -qAtc "SELECT count(*) FROM work WHERE worker LIKE '%:$1:%' AND status = 'running'" 2> /dev/null) -gt 0 ]]; }
kill_when_leased() {
  for _ in $(seq 1 500); do
    holds_lease "$1" && break
    sleep 0.01
  done
  sleep "$(awk -v m="$2" 'BEGIN { printf "%.3f", m / 1000 }')"
  kill -9 "$1" 2> /dev/null && touch "$T/killed.$1"
}
killers=()
for k in 1 2; do
  kill_when_leased "${pids[$k]}" $((RANDOM % 100)) &
  killers+=($!)
done
for p in "${killers[@]}"; do wait "$p" || true; done
killed=0
for k in 1 2; do
  if [[ -e "$T/killed.${pids[$k]}" ]]; then
    killed=$((killed + 1))
    wait "${pids[$k]}" 2> /dev/null
  fi
done
"$B" "${W[@]}" > "$T/w5.log" 2>&1 &
pids+=($!)
rc=0
for i in 0 3 4; do wait "${pids[$i]}" || rc=$?; done
[[ $rc -eq 0 ]] || die "a worker failed (rc=$rc): $(tail -3 "$T"/w{1,4,5}.log)"
[[ $killed -eq 2 ]] && ok || bad "only $killed of 2 workers were killed mid-run"
echo "4 workers, $killed killed with SIGKILL mid-run, 1 restarted: $(grep -h "took over" "$T"/w*.log | wc -l) takeovers"
rows "$A" > "$T/a.rows" || die "report of the PostgreSQL store"
[[ $(sort "$T/a.rows" | uniq -d | wc -l) -eq 0 ]] && ok || bad "results stored twice"
diff -q "$T/ref.rows" "$T/a.rows" > /dev/null && ok ||
  bad "the workers' results differ from the SQLite run's: $(diff "$T/ref.rows" "$T/a.rows" | head -5)"
expect_ok "status: all done" "^  $N_ITEMS work items: $N_ITEMS done, 0 running, 0 failed, 0 remaining$" \
  "$B" study --status --db "$A"
[[ $(psql "$A" -qAtc "SELECT count(*) FROM runs") -ge 5 ]] && ok || bad "fewer than 5 runs recorded"
# The report from PostgreSQL is the report from SQLite (but for the store's name).
for f in csv rows; do
  cmp -s <("$B" report "$T/ref.sqlite" --format $f) <("$B" report "$A" --format $f) && ok ||
    bad "report --format $f differs between the SQLite and the PostgreSQL store"
done
for f in md latex; do
  cmp -s <("$B" report "$T/ref.sqlite" --format $f | grep -v "ref.sqlite") \
         <("$B" report "$A" --format $f | grep -v "postgresql://lowbit:\*\*\*@127.0.0.1:[0-9]*/study_a") && ok ||
    bad "report --format $f differs between the SQLite and the PostgreSQL store (but for the store's name)"
done
# A worker started after the end finds nothing to do; so does registration of the same spec.
expect_ok "worker after the end" "0 evaluations run, 0 results written.*holds $n_ref results" "$B" "${W[@]}"

# --- A worker killed while it holds a lease; its item taken over ------------------------------
# The kill may land between two claims (or inside a claim's transaction, which then rolls back),
# when the worker holds no lease: then it is tried again on a new database.
running=0
for attempt in 1 2 3 4 5; do
  K=$(db study_k$attempt)
  "$B" study "$T/pg.toml" --db "$K" --worker --lease 3 --threads 1 > "$T/k1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 400); do
    [[ $(psql "$K" -qAtc "SELECT count(*) FILTER (WHERE status = 'done') >= 3 AND count(*) FILTER (WHERE status = 'running') > 0 FROM work" 2> /dev/null) == t ]] && break
    sleep 0.02
  done
  kill -9 "${pids[-1]}"
  wait "${pids[-1]}" 2> /dev/null
  running=$(psql "$K" -qAtc "SELECT count(*) FROM work WHERE status = 'running'")
  [[ $running -ge 1 ]] && break
done
[[ $running -ge 1 ]] && ok || bad "the killed worker held no lease in 5 attempts"
expect_ok "status: running with host and lease" "^  running  stories260K\|.* on $(hostname), cpu, claimed .* ago, lease" \
  "$B" study "$T/pg.toml" --status --db "$K"
expect_ok "takeover" "took over [0-9]+ items? whose worker's lease expired" \
  "$B" study "$T/pg.toml" --db "$K" --worker --lease 3 --threads 1
[[ "$(rows "$K")" == "$(cat "$T/ref.rows")" ]] && ok || bad "after the takeover, results differ from the SQLite run's"
[[ $(psql "$K" -qAtc "SELECT sum(takeovers) FROM work") -ge 1 ]] && ok || bad "no takeover recorded"

# --- A failing cell: retried, then failed; the others done ------------------------------------
echo "a calibration text far too short" > "$T/tiny.txt"
write_spec "$T/fail.toml" pg tiny.txt
F=$(db study_f)
for i in 1 2; do
  "$B" study "$T/fail.toml" --db "$F" --worker --lease 5 --retries 2 --threads 1 > "$T/f$i.log" 2>&1 &
  pids+=($!)
done
wait "${pids[-1]}" && wait "${pids[-2]}" && ok || bad "a worker stopped on a failing cell: $(tail -3 "$T"/f*.log)"
expect_ok "status: failed" "^  failed   stories260K\|gptq:w=4,g=32\|.*ptb.*: after 3 attempts, on .*: calibration set '.*tiny.txt': [0-9]+ tokens, too few for windows of 128" \
  "$B" study --status --db "$F"
expect_ok "status: counts" "^  $N_ITEMS work items: 27 done, 0 running, 6 failed, 0 remaining$" \
  "$B" study --status --db "$F"
[[ "$(rows "$F")" == "$(grep -v "|gptq:" "$T/ref.rows")" ]] && ok ||
  bad "the cells that did not fail differ from the SQLite run's"
[[ $(psql "$F" -qAtc "SELECT DISTINCT failures FROM work WHERE status = 'failed'") == 3 ]] && ok ||
  bad "failed items were not tried exactly 1 + 2 times"
expect_ok "failed items stay failed" "0 evaluations run" \
  "$B" study "$T/fail.toml" --db "$F" --worker --lease 5 --threads 1
# The cause fixed (the calibration text now long enough), --retry-failed runs them: the numbers
# are the SQLite run's (the same text under another file name).
cp "$T/calib.txt" "$T/tiny.txt"
expect_ok "retry failed" "6 failed items back to pending" \
  "$B" study "$T/fail.toml" --db "$F" --worker --lease 5 --threads 1 --retry-failed
[[ "$(rows "$F" | sed 's|/tiny.txt:|/calib.txt:|')" == "$(cat "$T/ref.rows")" ]] && ok ||
  bad "the retried items differ from the SQLite run's"
echo "a calibration text far too short" > "$T/tiny.txt"

# --- lowbit store copy: a study begun in SQLite, finished by workers on PostgreSQL ------------
# The failing spec run by one process stops at its first GPTQ cell: 9 cells of 11 stored.
(cd "$T" && "$B" study fail.toml --db partial.sqlite > /dev/null 2>&1) && bad "the failing SQLite run succeeded" || ok
n_partial=$(rows "$T/partial.sqlite" | wc -l)
C=$(db study_c)
expect_ok "store copy" "copied study pg: 1 runs, 9 cells, $n_partial results from .*partial.sqlite to postgresql://lowbit:\*\*\*@127.0.0.1:[0-9]*/study_c" \
  "$B" store copy "$T/partial.sqlite" "$C"
[[ "$(rows "$C")" == "$(rows "$T/partial.sqlite")" ]] && ok || bad "the copy holds other results than its source"
expect_err "store copy into a non-empty store" "results store '.*study_c.*' is not empty" \
  "$B" store copy "$T/partial.sqlite" "$C"
expect_ok "workers finish a copied study" "6 evaluations run" \
  "$B" study "$T/pg.toml" --db "$C" --worker --lease 5 --threads 1
[[ "$(rows "$C")" == "$(cat "$T/ref.rows")" ]] && ok || bad "the finished copy differs from the SQLite run"
expect_ok "store copy back to SQLite" "copied study pg: 2 runs, 11 cells, $n_ref results" \
  "$B" store copy "$C" "$T/back.sqlite"
cmp -s <("$B" report "$T/back.sqlite" --format csv) <("$B" report "$T/ref.sqlite" --format csv) && ok ||
  bad "the study copied back to SQLite reports other numbers"

# --- Bad input -------------------------------------------------------------------------------
expect_err "unreachable" "cannot connect to results store 'postgresql://lowbit:\*\*\*@127.0.0.1:1/x'" \
  "$B" study "$T/pg.toml" --db "postgresql://lowbit:secret@127.0.0.1:1/x" --worker
bad_pw="${A/lowbit:lowbit@/lowbit:wrong-pw@}"
expect_err "wrong password" "password authentication failed for user \"lowbit\"" \
  "$B" study "$T/pg.toml" --db "$bad_pw" --worker
"$B" study "$T/pg.toml" --db "$bad_pw" --worker 2>&1 | grep -q wrong-pw && bad "the password was echoed" || ok
write_spec "$T/other.toml" other calib.txt
expect_err "another study" "results store '.*study_a.*' belongs to study 'pg', not 'other'" \
  "$B" study "$T/other.toml" --db "$A" --worker
write_spec "$T/grid.toml" pg calib.txt '[[method]]
name = "nf4"'
expect_err "another grid" "holds study 'pg' with another grid \(33 work items; this spec has 36\)" \
  "$B" study "$T/grid.toml" --db "$A" --worker
O=$(db study_old)
psql "$O" -qAtc "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES ('schema_version', '0')"
expect_err "older schema" "study store schema version 0 is not supported \(this lowbit reads version 1\)" \
  "$B" study "$T/pg.toml" --db "$O" --worker
[[ $(psql "$O" -qAtc "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") -eq 1 ]] && ok ||
  bad "an older store was changed"
X=$(db other_tables)
psql "$X" -qAtc "CREATE TABLE invoices (id INT)"
expect_err "other tables" "is not a lowbit study store \(it holds 1 other tables\)" "$B" study "$T/pg.toml" --db "$X" --worker
expect_err "report of other tables" "is not a lowbit study store" "$B" report "$X"
expect_err "no --worker" "is a PostgreSQL database, shared by workers: run .*--worker" "$B" study "$T/pg.toml" --db "$A"
expect_err "--worker on SQLite" "--worker: results store '.*ref.sqlite' is a SQLite file" \
  "$B" study "$T/pg.toml" --worker --resume
expect_err "--status on SQLite" "is a SQLite file; the work queue .* needs a PostgreSQL store" \
  "$B" study --status --db "$T/ref.sqlite"
report
