// GPTQ's per-linear solve on the GPU: the same algorithm as gptq.h (same grids, same column
// order, damping and dead-input handling), with the inverse factor by cuSOLVER (fp64), the column
// blocks by a kernel (one thread per row) and the lazy batch updates by cuBLAS SGEMM. GPTQ's
// quantize_block calls it through gptq_quantize_on when its BlockContext lives on a GPU (the GPU
// block driver, block_driver_cuda.h, gathers the Hessians there).
#pragma once

#include "backend/cuda/ops.cuh"
#include "quant/gptq.h"

namespace lowbit {

// Quantizes W (bf16, device, [rows, cols]) with H = h_scale * h_sum (fp32 sums, device) and
// writes the dequantized weight (bf16) into out (device, may alias W).
GptqResult gptq_quantize_cuda(cuda::Context& ctx, const cuda::bf16* W, const float* h_sum, double h_scale,
                              int64_t rows, int64_t cols, const GptqOptions& opt, DType dtype, cuda::bf16* out);

}  // namespace lowbit
