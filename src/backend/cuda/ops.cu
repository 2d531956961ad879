#include "backend/cuda/ops.cuh"

#include <cfloat>

namespace lowbit::cuda {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum (or max) over the block; every thread gets the result.
template <bool kMax>
__device__ float block_reduce(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  v = kMax ? warp_max(v) : warp_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float r = threadIdx.x < nwarps ? shared[threadIdx.x] : (kMax ? -FLT_MAX : 0.0f);
  if (warp == 0) r = kMax ? warp_max(r) : warp_sum(r);
  if (threadIdx.x == 0) shared[32] = r;
  __syncthreads();
  return shared[32];
}

__global__ void embed_kernel(const int32_t* ids, const bf16* table, float* out, int64_t n, int64_t H) {
  const int64_t i = blockIdx.x;
  const bf16* row = table + int64_t(ids[i]) * H;
  for (int64_t c = threadIdx.x; c < H; c += blockDim.x) out[i * H + c] = __bfloat162float(row[c]);
}

__global__ void rmsnorm_kernel(const float* x, const bf16* w, bf16* y, int64_t dim, float eps) {
  __shared__ float shared[33];
  const float* xr = x + int64_t(blockIdx.x) * dim;
  bf16* yr = y + int64_t(blockIdx.x) * dim;
  float ss = 0;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) ss += xr[c] * xr[c];
  ss = block_reduce<false>(ss, shared);
  const float inv = rsqrtf(ss / float(dim) + eps);
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) yr[c] = __float2bfloat16(xr[c] * inv * __bfloat162float(w[c]));
}

// h += y, then y_out = rmsnorm(h): the residual add and the next norm in one pass.
__global__ void add_rmsnorm_kernel(float* x, const bf16* r, const bf16* w, bf16* y, int64_t dim, float eps) {
  __shared__ float shared[33];
  float* xr = x + int64_t(blockIdx.x) * dim;
  const bf16* rr = r + int64_t(blockIdx.x) * dim;
  bf16* yr = y + int64_t(blockIdx.x) * dim;
  float ss = 0;
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    const float v = xr[c] + __bfloat162float(rr[c]);
    xr[c] = v;
    ss += v * v;
  }
  ss = block_reduce<false>(ss, shared);
  const float inv = rsqrtf(ss / float(dim) + eps);
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) yr[c] = __float2bfloat16(xr[c] * inv * __bfloat162float(w[c]));
}

__global__ void rope_kernel(bf16* x, int64_t T, int64_t heads, int64_t hd, int64_t ld, const float* cos,
                            const float* sin, int64_t pos0) {
  // grid: (B*T), threads over heads * hd/2
  const int64_t row = blockIdx.x, t = row % T, half = hd / 2;
  bf16* xr = x + row * ld;
  const float* c = cos + (pos0 + t) * half;
  const float* s = sin + (pos0 + t) * half;
  for (int64_t j = threadIdx.x; j < heads * half; j += blockDim.x) {
    const int64_t h = j / half, i = j % half;
    bf16* a = xr + h * hd + i;
    bf16* b = a + half;
    const float av = __bfloat162float(*a), bv = __bfloat162float(*b);
    *a = __float2bfloat16(av * c[i] - bv * s[i]);
    *b = __float2bfloat16(bv * c[i] + av * s[i]);
  }
}

__global__ void swiglu_kernel(const bf16* gate, const bf16* up, bf16* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = __bfloat162float(gate[i]);
    out[i] = __float2bfloat16(g / (1.0f + __expf(-g)) * __bfloat162float(up[i]));
  }
}

// Eight elements per thread through 16-byte loads (n % 8 == 0, 16-byte aligned pointers).
__global__ void swiglu8_kernel(const uint4* gate, const uint4* up, uint4* out, int64_t n8) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    const uint4 gv = gate[i], uv = up[i];
    const bf16* g8 = reinterpret_cast<const bf16*>(&gv);
    const bf16* u8 = reinterpret_cast<const bf16*>(&uv);
    uint4 ov;
    bf16* o8 = reinterpret_cast<bf16*>(&ov);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float g = __bfloat162float(g8[e]);
      o8[e] = __float2bfloat16(g / (1.0f + __expf(-g)) * __bfloat162float(u8[e]));
    }
    out[i] = ov;
  }
}

__global__ void add_residual_kernel(float* h, const bf16* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    h[i] += __bfloat162float(y[i]);
}

__global__ void f32_to_bf16_kernel(const float* x, bf16* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16(x[i]);
}

__global__ void bf16_to_f32_kernel(const bf16* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __bfloat162float(x[i]);
}

__global__ void nll_kernel(const float* logits, const int32_t* targets, float* out, int32_t* argmax, int64_t V) {
  __shared__ float shared[33];
  __shared__ int32_t shared_idx[32];
  const float* l = logits + int64_t(blockIdx.x) * V;
  float mx = -FLT_MAX;
  int32_t arg = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
    if (l[i] > mx) {
      mx = l[i];
      arg = int32_t(i);
    }
  // Block argmax (first index on ties, like torch.argmax on CPU).
  for (int o = 16; o > 0; o >>= 1) {
    const float om = __shfl_xor_sync(0xffffffffu, mx, o);
    const int32_t oa = __shfl_xor_sync(0xffffffffu, arg, o);
    if (om > mx || (om == mx && oa < arg)) {
      mx = om;
      arg = oa;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  if (lane == 0) {
    shared[warp] = mx;
    shared_idx[warp] = arg;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < nwarps; ++w)
      if (shared[w] > shared[0] || (shared[w] == shared[0] && shared_idx[w] < shared_idx[0])) {
        shared[0] = shared[w];
        shared_idx[0] = shared_idx[w];
      }
    shared[32] = shared[0];
  }
  __syncthreads();
  const float m = shared[32];
  const int32_t best = shared_idx[0];
  float sum = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) sum += __expf(l[i] - m);
  sum = block_reduce<false>(sum, shared);
  if (threadIdx.x == 0) {
    out[blockIdx.x] = logf(sum) + m - l[targets[blockIdx.x]];
    if (argmax) argmax[blockIdx.x] = best;
  }
}

