#include "backend/cuda/mixed_gemm.cuh"

#include "backend/cuda/block_reduce.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <climits>

namespace lowbit::cuda {

namespace {

constexpr int kThreads = 256;

void check_int(int64_t v, const char* what) {
  if (v < 0 || v > INT32_MAX) throw_error(std::string("CUDA training product: ") + what + " out of cuBLAS's range");
}

// Column-major C [m, n] = alpha op(A) op(B) + beta C with fp32 C. Row-major y = x w^T is,
// column-major, y^T = w^T x^T (see ops_backward.cu's linear_f32 for the three products).
void gemm(const Context& ctx, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
          float alpha, const void* a, int64_t lda, const void* b, int64_t ldb, float beta, float* c, int64_t ldc,
          cudaDataType_t ab_type, cublasComputeType_t compute) {
  LB_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), ta, tb, int(m), int(n), int(k), &alpha, a, ab_type, int(lda), b, ab_type,
                               int(ldb), &beta, c, CUDA_R_32F, int(ldc), compute, CUBLAS_GEMM_DEFAULT));
}

void forward(const Context& ctx, const void* x, const void* w, float* y, int64_t rows, int64_t in, int64_t out,
             float alpha, bool accumulate, cudaDataType_t t, cublasComputeType_t compute) {
  check_int(rows * std::max(in, out), "rows x features");
  if (rows == 0 || out == 0) return;
  gemm(ctx, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, alpha, w, in, x, in, accumulate ? 1.0f : 0.0f, y, out, t,
       compute);
}

void backward(const Context& ctx, const void* x, const void* w, const void* dy, float* dx, float* dw, int64_t rows,
              int64_t in, int64_t out, bool accumulate_dx, float alpha, cudaDataType_t t,
              cublasComputeType_t compute) {
  check_int(rows * std::max(in, out), "rows x features");
  if (rows == 0) return;
  // dx^T [in, rows] = w^T [in, out] dy^T [out, rows].
  if (dx != nullptr)
    gemm(ctx, CUBLAS_OP_N, CUBLAS_OP_N, in, rows, out, alpha, w, in, dy, out, accumulate_dx ? 1.0f : 0.0f, dx, in, t,
         compute);
  // dw^T [in, out] += x^T [in, rows] (dy^T [out, rows])^T.
  if (dw != nullptr) gemm(ctx, CUBLAS_OP_N, CUBLAS_OP_T, in, out, rows, alpha, x, in, dy, out, 1.0f, dw, in, t, compute);
}

__global__ void to_bf16_kernel(const float* __restrict__ x, uint16_t* __restrict__ y, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
}

__global__ void from_bf16_kernel(const uint16_t* __restrict__ x, float* __restrict__ y, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __uint_as_float(uint32_t(x[i]) << 16);
}

}  // namespace

void linear_tf32(const Context& ctx, const float* x, const float* w, float* y, int64_t rows, int64_t in, int64_t out,
                 float alpha, bool accumulate) {
  forward(ctx, x, w, y, rows, in, out, alpha, accumulate, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32);
}

void linear_backward_tf32(const Context& ctx, const float* x, const float* w, const float* dy, float* dx, float* dw,
                          int64_t rows, int64_t in, int64_t out, bool accumulate_dx, float alpha) {
  backward(ctx, x, w, dy, dx, dw, rows, in, out, accumulate_dx, alpha, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32);
}

void linear_bf16(const Context& ctx, const uint16_t* x, const uint16_t* w, float* y, int64_t rows, int64_t in,
                 int64_t out, float alpha, bool accumulate) {
  forward(ctx, x, w, y, rows, in, out, alpha, accumulate, CUDA_R_16BF, CUBLAS_COMPUTE_32F);
}

void linear_backward_bf16(const Context& ctx, const uint16_t* x, const uint16_t* w, const uint16_t* dy, float* dx,
                          float* dw, int64_t rows, int64_t in, int64_t out, bool accumulate_dx, float alpha) {
  backward(ctx, x, w, dy, dx, dw, rows, in, out, accumulate_dx, alpha, CUDA_R_16BF, CUBLAS_COMPUTE_32F);
}

void to_bf16(const float* x, uint16_t* y, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  to_bf16_kernel<<<grid_stride_blocks(n, kThreads), kThreads, 0, s>>>(x, y, n);
  LB_CUDA_LAUNCH_CHECK();
}

void from_bf16(const uint16_t* x, float* y, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  from_bf16_kernel<<<grid_stride_blocks(n, kThreads), kThreads, 0, s>>>(x, y, n);
  LB_CUDA_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
