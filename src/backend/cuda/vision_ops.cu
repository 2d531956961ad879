#include "backend/cuda/vision_ops.cuh"

#include "backend/cuda/block_reduce.cuh"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>

namespace lowbit::cuda {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)); }

// One block per row. Every thread reads only the elements it later writes, after both
// reductions, so y32 may alias x.
__global__ void layernorm_kernel(const float* x, const bf16* w, const bf16* b, float* y32, bf16* y16, int64_t dim,
                                 float eps) {
  __shared__ float shared[33];
  const int64_t r = blockIdx.x;
  const float* xr = x + r * dim;
  float sum = 0;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) sum += xr[c];
  const float mean = block_reduce<false>(sum, shared) / float(dim);
  float sq = 0;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    const float d = xr[c] - mean;
    sq += d * d;
  }
  const float inv = rsqrtf(block_reduce<false>(sq, shared) / float(dim) + eps);
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    const float y = (xr[c] - mean) * inv * __bfloat162float(w[c]) + __bfloat162float(b[c]);
    if (y32 != nullptr) y32[r * dim + c] = y;
    if (y16 != nullptr) y16[r * dim + c] = __float2bfloat16(y);
  }
}

__global__ void bias_act_kernel(const float* x, const bf16* b, bf16* y, int64_t rows, int64_t cols, VisionAct act) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v = x[i] + (b != nullptr ? __bfloat162float(b[i % cols]) : 0.0f);
    if (act == VisionAct::QuickGelu)
      v = v / (1.0f + expf(-1.702f * v));
    else if (act == VisionAct::Gelu)
      v = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    y[i] = __float2bfloat16(v);
  }
}

__global__ void add_bias_kernel(float* y, const bf16* b, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += __bfloat162float(b[i % cols]);
}

// One block per output row n*(P+1) + t.
__global__ void clip_embeddings_kernel(const float* patches, const bf16* cls, const bf16* pos, float* h, int64_t P,
                                       int64_t D) {
  const int64_t row = blockIdx.x, n = row / (P + 1), t = row % (P + 1);
  const float* src = t == 0 ? nullptr : patches + (n * P + t - 1) * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const float e = src != nullptr ? src[d] : __bfloat162float(cls[d]);
    h[row * D + d] = e + __bfloat162float(pos[t * D + d]);
  }
}

// One block per row of cols scores: probabilities in fp32 (max shift), rounded to bf16.
__global__ void softmax_rows_kernel(const float* x, bf16* y, int64_t cols) {
  __shared__ float shared[33];
  const float* xr = x + int64_t(blockIdx.x) * cols;
  bf16* yr = y + int64_t(blockIdx.x) * cols;
  float m = -FLT_MAX;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, xr[c]);
  m = block_reduce<true>(m, shared);
  float sum = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += expf(xr[c] - m);
  const float inv = 1.0f / block_reduce<false>(sum, shared);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = __float2bfloat16(expf(xr[c] - m) * inv);
}

}  // namespace

void layernorm(const float* x, const bf16* w, const bf16* b, float* y32, bf16* y16, int64_t rows, int64_t dim,
               float eps, cudaStream_t s) {
  if (rows == 0) return;
  layernorm_kernel<<<unsigned(rows), kThreads, 0, s>>>(x, w, b, y32, y16, dim, eps);
  LB_CUDA_LAUNCH_CHECK();
}

void bias_act(const float* x, const bf16* b, bf16* y, int64_t rows, int64_t cols, VisionAct act, cudaStream_t s) {
  if (rows * cols == 0) return;
  bias_act_kernel<<<blocks_for(rows * cols), kThreads, 0, s>>>(x, b, y, rows, cols, act);
  LB_CUDA_LAUNCH_CHECK();
}

void add_bias(float* y, const bf16* b, int64_t rows, int64_t cols, cudaStream_t s) {
  if (rows * cols == 0) return;
  add_bias_kernel<<<blocks_for(rows * cols), kThreads, 0, s>>>(y, b, rows, cols);
  LB_CUDA_LAUNCH_CHECK();
}

void clip_embeddings(const float* patches, const bf16* cls, const bf16* pos, float* h, int64_t N, int64_t P, int64_t D,
                     cudaStream_t s) {
  if (N == 0) return;
  clip_embeddings_kernel<<<unsigned(N * (P + 1)), kThreads, 0, s>>>(patches, cls, pos, h, P, D);
  LB_CUDA_LAUNCH_CHECK();
}

void attention_bidirectional(const Context& ctx, const bf16* q, const bf16* k, const bf16* v, bf16* out, int64_t S,
                             int64_t T, int64_t nh, int64_t hd, int64_t ldq, int64_t ldk, int64_t ldo,
                             BidirectionalAttentionWorkspace& ws) {
  if (S * T == 0) return;
  ws.scores.resize(size_t(nh * T * T));
  ws.probs.resize(size_t(nh * T * T));
  const float scale = float(1.0 / std::sqrt(double(hd))), one = 1.0f, zero = 0.0f;
  for (int64_t n = 0; n < S; ++n) {
    const bf16* qn = q + n * T * ldq;
    const bf16* kn = k + n * T * ldk;
    const bf16* vn = v + n * T * ldk;
    bf16* on = out + n * T * ldo;
    // Row-major scores [T queries, T keys] per head are column-major [T keys, T queries]:
    // K Q^T, with K and Q read as the column-major [hd, T] matrices their rows are.
    LB_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(T), int(T), int(hd), &scale, kn, CUDA_R_16BF, int(ldk),
        (long long)hd, qn, CUDA_R_16BF, int(ldq), (long long)hd, &zero, ws.scores.get(), CUDA_R_32F, int(T),
        (long long)(T * T), int(nh), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    softmax_rows_kernel<<<unsigned(nh * T), kThreads, 0, ctx.stream()>>>(ws.scores.get(), ws.probs.get(), T);
    LB_CUDA_LAUNCH_CHECK();
    // Row-major out [T, hd] of a head is column-major [hd, T] = V^T P^T.
    LB_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, int(hd), int(T), int(T), &one, vn, CUDA_R_16BF, int(ldk),
        (long long)hd, ws.probs.get(), CUDA_R_16BF, int(T), (long long)(T * T), &zero, on, CUDA_R_16BF, int(ldo),
        (long long)hd, int(nh), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace lowbit::cuda
