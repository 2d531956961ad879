#!/usr/bin/env bash
# The low-bit GEMV kernels (2/3/8-bit int, NF4) on a GPU: first correctness (test_gemv_pack,
# test_gemv_lane and test_gpu_packed_execution on the CPU; test_cuda's GemvLowbit.*, CudaModelPackedGemv.*, and the
# W4A16 tests that share CudaModel's packed linears: every kernel against the CPU product of the
# dequantized weight, the packed models against their fake-quant forward), then an end-to-end
# `lowbit ppl --packed --device cuda` on stories260K quantized to 2, 3 and 8 bits against the same
# checkpoint without --packed, then bench_gemv_lowbit's table against cuBLAS bf16 at M = 1, 4, 16
# on LLaMA-3-8B's shapes and the LM head. Outputs go to OUT_DIR.
#
#   bench/gpu/gemv_lowbit.sh BUILD_DIR OUT_DIR [PEAK_GBS]   (PEAK_GBS: 3350 for an H100 SXM, 4800 H200)
#
# Run from the repository root; models and data are looked up as the tests look them up
# (LOWBIT_TEST_MODELS, LOWBIT_TEST_DATA; here ../shared/models and ../shared/data by default).
set -euo pipefail
B=$1 OUT=$2 PEAK=${3:-3350}
mkdir -p "$OUT"
status=0
# A failing step is reported and the later ones still run; the exit status says whether any failed.
step() {
  local log=$1
  shift
  "$@" 2>&1 | tee "$OUT/$log" || { echo "FAILED: $*" | tee -a "$OUT/failed.txt"; status=1; }
}
step test_gemv_pack.txt "$B/tests/test_gemv_pack"
step test_gemv_lane.txt "$B/tests/test_gemv_lane"
step test_gpu_packed_execution.txt "$B/tests/test_gpu_packed_execution"
step test_cuda_gemv.txt "$B/tests/test_cuda" --gtest_filter='GemvLowbit.*:CudaModelPackedGemv.*:CudaW4A16.*:CudaModelPacked.*'
MODELS=${LOWBIT_TEST_MODELS:-../shared/models} DATA=${LOWBIT_TEST_DATA:-../shared/data}
STORIES=$MODELS/stories260K/stories260K.bin
if [[ -f "$STORIES" ]]; then
  for spec in rtn:w=2,g=32 rtn:w=3,g=32 rtn:w=8,g=64; do
    q="$OUT/stories-${spec//[:=,]/_}"
    step "quantize-${spec//[:=,]/_}.txt" "$B/tools/lowbit/lowbit" quantize --model "$STORIES" --method "$spec" -o "$q"
    for packed in "" --packed; do
      step "ppl-${spec//[:=,]/_}${packed}.json" "$B/tools/lowbit/lowbit" ppl --model "$q" \
        --dataset "$DATA/ptb/ptb.valid.txt" --seqlen 128 --limit 8 --device cuda $packed --json
    done
  done
fi
step bench_gemv_lowbit.md "$B/bench/bench_gemv_lowbit" --m 1,4,16 --dequant --peak-gbs "$PEAK"
exit $status
