// GPTQ's per-linear solve on the GPU: the same algorithm as gptq.h (same grids, same column
// order, damping and dead-input handling), with the inverse factor by cuSOLVER (fp64), the column
// blocks by a kernel (one thread per row) and the lazy batch updates by cuBLAS SGEMM. GPTQ's
// quantize_block calls it through gptq_quantize_on when its BlockContext lives on a GPU (the GPU
// block driver, block_driver_cuda.h, gathers the Hessians there).
#pragma once

#include "backend/cuda/ops.cuh"
#include "quant/gptq.h"

#include <functional>

namespace lowbit {

// Quantizes W (bf16, device, [rows, cols]) with H = h_scale * h_sum (fp32 sums, device) and
// writes the dequantized weight (bf16) into out (device, may alias W; null: not written).
GptqResult gptq_quantize_cuda(cuda::Context& ctx, const cuda::bf16* W, const float* h_sum, double h_scale,
                              int64_t rows, int64_t cols, const GptqOptions& opt, DType dtype, cuda::bf16* out);

// The column loop of GPTQ's and PB-LLM's GPU solves: for each batch of at most B columns,
// block(i1, count) quantizes columns i1 .. i1 + count - 1 and writes their scaled errors into err
// ([rows, count]), then cuBLAS SGEMM makes the lazy batch update of the later columns,
// W[:, i1 + count:] -= err . hinv[i1:i1 + count, i1 + count:] (W [rows, cols], hinv the
// row-major upper inverse factor [cols, cols]).
void column_batches_cuda(cuda::Context& ctx, const float* hinv, float* W, const float* err, int64_t rows,
                         int64_t cols, int64_t B, const std::function<void(int64_t i1, int64_t count)>& block);

// Cholesky factor of the column-major symmetric A [n, n] (fp64, device) in place by cuSOLVER,
// the lower (lower) or upper triangle written, the other left as it was; false when A is not
// positive definite.
bool potrf_cuda(cuda::Context& ctx, double* A, int64_t n, bool lower);

// obs_hinv (obs_hinv.h) on the GPU from a device Hessian H = h_scale * h_sum (fp32 sums [cols,
// cols]): the same dead inputs, damping and retries, cuSOLVER in fp64; the factor stays on the
// device (row-major upper; what lies below its diagonal is undefined).
struct DeviceObsHinv {
  cuda::DeviceBuffer<float> u;  // [cols, cols]
  std::vector<uint8_t> dead;    // [cols]
  int64_t dead_columns = 0;
  double damp = 0;
};
DeviceObsHinv obs_hinv_cuda(cuda::Context& ctx, const float* h_sum, double h_scale, int64_t cols, double damp);

}  // namespace lowbit
