// One packed linear on the GPU, whatever its layout: the W4A16 tiles (w4a16.cuh: int codes of up
// to 4 bits, act_order and odd group sizes included) or the low-bit GEMV layout (gemv_lowbit.cuh:
// 2-, 3- and 8-bit int codes, 4-bit codebook codes such as NF4). CudaModel holds its packed
// linears as this one type and runs them through packed_linear, which picks the layout's kernels.
#pragma once

#include "backend/cuda/gemv_lowbit.cuh"
#include "backend/cuda/w4a16.cuh"

#include <variant>

namespace lowbit::cuda {

struct PackedWeight {
  std::variant<W4A16Weight, GemvWeight> w;

  int64_t n() const;
  int64_t k() const;
  // "w4a16" or "gemv-int2" / "gemv-int3" / "gemv-int4" / "gemv-int8" / "gemv-codebook4".
  std::string layout() const;
  // Device bytes of codes and scales.
  size_t bytes() const;
};

// C [M, N] (row stride ldc, 0: N) = A [M, K] (row stride lda, 0: K) . W^T with the layout's
// Auto kernel choice.
void packed_linear(const PackedWeight& w, const bf16* A, bf16* C, int64_t M, W4A16Workspace& ws, cudaStream_t s,
                   int64_t lda = 0, int64_t ldc = 0);
// C [M, N] (fp32) += A . W^T.
void packed_linear_accumulate(const PackedWeight& w, const bf16* A, float* C, int64_t M, W4A16Workspace& ws,
                              cudaStream_t s, int64_t lda = 0, int64_t ldc = 0);

}  // namespace lowbit::cuda
