#!/usr/bin/env bash
# CPU decode at batch 1, lowbit's packed 4-bit against llama.cpp's Q4_0, side by side in one run,
# and the perplexity of both on the same windows.
#
#   bench/cpu_decode_vs_llamacpp.sh [MODEL...]      MODEL: testbed-44m, smollm2 (default: both)
#
# Environment (defaults in brackets):
#   THREADS [2]  ROUNDS [6]  PROMPT [128]  NEW [128]      decode runs, as bench_decode's options
#   NSAMPLES [32]  SEQLEN_CALIB [2048]                     GPTQ calibration windows (PTB train)
#   PPL_CHARS [60000]  PPL_SEQLEN [512]                     perplexity text (WikiText2 test)
#   PPL [1]                                                 0: decode only
#   LOAD [0]          busy loops (`yes > /dev/null`) kept running beside the decode rounds: the
#                     figures under load (LOAD=1 takes one of two cores from both engines)
#   LLAMA_TIMEOUT [120]  seconds after which a llama-bench run is recorded as nan
#   BASELINE_BENCH    another build's bench_decode (an older commit's, say), run in each round on
#                     the GPTQ model beside this build's: before and after in one run [unset]
#   LLAMA_CPP_SRC     llama.cpp's sources [the vendored copy of the llama-cpp-python 0.3.36 sdist,
#                     downloaded with pip into $CACHE when absent]
#   CACHE [~/.cache/lowbit/cpu-decode-vs-llamacpp]          the models made here (work/), llama.cpp's
#                     build (LLAMA_CPP_BUILD [$CACHE/llama.cpp-build])
#   LOWBIT_BUILD [build]  LOWBIT_DATA [../shared/data]  LOWBIT_MODELS [../shared/models]
#   SMOLLM2_GGUF [what scripts/fetch-smollm2.sh prints]
#
# What runs, per model:
#   base        testbed-44m: its bf16 safetensors. SmolLM2-135M-Instruct: the Q4_1 GGUF of
#               fetch-smollm2.sh dequantized to fp32 (lowbit export --format hf --dtype f32 for
#               lowbit; llama-quantize --allow-requantize ... F32 for llama.cpp: the same values).
#   llama.cpp   F32 GGUF (testbed-44m: llama.cpp's convert_hf_to_gguf.py --outtype f32) and Q4_0
#               made from it by llama-quantize (its default mix: token_embd, the tied LM head, in
#               Q6_K, or Q8_0 where the width is not a multiple of 256).
#   lowbit      GPTQ w4 g128 (asymmetric, PTB train calibration, NSAMPLES x SEQLEN_CALIB, seed 0) and RTN
#               w4 g32 symmetric (Q4_0's grid), run packed (`--packed`: 4-bit codes, 8-bit
#               activations) with the LM head packed to 8 bits (`--packed-head q8`).
# Decode: ROUNDS rounds; each round runs, one after the other, llama-bench Q4_0 (polling and not) and F32
# (`-p 0 -n NEW -d PROMPT -r 1`: NEW tokens generated after a PROMPT-token context) and bench_decode
# (`--prompt PROMPT --new NEW --rounds 1`) on each lowbit model, so a noisy neighbour hits all of
# them alike. The table gives the median of the rounds and the load average over the run.
# Perplexity: the first PPL_CHARS characters of WikiText2 test, tokenized by lowbit, every
# PPL_SEQLEN-token window; llama.cpp scores the same ids (scripts/llamacpp_window_ppl.cpp).
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
THREADS="${THREADS:-2}" ROUNDS="${ROUNDS:-6}" PROMPT="${PROMPT:-128}" NEW="${NEW:-128}"
NSAMPLES="${NSAMPLES:-32}" SEQLEN_CALIB="${SEQLEN_CALIB:-2048}"
PPL_CHARS="${PPL_CHARS:-60000}" PPL_SEQLEN="${PPL_SEQLEN:-512}"
CACHE="${CACHE:-$HOME/.cache/lowbit/cpu-decode-vs-llamacpp}"
LOWBIT_BUILD="${LOWBIT_BUILD:-$HERE/build}"
export LOWBIT_DATA="${LOWBIT_DATA:-$HERE/../shared/data}"
LOWBIT_MODELS="${LOWBIT_MODELS:-$HERE/../shared/models}"
LB="$LOWBIT_BUILD/tools/lowbit/lowbit"
BENCH="$LOWBIT_BUILD/bench/bench_decode"
MODELS=("$@")
[[ ${#MODELS[@]} -gt 0 ]] || MODELS=(testbed-44m smollm2)
die() { echo "cpu_decode_vs_llamacpp: $*" >&2; exit 1; }
[[ -x "$LB" && -x "$BENCH" ]] || die "build lowbit first: cmake --build $LOWBIT_BUILD --target lowbit bench_decode"
mkdir -p "$CACHE"

# llama.cpp's sources and build (one compile job; nothing is rebuilt when up to date).
LCP_VERSION=0.3.36
if [[ -z "${LLAMA_CPP_SRC:-}" ]]; then
  LLAMA_CPP_SRC="$CACHE/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
  if [[ ! -f "$LLAMA_CPP_SRC/include/llama.h" ]]; then
    python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$LCP_VERSION" -d "$CACHE/sdist" >&2
    tar -xzf "$CACHE/sdist/llama_cpp_python-$LCP_VERSION.tar.gz" -C "$CACHE"
  fi
fi
LBUILD="${LLAMA_CPP_BUILD:-$CACHE/llama.cpp-build}"
if [[ ! -f "$LBUILD/build.ninja" ]]; then
  cmake -S "$HERE/bench/llamacpp" -B "$LBUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CPP_SRC="$LLAMA_CPP_SRC" \
    $(command -v ccache >/dev/null && echo -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache) >/dev/null
fi
cmake --build "$LBUILD" -j1 --target llama-bench llama-quantize llamacpp_window_ppl >/dev/null
LBIN="$LBUILD/bin"

W="$CACHE/work"
mkdir -p "$W"
head -c "$PPL_CHARS" "$LOWBIT_DATA/wikitext2/wiki.test.raw" > "$W/wikitext2_test_head.txt"

# Makes $W/NAME-{f32,q4_0}.gguf, $W/NAME-base (lowbit's base model), $W/NAME-gptq, $W/NAME-rtn32.
prepare() {
  local name="$1" base
  case "$name" in
    testbed-44m)
      base="$LOWBIT_MODELS/testbed-44m"
      [[ -f "$W/$name-f32.gguf" ]] || PYTHONPATH="$LLAMA_CPP_SRC/gguf-py" python3 "$LLAMA_CPP_SRC/convert_hf_to_gguf.py" \
        "$base" --outtype f32 --outfile "$W/$name-f32.gguf" >"$W/$name-convert.log" 2>&1 ||
        die "convert_hf_to_gguf.py failed: $W/$name-convert.log"
      ;;
    smollm2)
      local gguf="${SMOLLM2_GGUF:-$("$HERE/scripts/fetch-smollm2.sh")}"
      base="$W/$name-base"
      [[ -d "$base" ]] || "$LB" export "$gguf" --format hf --dtype f32 -o "$base" >/dev/null
      [[ -f "$W/$name-f32.gguf" ]] || "$LBIN/llama-quantize" --allow-requantize "$gguf" "$W/$name-f32.gguf" F32 \
        >"$W/$name-f32.log" 2>&1 || die "llama-quantize F32 failed: $W/$name-f32.log"
      ;;
    *) die "unknown model '$name' (testbed-44m, smollm2)" ;;
  esac
  # A link to the base (testbed-44m) follows this checkout: an older one may point into one since removed.
  [[ "$base" == "$W/$name-base" ]] || ln -sfn "$base" "$W/$name-base"
  [[ -f "$W/$name-q4_0.gguf" ]] || "$LBIN/llama-quantize" "$W/$name-f32.gguf" "$W/$name-q4_0.gguf" Q4_0 "$THREADS" \
    >"$W/$name-q4_0.log" 2>&1 || die "llama-quantize Q4_0 failed: $W/$name-q4_0.log"
  [[ -d "$W/$name-gptq" ]] || "$LB" quantize --model "$base" --method gptq:w=4,g=128 --calib ptb \
    --nsamples "$NSAMPLES" --seqlen "$SEQLEN_CALIB" --threads "$THREADS" -o "$W/$name-gptq" >"$W/$name-gptq.log" 2>&1 ||
    die "GPTQ failed: $W/$name-gptq.log"
  [[ -d "$W/$name-rtn32" ]] || "$LB" quantize --model "$base" --method rtn:w=4,g=32,sym=1 -o "$W/$name-rtn32" \
    >"$W/$name-rtn32.log" 2>&1 || die "RTN failed: $W/$name-rtn32.log"
}

