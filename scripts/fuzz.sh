#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for a fixed time on a
# copy of its seed corpus. Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30)
set -euo pipefail
SECS="${1:-30}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="$ROOT/build-fuzz"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DLOWBIT_FUZZ=ON -DLOWBIT_TESTS=OFF -DLOWBIT_BENCH=OFF -DLOWBIT_NATIVE=OFF >/dev/null
cmake --build "$BUILD" --target fuzz_safetensors fuzz_tokenizer_json fuzz_gguf
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
total=0
for t in safetensors tokenizer_json gguf; do
  mkdir -p "$WORK/$t"
  cp "$ROOT/fuzz/corpus/$t/"* "$WORK/$t/"
  log="$WORK/$t.log"
  if ! "$BUILD/fuzz/fuzz_$t" "$WORK/$t" -max_total_time="$SECS" -print_final_stats=1 -artifact_prefix="$WORK/" \
       >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz_$t: FAILED (crash input saved under $WORK, copied to $ROOT/build-fuzz/)"
    cp "$WORK"/crash-* "$WORK"/leak-* "$WORK"/timeout-* "$WORK"/oom-* "$BUILD/" 2>/dev/null || true
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
  echo "fuzz_$t: $runs executions in ${SECS}s, no crash"
  total=$((total + runs))
done
echo "fuzz: $total executions in total, no crash"
