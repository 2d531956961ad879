#!/usr/bin/env bash
# Runs lowbit's GPU checks and benchmarks one after another on one GPU machine, each step's output
# in OUT/STEP.log, a step whose log ends in "step done" skipped, so that the same command run
# again (on a machine lent for short spells, say) continues where the last run stopped.
# Steps run in the order given; each is cut at its own time limit (seconds) and the whole run at
# BUDGET seconds, a step that cannot finish within what is left not started.
#
#   bench/gpu/run_all.sh LOWBIT OUT STEP[:SECONDS] ...
#
# Steps (the commands of README's "GPU benchmarks"; WORK=OUT/work, models built there once):
#   tests          test_cuda (TC, default: test_cuda beside LOWBIT; FILTER a gtest filter)
#   decode         decode_8b.sh, CUDA-graph decode, then LOWBIT_CUDA_GRAPHS=0 on the same model
#   peft           qlora_vs_peft.sh at 8B shapes, 4 layers (PEFT's wheel on PYTHONPATH), then the
#                  same with BASE_RESIDENT=off LOWBIT_TRAIN_FUSE=0 (the step before those options),
#                  then with LOWBIT_TRAIN_ATTENTION=tf32 (the attention's products on tensor cores)
#   qlora8b        qlora_8b.sh, 32 layers, BASE_RESIDENT=off (the 12 GB target's configuration)
#   dbllm8b        dbllm_8b.sh "2 4" (COMPUTE as set)
#   ppl8b gptq8b   ppl_8b.sh, gptq_8b.sh (REF_LAYERS 2)
#   llava          scripts/device/llava_next_gpu_parity.sh
#   methods8b      methods_8b.sh (REFS: the official work trees)
#   study:SPEC     lowbit study SPEC --resume into OUT/<spec name>.sqlite, then its report
#
# Variables: DATA, TOK (a LLaMA-3 tokenizer folder), REFS, PEAK_GBS (3350 H100 SXM, 4800 H200),
# BUDGET (0: none). scripts/device/unbundle.sh sets DATA and TOK.
set -uo pipefail
if [[ $# -lt 3 ]]; then sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; fi
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LOWBIT=$1 OUT=$2; shift 2
TC=${TC:-$(dirname "$LOWBIT")/test_cuda}
WORK=$OUT/work BUDGET=${BUDGET:-0} PEAK_GBS=${PEAK_GBS:-3350} DATA=${DATA:-} TOK=${TOK:-} REFS=${REFS:-}
for s in "$@"; do  # every step known before any runs
  case "${s%%:*}" in
    tests|decode|peft|qlora8b|dbllm8b|ppl8b|gptq8b|llava|methods8b|study) ;;
    *) echo "run_all: unknown step '${s%%:*}' (see the usage: bash $0)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT" "$WORK"
START=$(date +%s)
run_step() {  # NAME SECONDS COMMAND...
  local name=$1 secs=$2; shift 2
  local log="$OUT/$name.log"
  if [[ -f "$log" ]] && tail -n 1 "$log" | grep -q "^step done"; then echo "== $name: done before"; return; fi
  if [[ "$BUDGET" -gt 0 ]]; then
    local left=$((BUDGET - ($(date +%s) - START)))
    if [[ "$left" -lt "$secs" ]]; then echo "== $name: ${secs} s do not fit in the ${left} s left"; return; fi
  fi
  echo "== $name (up to $secs s)"
  local t0=$(date +%s)
  timeout "$secs" "$@" > "$log" 2>&1
  local rc=$?
  tail -n 25 "$log"
  if [[ $rc -eq 0 ]]; then echo "step done in $(( $(date +%s) - t0 )) s" >> "$log"; else echo "== $name: exit $rc after $(( $(date +%s) - t0 )) s"; fi
}
B=$ROOT/bench/gpu
for s in "$@"; do
  name=${s%%:*} secs=600
  [[ "$s" == *:[0-9]* ]] && secs=${s##*:}
  case "$name" in
    tests)    run_step tests "$secs" "$TC" ${FILTER:+--gtest_filter="$FILTER"} ;;
    decode)   run_step decode "$secs" bash -c "ROUNDS=\${ROUNDS:-2} bash '$B/decode_8b.sh' '$LOWBIT' '$DATA' '$WORK/d8' '$TOK' $PEAK_GBS &&
                LOWBIT_CUDA_GRAPHS=0 ROUNDS=\${ROUNDS:-2} bash '$B/decode_8b.sh' '$LOWBIT' '$DATA' '$WORK/d8' '$TOK' $PEAK_GBS" ;;
    peft)     run_step peft "$secs" bash -c "STEPS=4 PROFILE=1 TOKENIZER_DIR='$TOK' bash '$B/qlora_vs_peft.sh' '$LOWBIT' '$WORK/p' 8b 4 &&
                STEPS=4 PROFILE=1 BASE_RESIDENT=off LOWBIT_TRAIN_FUSE=0 TOKENIZER_DIR='$TOK' bash '$B/qlora_vs_peft.sh' '$LOWBIT' '$WORK/p0' 8b 4 &&
                STEPS=4 PROFILE=1 LOWBIT_TRAIN_ATTENTION=tf32 TOKENIZER_DIR='$TOK' bash '$B/qlora_vs_peft.sh' '$LOWBIT' '$WORK/p1' 8b 4" ;;
    qlora8b)  run_step qlora8b "$secs" env BASE_RESIDENT=off STEPS=${STEPS:-2} ACCUM=${ACCUM:-2} bash "$B/qlora_8b.sh" "$LOWBIT" "$WORK/q" "$TOK" 32 ;;
    dbllm8b)  run_step dbllm8b "$secs" env STEPS=${STEPS:-6} bash "$B/dbllm_8b.sh" "$LOWBIT" "$DATA" "$WORK/db8" "$TOK" "2 4" ;;
    ppl8b)    run_step ppl8b "$secs" bash "$B/ppl_8b.sh" "$LOWBIT" "$DATA" "$WORK/w8" "$TOK" ;;
    gptq8b)   run_step gptq8b "$secs" bash "$B/gptq_8b.sh" "$LOWBIT" "$DATA" "$WORK/w8" "$TOK" 2 ;;
    llava)    run_step llava "$secs" bash "$ROOT/scripts/device/llava_next_gpu_parity.sh" "$LOWBIT" "$WORK/llava" "$DATA" ;;
    methods8b) run_step methods8b "$secs" bash "$B/methods_8b.sh" "$LOWBIT" "$DATA" "$WORK/m8" "$TOK" "$REFS" 4 ;;
    study)    spec=${s#study:}; spec=${spec%%:[0-9]*}; sn=$(basename "$spec" .toml)
              run_step "study-$sn" "$secs" bash -c "'$LOWBIT' study '$spec' --db '$OUT/$sn.sqlite' \
                \$([[ -f '$OUT/$sn.sqlite' ]] && echo --resume) && '$LOWBIT' report '$OUT/$sn.sqlite' --decimals 2" ;;
  esac
done