RESULTS="$W/results.jsonl"
: > "$RESULTS"
record() { python3 -c 'import json,sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' "$@" >> "$RESULTS"; }
load1() { cut -d' ' -f1 /proc/loadavg; }

for name in "${MODELS[@]}"; do prepare "$name"; done

# Decode, alternated; beside LOAD busy loops when asked.
LOAD_PIDS=()
stop_load() { for p in "${LOAD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; LOAD_PIDS=(); }
trap stop_load EXIT
for ((i = 0; i < ${LOAD:-0}; i++)); do
  yes > /dev/null &
  LOAD_PIDS+=($!)
done
for ((r = 1; r <= ROUNDS; r++)); do
  for name in "${MODELS[@]}"; do
    # llama.cpp's threads poll for work (--poll 50, its default) between graph nodes; beside
    # another busy process on few cores a poller that lost its core stalls the rest, so --poll 0
    # (waiting in the kernel) is measured as well. A run that takes over LLAMA_TIMEOUT seconds
    # is recorded as nan.
    for qp in q4_0:50 q4_0:0 f32:50; do
      q=${qp%:*} poll=${qp#*:}
      tps=$({ timeout "${LLAMA_TIMEOUT:-120}" "$LBIN/llama-bench" -m "$W/$name-$q.gguf" -t "$THREADS" -p 0 -n "$NEW" \
        -d "$PROMPT" -r 1 --poll "$poll" -o json 2>/dev/null || true; } |
        python3 -c 'import json,sys
try: print(json.load(sys.stdin)[0]["avg_ts"])
except Exception: print("nan")')
      record model "$name" engine llama.cpp variant "${q^^} poll $poll" round "$r" decode_tps "$tps" load "$(load1)"
    done
    # lowbit as it runs by default (decode's products on its thread pool, whose idle workers poll
    # for 100 us with yields, then sleep: src/backend/cpu/thread_pool.h), and with workers that
    # sleep as soon as a job ends (LOWBIT_POOL_SPIN_US=0: every product wakes them through the
    # kernel, as passive OpenMP threads are woken).
    for vs in gptq: gptq:nopoll rtn32:; do
      v=${vs%:*} mode=${vs#*:} env=()
      [[ $mode == nopoll ]] && env=(LOWBIT_POOL_SPIN_US=0)
      tps=$(env "${env[@]}" "$BENCH" --model "$W/$name-base" --q4 "$W/$name-$v" --variants packed-4bit --packed-head q8 \
        --threads "$THREADS" --rounds 1 --prompt "$PROMPT" --new "$NEW" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["variants"][0]["decode_tokens_per_s"])')
      record model "$name" engine lowbit variant "packed-4bit-$v${mode:+ $mode}" round "$r" decode_tps "$tps" load "$(load1)"
    done
    if [[ -n "${BASELINE_BENCH:-}" ]]; then
      tps=$("$BASELINE_BENCH" --model "$W/$name-base" --q4 "$W/$name-gptq" --variants packed-4bit --packed-head q8 \
        --threads "$THREADS" --rounds 1 --prompt "$PROMPT" --new "$NEW" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["variants"][0]["decode_tokens_per_s"])')
      record model "$name" engine lowbit variant "packed-4bit-gptq baseline" round "$r" decode_tps "$tps" load "$(load1)"
    fi
  done
done

stop_load

# Perplexity on the same windows.
T="$W/wikitext2_test_head.txt"
[[ "${PPL:-1}" == 0 ]] && MODELS_PPL=() || MODELS_PPL=("${MODELS[@]}")
for name in "${MODELS_PPL[@]}"; do
  "$LB" tokenize --model "$W/$name-base" --file "$T" --ids > "$W/$name-ids.txt"
  ppl=$("$LB" ppl --model "$W/$name-base" --dataset "$T" --seqlen "$PPL_SEQLEN" --threads "$THREADS" --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["ppl"], d["windows"])')
  record model "$name" engine lowbit variant "unquantized" ppl "${ppl% *}" windows "${ppl#* }"
  for v in gptq rtn32; do
    for mode in fake-quant packed; do
      extra=()
      [[ $mode == packed ]] && extra=(--packed --packed-head q8)
      ppl=$("$LB" ppl --model "$W/$name-$v" --dataset "$T" --seqlen "$PPL_SEQLEN" --threads "$THREADS" --json "${extra[@]}" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["ppl"], d["windows"])')
      record model "$name" engine lowbit variant "$v-$mode" ppl "${ppl% *}" windows "${ppl#* }"
    done
  done
  for q in q4_0 f32; do
    out=$("$LBIN/llamacpp_window_ppl" "$W/$name-$q.gguf" "$W/$name-ids.txt" "$PPL_SEQLEN" 1000000 2>/dev/null | tail -1)
    record model "$name" engine llama.cpp variant "${q^^}" ppl "$(sed 's/.*PPL = //' <<<"$out")" \
      windows "$(sed 's/llama.cpp: \([0-9]*\) windows.*/\1/' <<<"$out")"
  done
done

python3 - "$RESULTS" "$THREADS" "$PROMPT" "$NEW" "$PPL_CHARS" "$PPL_SEQLEN" "${LOAD:-0}" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
threads, prompt, new, chars, seqlen = sys.argv[2:7]
speed = [r for r in rows if "decode_tps" in r]
loads = [float(r["load"]) for r in speed]
print(f"decode at batch 1, {threads} threads, {prompt}-token context + {new} new tokens, "
      f"{sys.argv[7]} busy loops beside, "
      f"median of {max(int(r['round']) for r in speed)} alternated rounds; "
      f"1-minute load average {min(loads):.2f}..{max(loads):.2f} (median {statistics.median(loads):.2f})")
print(f"{'model':<12} {'engine':<10} {'variant':<22} {'decode tok/s':>13} {'rounds':>40}")
for key in dict.fromkeys((r["model"], r["engine"], r["variant"]) for r in speed):
    v = [float(r["decode_tps"]) for r in speed if (r["model"], r["engine"], r["variant"]) == key]
    ok = [x for x in v if x == x]
    med = statistics.median(ok) if ok else float("nan")
    print(f"{key[0]:<12} {key[1]:<10} {key[2]:<22} {med:>13.1f} {' '.join(f'{x:.0f}' for x in v):>40}")
print(f"\nperplexity, WikiText2 test (first {chars} characters), {seqlen}-token windows")
print(f"{'model':<12} {'engine':<10} {'variant':<22} {'ppl':>10} {'windows':>8}")
for r in rows:
    if "ppl" in r:
        print(f"{r['model']:<12} {r['engine']:<10} {r['variant']:<22} {float(r['ppl']):>10.4f} {r['windows']:>8}")
EOF
