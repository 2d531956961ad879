#include "backend/cuda/adamw.cuh"

#include "backend/cuda/block_reduce.cuh"

namespace lowbit::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ grad, float* __restrict__ m,
                             float* __restrict__ v, int64_t n, AdamWStepF32 c) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = __fmul_rn(grad[i], c.grad_scale);
    const float pi = __fmul_rn(p[i], c.decay);
    const float mi = __fadd_rn(m[i], __fmul_rn(__fsub_rn(g, m[i]), c.one_minus_b1));
    const float vi = __fadd_rn(__fmul_rn(v[i], c.b2), __fmul_rn(__fmul_rn(c.one_minus_b2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c.bc2_sqrt), c.eps);
    p[i] = __fsub_rn(pi, __fmul_rn(c.step_size, __fdiv_rn(mi, denom)));
    m[i] = mi;
    v[i] = vi;
  }
}

__global__ void sum_squares_kernel(const float* __restrict__ x, int64_t n, double* __restrict__ partial) {
  __shared__ double shared[kThreads];
  double s = 0;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads)
    s += double(x[i]) * double(x[i]);
  s = block_tree_sum<kThreads>(s, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_f64_kernel(const double* __restrict__ x, int64_t n, double* __restrict__ out) {
  __shared__ double shared[kThreads];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) s += x[i];
  s = block_tree_sum<kThreads>(s, shared);
  if (threadIdx.x == 0) *out = s;
}

}  // namespace

void adamw_update_f32(float* p, const float* grad, float* m, float* v, int64_t n, const AdamWStepF32& c,
                      cudaStream_t s) {
  if (n == 0) return;
  adamw_kernel<<<grid_stride_blocks(n, kThreads), kThreads, 0, s>>>(p, grad, m, v, n, c);
  LB_CUDA_LAUNCH_CHECK();
}

void sum_squares_f64(const float* x, int64_t n, double* partial, cudaStream_t s) {
  sum_squares_kernel<<<kSquareSumBlocks, kThreads, 0, s>>>(x, n, partial);
  LB_CUDA_LAUNCH_CHECK();
}

void sum_f64(const double* x, int64_t n, double* out, cudaStream_t s) {
  sum_f64_kernel<<<1, kThreads, 0, s>>>(x, n, out);
  LB_CUDA_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
