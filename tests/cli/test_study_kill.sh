#!/usr/bin/env bash
# A study killed with SIGKILL at random points, several times, and resumed each time until it is
# done, must end with exactly the results of an uninterrupted run of the same spec: the same
# rows, each once, with identical values (same seed -> identical numbers). After every kill the
# store must hold only complete evaluations whose values equal the uninterrupted run's, and it
# must be readable while a study writes to it.
#   LOWBIT_KILLS=N to change the number of kills (default 5).
set -u
export LC_ALL=C
B="$LOWBIT_BIN"
M="$LOWBIT_TEST_MODELS"
D="$LOWBIT_TEST_DATA"
T=$(mktemp -d)
pid=""
trap '[[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null; rm -rf "$T"' EXIT
KILLS="${LOWBIT_KILLS:-5}"

if [[ ! -f "$M/stories260K/stories260K.bin" || ! -f "$D/piqa/valid.jsonl" ]]; then
  echo "skipped: stories260K or the data are not available"
  exit 0
fi
export LOWBIT_MODELS="$M" LOWBIT_DATA="$D"
fail() { echo "FAIL: $*"; exit 1; }

# 18 cells x 5 evaluations, every method, a few seconds in all on 2 cores. Calibration on a
# slice of PTB train, which every restart tokenizes in a moment.
head -c 200000 "$D/ptb/ptb.train.txt" > "$T/calib.txt"
cat > "$T/kill.toml" <<'EOF'
[study]
name = "kill"
db = "reference.sqlite"
threads = 2

[[model]]
name = "stories260K"
path = "${LOWBIT_MODELS}/stories260K/stories260K.bin"

[calibration]
set = "calib.txt"
nsamples = 4
seqlen = 128
seed = 0

[eval]
ppl = ["ptb", "wikitext2"]
seqlen = 256
limit = 2
tasks = ["piqa", "arc_easy", "winogrande"]
task_limit = 15

[[method]]
name = "fp16"

[[method]]
name = "rtn"
w = [8, 4, 3, 2]
g = [32, -1]

[[method]]
name = "gptq"
w = [4, 3, 2]
g = 32

[[method]]
name = "awq"
w = [4, 3]
g = -1
grid = 4

[[method]]
name = "smoothquant"
w = [8, 6, 4]
a = [8, 6, 4]
zip = ["w", "a"]

[[method]]
name = "nf4"
EOF

rows() { "$B" report "$1" --format rows; }

# The uninterrupted run.
t0=$(date +%s.%N)
"$B" study "$T/kill.toml" > "$T/ref.log" 2>&1 || fail "uninterrupted run: $(tail -3 "$T/ref.log")"
t1=$(date +%s.%N)
rows "$T/reference.sqlite" > "$T/ref.rows" || fail "report of the reference store"
n_ref=$(wc -l < "$T/ref.rows")
[[ $n_ref -eq $((18 * (1 + 1 + 2 + 2 + 1))) ]] || fail "reference holds $n_ref results, expected $((18 * 7))"
ref_ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", (b - a) * 1000 }')
echo "uninterrupted: $n_ref results in $ref_ms ms"

# Kill -9 at random delays (spread over the whole run, start-up included), resume each time.
RANDOM=$$
kills=0
attempts=0
while [[ $kills -lt $KILLS && $attempts -lt $((KILLS * 4)) ]]; do
  attempts=$((attempts + 1))
  # Up to the time the work still to do took uninterrupted (start-up included).
  stored=0
  [[ -f "$T/killed.sqlite" ]] && stored=$(rows "$T/killed.sqlite" | wc -l)
  delay_ms=$((100 + RANDOM % (ref_ms * (n_ref - stored) / n_ref + 1)))
  "$B" study "$T/kill.toml" --db "$T/killed.sqlite" --resume > "$T/run.log" 2>&1 &
  pid=$!
  sleep "$(awk -v m="$delay_ms" 'BEGIN { printf "%.3f", m / 1000 }')"
  # A reader while the study writes.
  if [[ -f "$T/killed.sqlite" ]] && ! rows "$T/killed.sqlite" > /dev/null 2> "$T/reader.err"; then
    fail "reading the store during a run: $(cat "$T/reader.err")"
  fi
  if kill -9 "$pid" 2>/dev/null; then
    kills=$((kills + 1))
    wait "$pid" 2>/dev/null
    pid=""
    if [[ -f "$T/killed.sqlite" ]]; then
      rows "$T/killed.sqlite" > "$T/killed.rows" || fail "the store is unreadable after kill $kills"
    else
      : > "$T/killed.rows"
    fi
    dups=$(sort "$T/killed.rows" | uniq -d | wc -l)
    [[ $dups -eq 0 ]] || fail "after kill $kills: $dups results stored twice"
    # Every stored row is one of the reference's, value for value.
    extra=$(comm -23 <(sort "$T/killed.rows") <(sort "$T/ref.rows") | head -3)
    [[ -z "$extra" ]] || fail "after kill $kills, results differ from the uninterrupted run's: $extra"
    # Evaluations are stored whole: each stored (cell, evaluation) has all its metrics.
    partial=$(comm -23 <(cut -f1,2 "$T/killed.rows" | sort | uniq -c | sort) \
                       <(cut -f1,2 "$T/ref.rows" | sort | uniq -c | sort) | head -3)
    [[ -z "$partial" ]] || fail "after kill $kills, an evaluation is stored in part: $partial"
    echo "kill $kills after ${delay_ms} ms: $(wc -l < "$T/killed.rows") of $n_ref results stored, all complete and equal"
  else
    wait "$pid"
    rc=$?
    pid=""
    [[ $rc -eq 0 ]] || fail "a resumed run failed (rc=$rc): $(tail -3 "$T/run.log")"
    # Done before the kill: it must be the uninterrupted result; then start over.
    rows "$T/killed.sqlite" > "$T/killed.rows"
    diff -q "$T/ref.rows" "$T/killed.rows" > /dev/null || fail "a resumed run ended with other results"
    echo "run finished before the kill at ${delay_ms} ms, with the uninterrupted results; starting over"
    rm -f "$T/killed.sqlite" "$T/killed.sqlite-wal" "$T/killed.sqlite-shm"
  fi
done
[[ $kills -ge $KILLS ]] || fail "only $kills of $attempts runs were killed mid-way"

# Resume until done.
"$B" study "$T/kill.toml" --db "$T/killed.sqlite" --resume > "$T/run.log" 2>&1 || fail "final resume: $(tail -3 "$T/run.log")"
rows "$T/killed.sqlite" > "$T/killed.rows"
if ! diff "$T/ref.rows" "$T/killed.rows" > "$T/diff"; then
  fail "the resumed store differs from the uninterrupted one: $(head -5 "$T/diff")"
fi
[[ $(sort "$T/killed.rows" | uniq -d | wc -l) -eq 0 ]] || fail "duplicates in the final store"
# The report of both stores is the same table.
cmp -s <("$B" report "$T/reference.sqlite" --format csv) <("$B" report "$T/killed.sqlite" --format csv) ||
  fail "the reports of the two stores differ"
echo "after $kills kills: $(wc -l < "$T/killed.rows") results, each once, identical to the uninterrupted run"
