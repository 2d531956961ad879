// AdamW and the global gradient norm on the GPU: the device twins of train/optimizer.h's
// adamw_update and clip_grad_norm, for training with the adapters and AdamW's moments resident on
// the device (train/llama_backward_cuda.h).
//
// adamw_update_f32 computes, per element, exactly the CPU's fp32 operations in the CPU's order,
// each explicitly rounded (__fmul_rn, __fadd_rn, __fsub_rn, __fdiv_rn, __fsqrt_rn: nvcc would
// otherwise fuse products and sums into FMAs), with the same fp32 coefficients, so a device step
// equals the host's bit for bit where the host compiler does not contract them either (x86-64
// without FMA, as LOWBIT_NATIVE=OFF builds):
//   g  = grad * grad_scale                           (the clipping's multiply; 1 without clipping)
//   p  = p * decay
//   m  = m + (g - m) * one_minus_b1
//   v  = v * b2 + (one_minus_b2 * g) * g
//   p  = p - step_size * (m / (sqrt(v) / bc2_sqrt + eps))
#pragma once

#include "backend/cuda/cuda_util.h"

#include <cstdint>

namespace lowbit::cuda {

// The fp32 coefficients of one AdamW step (train::adamw_coefficients computes them).
struct AdamWStepF32 {
  float grad_scale = 1, decay = 1, one_minus_b1 = 0, b2 = 0, one_minus_b2 = 0, bc2_sqrt = 1, eps = 0, step_size = 0;
};

// One AdamW update of p, m, v [n] from grad [n] (read only).
void adamw_update_f32(float* p, const float* grad, float* m, float* v, int64_t n, const AdamWStepF32& c,
                      cudaStream_t s);

// Blocks of sum_squares_f64's partial sums.
inline constexpr int kSquareSumBlocks = 64;
// partial [kSquareSumBlocks] = the sums of x[i]^2 (fp64) over a fixed split of x [n] (fixed order:
// the same inputs give the same bits).
void sum_squares_f64(const float* x, int64_t n, double* partial, cudaStream_t s);
// *out = the sum of x [n] (fp64, one block, fixed order).
void sum_f64(const double* x, int64_t n, double* out, cudaStream_t s);

}  // namespace lowbit::cuda