unsigned grid_stride_blocks(int64_t n) { return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)); }

}  // namespace

void embed(const int32_t* ids, const bf16* table, float* out, int64_t n, int64_t H, cudaStream_t s) {
  if (n == 0) return;
  embed_kernel<<<unsigned(n), kThreads, 0, s>>>(ids, table, out, n, H);
  LB_CUDA_LAUNCH_CHECK();
}

void rmsnorm(const float* x, const bf16* w, bf16* y, int64_t rows, int64_t dim, float eps, cudaStream_t s) {
  if (rows == 0) return;
  rmsnorm_kernel<<<unsigned(rows), kThreads, 0, s>>>(x, w, y, dim, eps);
  LB_CUDA_LAUNCH_CHECK();
}

void add_rmsnorm(float* h, const bf16* r, const bf16* w, bf16* y, int64_t rows, int64_t dim, float eps,
                 cudaStream_t s) {
  if (rows == 0) return;
  add_rmsnorm_kernel<<<unsigned(rows), kThreads, 0, s>>>(h, r, w, y, dim, eps);
  LB_CUDA_LAUNCH_CHECK();
}

void rope(bf16* x, int64_t B, int64_t T, int64_t heads, int64_t hd, int64_t ld, const float* cos, const float* sin,
          int64_t pos0, cudaStream_t s) {
  if (B * T == 0) return;
  rope_kernel<<<unsigned(B * T), 128, 0, s>>>(x, T, heads, hd, ld, cos, sin, pos0);
  LB_CUDA_LAUNCH_CHECK();
}

void swiglu(const bf16* gate, const bf16* up, bf16* out, int64_t n, cudaStream_t s) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (n % 8 == 0 && aligned(gate) && aligned(up) && aligned(out))
    swiglu8_kernel<<<grid_stride_blocks(n / 8), kThreads, 0, s>>>(reinterpret_cast<const uint4*>(gate),
                                                                  reinterpret_cast<const uint4*>(up),
                                                                  reinterpret_cast<uint4*>(out), n / 8);
  else
    swiglu_kernel<<<grid_stride_blocks(n), kThreads, 0, s>>>(gate, up, out, n);
  LB_CUDA_LAUNCH_CHECK();
}

void add_residual(float* h, const bf16* y, int64_t n, cudaStream_t s) {
  add_residual_kernel<<<grid_stride_blocks(n), kThreads, 0, s>>>(h, y, n);
  LB_CUDA_LAUNCH_CHECK();
}

void f32_to_bf16(const float* x, bf16* y, int64_t n, cudaStream_t s) {
  f32_to_bf16_kernel<<<grid_stride_blocks(n), kThreads, 0, s>>>(x, y, n);
  LB_CUDA_LAUNCH_CHECK();
}

void bf16_to_f32(const bf16* x, float* y, int64_t n, cudaStream_t s) {
  bf16_to_f32_kernel<<<grid_stride_blocks(n), kThreads, 0, s>>>(x, y, n);
  LB_CUDA_LAUNCH_CHECK();
}

void nll_rows(const float* logits, const int32_t* targets, float* out, int32_t* argmax, int64_t rows, int64_t V,
              cudaStream_t s) {
  if (rows == 0) return;
  nll_kernel<<<unsigned(rows), 1024, 0, s>>>(logits, targets, out, argmax, V);
  LB_CUDA_LAUNCH_CHECK();
}

void linear(const Context& ctx, const bf16* A, const bf16* W, bf16* C, int64_t M, int64_t N, int64_t K) {
  const float alpha = 1.0f, beta = 0.0f;
  // Row-major C[M,N] = A[M,K] W[N,K]^T is column-major C^T[N,M] = W^T(op T of col-major W[K,N]) A^T.
  LB_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &alpha, W, CUDA_R_16BF,
                               int(K), A, CUDA_R_16BF, int(K), &beta, C, CUDA_R_16BF, int(N), CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
}

void linear(const Context& ctx, const bf16* A, const bf16* W, float* C, int64_t M, int64_t N, int64_t K) {
  const float alpha = 1.0f, beta = 0.0f;
  LB_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &alpha, W, CUDA_R_16BF,
                               int(K), A, CUDA_R_16BF, int(K), &beta, C, CUDA_R_32F, int(N), CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
}

void gram_accumulate(const Context& ctx, const bf16* X, float* H, int64_t M, int64_t K) {
  const float alpha = 1.0f, beta = 1.0f;
  // Column-major X^T is [K, M]; H = X^T (X^T)^T.
  LB_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, int(K), int(K), int(M), &alpha, X, CUDA_R_16BF,
                               int(K), X, CUDA_R_16BF, int(K), &beta, H, CUDA_R_32F, int(K), CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
}

}  // namespace lowbit::cuda
