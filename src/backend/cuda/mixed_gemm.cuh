// The products of training on the GPU in the faster precisions of train/compute_precision.h: the
// tf32 and bf16 twins of ops_backward.cuh's linear_f32 / linear_backward_f32, same shapes and
// conventions (row-major, "=" overwrites, "+=" adds).
//
//   *_tf32  fp32 operands and output; cublasGemmEx with CUBLAS_COMPUTE_32F_FAST_TF32, chosen per
//           call, so the cuBLAS handle's math mode (the default: no TF32) is never changed and
//           every other product on the handle (evaluation, quantization, the fp32 training mode)
//           stays exact fp32.
//   *_bf16  bf16 operands (uint16_t bit patterns, core/dtype.h's bf16), fp32 output;
//           cublasGemmEx with CUDA_R_16BF inputs, CUDA_R_32F output and CUBLAS_COMPUTE_32F (fp32
//           accumulation). "+=" accumulates into the fp32 output (beta = 1).
//
// Every launcher takes device pointers and sizes, runs on the context's stream, and checks its
// call.
#pragma once

#include "backend/cuda/cuda_util.h"

#include <cstdint>

namespace lowbit::cuda {

// y [rows, out] = alpha * x [rows, in] @ w [out, in]^T (+ y when accumulate).
void linear_tf32(const Context& ctx, const float* x, const float* w, float* y, int64_t rows, int64_t in, int64_t out,
                 float alpha = 1.0f, bool accumulate = false);
// dx [rows, in] = alpha * dy @ w (+= when accumulate_dx; skipped when dx is null);
// dw [out, in] += alpha * dy^T @ x (skipped when dw is null).
void linear_backward_tf32(const Context& ctx, const float* x, const float* w, const float* dy, float* dx, float* dw,
                          int64_t rows, int64_t in, int64_t out, bool accumulate_dx, float alpha = 1.0f);

// The same with bf16 operands x [rows, in], w [out, in], dy [rows, out] and fp32 y, dx, dw.
void linear_bf16(const Context& ctx, const uint16_t* x, const uint16_t* w, float* y, int64_t rows, int64_t in,
                 int64_t out, float alpha = 1.0f, bool accumulate = false);
void linear_backward_bf16(const Context& ctx, const uint16_t* x, const uint16_t* w, const uint16_t* dy, float* dx,
                          float* dw, int64_t rows, int64_t in, int64_t out, bool accumulate_dx, float alpha = 1.0f);

// y [n] = x rounded to bf16 (to nearest even; NaN stays NaN, overflow gives infinity).
void to_bf16(const float* x, uint16_t* y, int64_t n, cudaStream_t s);
// y [n] = x widened to fp32 (exact).
void from_bf16(const uint16_t* x, float* y, int64_t n, cudaStream_t s);

}  // namespace lowbit::cuda
