#!/usr/bin/env bash
# The W4A16 kernels on a GPU: first correctness (the staged kernel's CPU emulation, then
# test_cuda's CudaW4A16.* and CudaModelPacked.*: every kernel against the CPU reference, the
# packed model against its fake-quant forward), then bench_w4a16's side-by-side table (mma,
# staged, dequant + cuBLAS and Auto against cuBLAS bf16) at M = 1..256 with the LM head, and,
# with SWEEP=1, the staged kernel at forced row blocks and K splits (the numbers that calibrate
# src/backend/cuda/w4a16_staged_plan.h). Outputs go to OUT_DIR.
#
#   bench/gpu/w4a16.sh BUILD_DIR OUT_DIR [PEAK_GBS]     (PEAK_GBS: 3350 for an H100 SXM, 4800 H200)
set -euo pipefail
B=$1 OUT=$2 PEAK=${3:-3350}
mkdir -p "$OUT"
"$B/tests/test_w4a16_staged_layout" 2>&1 | tee "$OUT/staged_layout.txt"
"$B/tests/test_cuda" --gtest_filter='CudaW4A16.*:CudaModelPacked.*' 2>&1 | tee "$OUT/test_cuda_w4a16.txt"
"$B/bench/bench_w4a16" --m 1,4,16,32,64,128,256 --lm-head --peak-gbs "$PEAK" 2>&1 | tee "$OUT/bench_w4a16.md"
if [[ "${SWEEP:-0}" == 1 ]]; then
  for rows in 64 128; do
    for splits in 1 2 4 8; do
      "$B/bench/bench_w4a16" --m 64,128,256 --kernels staged --rows "$rows" --splits "$splits" --samples 21 \
        --peak-gbs "$PEAK" 2>&1 | tee "$OUT/staged_rows${rows}_splits${splits}.md"
    done
  done
fi
