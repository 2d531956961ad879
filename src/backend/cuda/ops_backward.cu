#include "backend/cuda/ops_backward.cuh"

#include "backend/cuda/block_reduce.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <cfloat>
#include <cmath>

namespace lowbit::cuda {

namespace {

constexpr int kThreads = 256;

// Blocks of kThreads threads for a grid-stride loop over n elements.
unsigned grid_for(int64_t n) { return grid_stride_blocks(n, kThreads); }

#define LB_GRID_STRIDE(i, n) for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The bf16 rounding's bit pattern (round to nearest even), mixed_gemm.cuh's to_bf16 of one value.
__device__ __forceinline__ uint16_t bf16_bits(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

// kBf16: also yb = bf16(y), from the very value stored in y (the fused kernels below share the
// unfused kernels' code, so their fp32 outputs are the same bit for bit).
template <bool kBf16>
__global__ void rmsnorm_kernel(const float* x, const float* w, float* y, uint16_t* yb, int64_t dim, float eps) {
  __shared__ double shared[kThreads];
  const float* xr = x + int64_t(blockIdx.x) * dim;
  float* yr = y + int64_t(blockIdx.x) * dim;
  double ss = 0;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) ss += double(xr[i]) * xr[i];
  ss = block_tree_sum<kThreads>(ss, shared);
  const float inv = 1.0f / sqrtf(float(ss) / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    const float v = (xr[i] * inv) * w[i];
    yr[i] = v;
    if constexpr (kBf16) yb[int64_t(blockIdx.x) * dim + i] = bf16_bits(v);
  }
}

// kAdd: dx += the gradient (the residual stream's add, fused), else dx = it.
template <bool kAdd>
__global__ void rmsnorm_backward_kernel(const float* x, const float* w, const float* dy, float* dx, int64_t dim,
                                        float eps) {
  // y_i = x_i r w_i, r = (mean(x^2) + eps)^(-1/2):  dx_i = r w_i dy_i - x_i r^3 / dim sum_j w_j dy_j x_j.
  __shared__ double shared[kThreads];
  const int64_t off = int64_t(blockIdx.x) * dim;
  double ss = 0, dot = 0;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    ss += double(x[off + i]) * x[off + i];
    dot += double(w[i]) * dy[off + i] * x[off + i];
  }
  ss = block_tree_sum<kThreads>(ss, shared);
  dot = block_tree_sum<kThreads>(dot, shared);
  const double inv = 1.0 / sqrt(ss / double(dim) + eps);
  const double c = dot * inv * inv * inv / double(dim);
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    const float g = float(inv * w[i] * dy[off + i] - x[off + i] * c);
    if constexpr (kAdd) {
      dx[off + i] += g;  // add_kernel's fp32 sum of the same two values
    } else {
      dx[off + i] = g;
    }
  }
}

__global__ void rope_kernel(float* x, int64_t rows, int64_t T, int64_t heads, int64_t half, int64_t ld,
                            const float* cos, const float* sin, bool inverse) {
  LB_GRID_STRIDE(idx, rows * heads * half) {
    const int64_t i = idx % half, h = (idx / half) % heads, r = idx / (half * heads);
    const float c = cos[(r % T) * half + i], s = sin[(r % T) * half + i];
    float* a = x + r * ld + h * 2 * half + i;
    float* b = a + half;
    const float av = *a, bv = *b;
    if (inverse) {
      *a = av * c + bv * s;
      *b = bv * c - av * s;
    } else {
      *a = av * c - bv * s;
      *b = bv * c + av * s;
    }
  }
}

// out[h, i, j] = scale * a_i,h . b_j,g for j <= i (g = h / group), 0 above the diagonal: the
// scores (a = q, b = k, the softmax scale) and the probabilities' gradient (a = dout, b = v,
// scale 1).
__global__ void causal_head_dots_kernel(const float* a, const float* b, float* out, int64_t T, int64_t nh,
                                        int64_t nkv, int64_t hd, float scale) {
  const int64_t group = nh / nkv;
  LB_GRID_STRIDE(idx, nh * T * T) {
    const int64_t j = idx % T, i = (idx / T) % T, h = idx / (T * T);
    if (j > i) {
      out[idx] = 0.0f;
      continue;
    }
    const float* ai = a + i * nh * hd + h * hd;
    const float* bj = b + j * nkv * hd + (h / group) * hd;
    float acc = 0;
    for (int64_t d = 0; d < hd; ++d) acc += ai[d] * bj[d];
    out[idx] = scale * acc;
  }
}

// In place, one block per row (h, i): the causal softmax over j <= i; zeros above the diagonal.
__global__ void attention_softmax_kernel(float* p, int64_t T) {
  __shared__ float shared[kThreads];
  __shared__ double dshared[kThreads];
  const int64_t row = blockIdx.x, i = row % T;
  float* pr = p + row * T;
  float mx = -FLT_MAX;
  for (int64_t j = threadIdx.x; j <= i; j += kThreads) mx = fmaxf(mx, pr[j]);
  mx = block_tree_max<kThreads>(mx, shared);
  double sum = 0;
  for (int64_t j = threadIdx.x; j <= i; j += kThreads) sum += double(expf(pr[j] - mx));
  sum = block_tree_sum<kThreads>(sum, dshared);
  const float inv = float(1.0 / sum);
  for (int64_t j = threadIdx.x; j < T; j += kThreads) pr[j] = j <= i ? expf(pr[j] - mx) * inv : 0.0f;
}

// out[i, h*hd + d] = sum_{j <= i} p[h, i, j] v[j, g*hd + d].
__global__ void attention_out_kernel(const float* p, const float* v, float* out, int64_t T, int64_t nh, int64_t nkv,
                                     int64_t hd) {
  const int64_t group = nh / nkv;
  LB_GRID_STRIDE(idx, T * nh * hd) {
    const int64_t d = idx % hd, h = (idx / hd) % nh, i = idx / (hd * nh);
    const float* pr = p + (h * T + i) * T;
    const float* vc = v + (h / group) * hd + d;
    float acc = 0;
    for (int64_t j = 0; j <= i; ++j) acc += pr[j] * vc[j * nkv * hd];
    out[idx] = acc;
  }
}

// In place, one block per row: ds = p * (dp - sum_j p_j dp_j) (the softmax's backward).
__global__ void attention_dscores_kernel(const float* p, float* dp, int64_t T) {
  __shared__ double shared[kThreads];
  const int64_t row = blockIdx.x, i = row % T;
  const float* pr = p + row * T;
  float* dr = dp + row * T;
  double dot = 0;
  for (int64_t j = threadIdx.x; j <= i; j += kThreads) dot += double(pr[j]) * dr[j];
  const float d = float(block_tree_sum<kThreads>(dot, shared));
  for (int64_t j = threadIdx.x; j < T; j += kThreads) dr[j] = j <= i ? pr[j] * (dr[j] - d) : 0.0f;
}

// dq[i, h*hd + d] = scale * sum_{j <= i} ds[h, i, j] k[j, g*hd + d].
__global__ void attention_dq_kernel(const float* ds, const float* k, float* dq, int64_t T, int64_t nh, int64_t nkv,
                                    int64_t hd, float scale) {
  const int64_t group = nh / nkv;
  LB_GRID_STRIDE(idx, T * nh * hd) {
    const int64_t d = idx % hd, h = (idx / hd) % nh, i = idx / (hd * nh);
    const float* dr = ds + (h * T + i) * T;
    const float* kc = k + (h / group) * hd + d;
    float acc = 0;
    for (int64_t j = 0; j <= i; ++j) acc += dr[j] * kc[j * nkv * hd];
    dq[idx] = scale * acc;
  }
}

// For key/value head g at position j, over the group's heads h and the queries i >= j:
//   dk[j, g*hd + d] = scale * sum ds[h, i, j] q[i, h*hd + d],  dv[j, g*hd + d] = sum p[h, i, j] dout[i, h*hd + d].
__global__ void attention_dkv_kernel(const float* p, const float* ds, const float* q, const float* dout, float* dk,
                                     float* dv, int64_t T, int64_t nh, int64_t nkv, int64_t hd, float scale) {
  const int64_t group = nh / nkv;
  LB_GRID_STRIDE(idx, T * nkv * hd) {
    const int64_t d = idx % hd, g = (idx / hd) % nkv, j = idx / (hd * nkv);
    float ak = 0, av = 0;
    for (int64_t h = g * group; h < (g + 1) * group; ++h)
      for (int64_t i = j; i < T; ++i) {
        const int64_t at = (h * T + i) * T + j;
        ak += ds[at] * q[i * nh * hd + h * hd + d];
        av += p[at] * dout[i * nh * hd + h * hd + d];
      }
    dk[idx] = scale * ak;
    dv[idx] = av;
  }
}

template <bool kBf16>
__global__ void swiglu_kernel(const float* gate, const float* up, float* out, uint16_t* outb, int64_t n) {
  LB_GRID_STRIDE(i, n) {
    const float g = gate[i];
    const float v = g / (1.0f + expf(-g)) * up[i];
    out[i] = v;
    if constexpr (kBf16) outb[i] = bf16_bits(v);
  }
}

template <bool kBf16>
__global__ void swiglu_backward_kernel(const float* gate, const float* up, const float* dout, float* dgate, float* dup,
                                       uint16_t* dgateb, uint16_t* dupb, int64_t n) {
  LB_GRID_STRIDE(i, n) {
    // silu(g) = g s(g); silu'(g) = s(g) (1 + g (1 - s(g))).
    const float g = gate[i], u = up[i], d = dout[i];
    const float s = 1.0f / (1.0f + expf(-g));
    const float dg = d * u * s * (1.0f + g * (1.0f - s));
    const float du = d * g * s;
    dgate[i] = dg;
    dup[i] = du;
    if constexpr (kBf16) {
      dgateb[i] = bf16_bits(dg);
      dupb[i] = bf16_bits(du);
    }
  }
}

// One block per row.
// kBf16: the gradient written as its bf16 rounding into dlogits16 (dlogits unused), from the
// very fp32 value the fp32 kernel stores.
template <bool kBf16>
__global__ void cross_entropy_kernel(const float* logits, const int32_t* targets, float* dlogits, uint16_t* dlogits16,
                                     double* loss, int64_t V, float scale) {
  __shared__ float shared[kThreads];
  __shared__ double dshared[kThreads];
  const int64_t r = blockIdx.x;
  const float* l = logits + r * V;
  float* d = kBf16 ? nullptr : dlogits + r * V;
  uint16_t* d16 = kBf16 ? dlogits16 + r * V : nullptr;
  const int32_t tgt = targets[r];
  if (tgt < 0) {
    for (int64_t i = threadIdx.x; i < V; i += kThreads) {
      if constexpr (kBf16) {
        d16[i] = bf16_bits(0.0f);
      } else {
        d[i] = 0.0f;
      }
    }
    if (threadIdx.x == 0) loss[r] = 0.0;
    return;
  }
  float mx = -FLT_MAX;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) mx = fmaxf(mx, l[i]);
  mx = block_tree_max<kThreads>(mx, shared);
  double sum = 0;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) sum += exp(double(l[i] - mx));
  sum = block_tree_sum<kThreads>(sum, dshared);
  const double lse = log(sum) + double(mx);
  const double lt = double(l[tgt]);
  // Every thread has read l[tgt] before any writes it (dlogits may alias logits).
  __syncthreads();
  if (threadIdx.x == 0) loss[r] = lse - lt;
  for (int64_t i = threadIdx.x; i < V; i += kThreads) {
    const float p = float(exp(double(l[i]) - lse)) * scale;
    const float g = i == tgt ? p - scale : p;
    if constexpr (kBf16) {
      d16[i] = bf16_bits(g);
    } else {
      d[i] = g;
    }
  }
}

__global__ void dropout_kernel(const float* x, float* y, int64_t n, uint64_t stream, double p, float keep,
                               bool accumulate) {
  LB_GRID_STRIDE(i, n) {
    const uint64_t h = splitmix64(stream ^ uint64_t(i) * 0x2545f4914f6cdd1dull);
    const double u = double(h >> 11) * 0x1.0p-53;
    const float k = u < p ? 0.0f : keep;
    if (accumulate)
      y[i] += x[i] * k;
    else
      y[i] = x[i] * k;
  }
}

__global__ void group_mean_add_kernel(const float* x, float* h, int64_t rows, int64_t in, int64_t r, float coef) {
  const int64_t gi = in / r;
  LB_GRID_STRIDE(idx, rows * r) {
    const int64_t k = idx % r, t = idx / r;
    float sum = 0.0f;
    for (int64_t i = k * gi; i < (k + 1) * gi; ++i) sum += x[t * in + i];
    h[idx] += coef * (sum / float(gi));
  }
}

__global__ void repeat_add_kernel(const float* h, float* y, int64_t rows, int64_t out, int64_t r, float coef) {
  const int64_t go = out / r;
  LB_GRID_STRIDE(idx, rows * out) {
    const int64_t o = idx % out, t = idx / out;
    y[idx] += coef * h[t * r + o / go];
  }
}

__global__ void group_mean_backward_kernel(const float* dh, float* dx, int64_t rows, int64_t in, int64_t r,
                                           float coef) {
  const int64_t gi = in / r;
  LB_GRID_STRIDE(idx, rows * in) {
    const int64_t i = idx % in, t = idx / in;
    dx[idx] += coef * dh[t * r + i / gi] / float(gi);
  }
}

__global__ void chunk_sum_backward_kernel(const float* dy, const float* h, float* dh, double* partial, int64_t rows,
                                          int64_t out, int64_t r, float scale, float coef) {
  const int64_t go = out / r;
  LB_GRID_STRIDE(idx, rows * r) {
    const int64_t k = idx % r, t = idx / r;
    double c = 0;
    for (int64_t j = k * go; j < (k + 1) * go; ++j) c += double(scale * dy[t * out + j]);
    partial[idx] = c * double(h[idx]);
    dh[idx] += float(double(coef) * c);
  }
}

__global__ void group_dot_kernel(const float* x, const float* dh, double* partial, int64_t rows, int64_t in,
                                 int64_t r) {
  const int64_t gi = in / r;
  LB_GRID_STRIDE(idx, rows * r) {
    const int64_t k = idx % r, t = idx / r;
    double sum = 0;
    for (int64_t i = k * gi; i < (k + 1) * gi; ++i) sum += double(x[t * in + i]);
    partial[idx] = double(dh[idx]) * (sum / double(gi));
  }
}

// One block.
__global__ void sum_into_kernel(const double* partial, int64_t n, float* out) {
  __shared__ double shared[kThreads];
  double v = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) v += partial[i];
  v = block_tree_sum<kThreads>(v, shared);
  if (threadIdx.x == 0) out[0] += float(v);
}

__global__ void add_kernel(float* y, const float* x, int64_t n) {
  LB_GRID_STRIDE(i, n) y[i] += x[i];
}

__global__ void sum_kernel(const float* a, const float* b, float* out, int64_t n) {
  LB_GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

void check_int(int64_t v, const char* what) {
  if (v < 0 || v > INT32_MAX) throw_error(std::string("CUDA training op: ") + what + " out of cuBLAS's range");
}

}  // namespace

// Row-major y [rows, out] = x [rows, in] w [out, in]^T is, column-major, y^T = w^T x^T: cuBLAS
// sees w as an [in, out] matrix (ld in) taken transposed and x as [in, rows] (ld in).
void linear_f32(const Context& ctx, const float* x, const float* w, float* y, int64_t rows, int64_t in, int64_t out,
                float alpha, bool accumulate) {
  check_int(rows * std::max(in, out), "rows x features");
  const float beta = accumulate ? 1.0f : 0.0f;
  LB_CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(out), int(rows), int(in), &alpha, w, int(in),
                              x, int(in), &beta, y, int(out)));
}

void linear_backward_f32(const Context& ctx, const float* x, const float* w, const float* dy, float* dx, float* dw,
                         int64_t rows, int64_t in, int64_t out, bool accumulate_dx, float alpha) {
  check_int(rows * std::max(in, out), "rows x features");
  if (dx != nullptr) {
    // dx [rows, in] = dy [rows, out] w [out, in]; column-major dx^T [in, rows] = w^T [in, out] dy^T [out, rows].
    const float beta = accumulate_dx ? 1.0f : 0.0f;
    LB_CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, int(in), int(rows), int(out), &alpha, w,
                                int(in), dy, int(out), &beta, dx, int(in)));
  }
  if (dw != nullptr) {
    // dw [out, in] += dy^T x; column-major dw^T [in, out] += x^T [in, rows] (dy^T [out, rows])^T.
    const float one = 1.0f;
    LB_CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, int(in), int(out), int(rows), &alpha, x,
                                int(in), dy, int(out), &one, dw, int(in)));
  }
}

void rmsnorm_f32(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps, cudaStream_t s) {
  if (rows == 0) return;
  rmsnorm_kernel<false><<<unsigned(rows), kThreads, 0, s>>>(x, w, y, nullptr, dim, eps);
  LB_CUDA_LAUNCH_CHECK();
}

void rmsnorm_f32_bf16(const float* x, const float* w, float* y, uint16_t* yb, int64_t rows, int64_t dim, float eps,
                      cudaStream_t s) {
  if (rows == 0) return;
  rmsnorm_kernel<true><<<unsigned(rows), kThreads, 0, s>>>(x, w, y, yb, dim, eps);
  LB_CUDA_LAUNCH_CHECK();
}

void rmsnorm_backward_f32(const float* x, const float* w, const float* dy, float* dx, int64_t rows, int64_t dim,
                          float eps, cudaStream_t s) {
  if (rows == 0) return;
  rmsnorm_backward_kernel<false><<<unsigned(rows), kThreads, 0, s>>>(x, w, dy, dx, dim, eps);
  LB_CUDA_LAUNCH_CHECK();
}

void rmsnorm_backward_add_f32(const float* x, const float* w, const float* dy, float* dx, int64_t rows, int64_t dim,
                              float eps, cudaStream_t s) {
  if (rows == 0) return;
  rmsnorm_backward_kernel<true><<<unsigned(rows), kThreads, 0, s>>>(x, w, dy, dx, dim, eps);
  LB_CUDA_LAUNCH_CHECK();
}

void rope_f32(float* x, int64_t rows, int64_t T, int64_t heads, int64_t half, int64_t ld, const float* cos,
              const float* sin, bool inverse, cudaStream_t s) {
  const int64_t n = rows * heads * half;
  if (n == 0) return;
  rope_kernel<<<grid_for(n), kThreads, 0, s>>>(x, rows, T, heads, half, ld, cos, sin, inverse);
  LB_CUDA_LAUNCH_CHECK();
}

void attention_f32(const float* q, const float* k, const float* v, float* out, float* probs, int64_t T, int64_t nh,
                   int64_t nkv, int64_t hd, cudaStream_t s) {
  if (nkv <= 0 || nh % nkv != 0) throw_error("attention_f32: heads not a multiple of key/value heads");
  const float scale = 1.0f / std::sqrt(float(hd));
  causal_head_dots_kernel<<<grid_for(nh * T * T), kThreads, 0, s>>>(q, k, probs, T, nh, nkv, hd, scale);
  LB_CUDA_LAUNCH_CHECK();
  attention_softmax_kernel<<<unsigned(nh * T), kThreads, 0, s>>>(probs, T);
  LB_CUDA_LAUNCH_CHECK();
  attention_out_kernel<<<grid_for(T * nh * hd), kThreads, 0, s>>>(probs, v, out, T, nh, nkv, hd);
  LB_CUDA_LAUNCH_CHECK();
}

void attention_backward_f32(const float* q, const float* k, const float* v, const float* dout, float* dq, float* dk,
                            float* dv, float* probs, float* dprobs, int64_t T, int64_t nh, int64_t nkv, int64_t hd,
                            cudaStream_t s) {
  if (nkv <= 0 || nh % nkv != 0) throw_error("attention_backward_f32: heads not a multiple of key/value heads");
  // P = softmax(scale q k^T + mask) recomputed; dP = dO V^T; dS = P (dP - rowsum(P dP));
  // dQ = scale dS K; dK = scale dS^T Q; dV = P^T dO (summed over a group's heads).
  const float scale = 1.0f / std::sqrt(float(hd));
  causal_head_dots_kernel<<<grid_for(nh * T * T), kThreads, 0, s>>>(q, k, probs, T, nh, nkv, hd, scale);
  LB_CUDA_LAUNCH_CHECK();
  attention_softmax_kernel<<<unsigned(nh * T), kThreads, 0, s>>>(probs, T);
  LB_CUDA_LAUNCH_CHECK();
  causal_head_dots_kernel<<<grid_for(nh * T * T), kThreads, 0, s>>>(dout, v, dprobs, T, nh, nkv, hd, 1.0f);
  LB_CUDA_LAUNCH_CHECK();
  attention_dscores_kernel<<<unsigned(nh * T), kThreads, 0, s>>>(probs, dprobs, T);
  LB_CUDA_LAUNCH_CHECK();
  attention_dq_kernel<<<grid_for(T * nh * hd), kThreads, 0, s>>>(dprobs, k, dq, T, nh, nkv, hd, scale);
  LB_CUDA_LAUNCH_CHECK();
  attention_dkv_kernel<<<grid_for(T * nkv * hd), kThreads, 0, s>>>(probs, dprobs, q, dout, dk, dv, T, nh, nkv, hd,
                                                                   scale);
  LB_CUDA_LAUNCH_CHECK();
}

namespace {

// One strided-batched SGEMM per head of a key/value group (jg = 0 .. group - 1), batched over the
// nkv groups: head h = g * group + jg. Row-major [T, heads * hd] activations are column-major
// [hd, T] blocks (ld heads * hd); row-major [T, T] probabilities are their column-major
// transposes (ld T). Pure fp32 (the handle's default math mode), or with tf32 the same call on
// tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32, set per call: the handle's mode is not touched).
void head_gemms(const Context& ctx, bool tf32, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n,
                int64_t k, float alpha, const float* a, int64_t lda, int64_t a_head, int64_t a_group, const float* b,
                int64_t ldb, int64_t b_head, int64_t b_group, float* c, int64_t ldc, int64_t c_head, int64_t c_group,
                int64_t group, int64_t nkv, bool accumulate_over_group) {
  // x_head: the offset of head jg within a group's batch entry; x_group: the batch stride.
  for (int64_t jg = 0; jg < group; ++jg) {
    const float beta = accumulate_over_group && jg > 0 ? 1.0f : 0.0f;
    if (tf32) {
      LB_CUBLAS_CHECK(cublasGemmStridedBatchedEx(ctx.cublas(), ta, tb, int(m), int(n), int(k), &alpha,
                                                 a + jg * a_head, CUDA_R_32F, int(lda), a_group, b + jg * b_head,
                                                 CUDA_R_32F, int(ldb), b_group, &beta, c + jg * c_head, CUDA_R_32F,
                                                 int(ldc), c_group, int(nkv), CUBLAS_COMPUTE_32F_FAST_TF32,
                                                 CUBLAS_GEMM_DEFAULT));
    } else {
      LB_CUBLAS_CHECK(cublasSgemmStridedBatched(ctx.cublas(), ta, tb, int(m), int(n), int(k), &alpha,
                                                a + jg * a_head, int(lda), a_group, b + jg * b_head, int(ldb),
                                                b_group, &beta, c + jg * c_head, int(ldc), c_group, int(nkv)));
    }
  }
}

}  // namespace

// The same attention with its products as cuBLAS SGEMMs (scores and probabilities of every pair,
// the causal mask applied by the softmax kernels, which read j <= i only and write zeros above).
void attention_gemm_f32(const Context& ctx, const float* q, const float* k, const float* v, float* out, float* probs,
                        int64_t T, int64_t nh, int64_t nkv, int64_t hd, bool tf32) {
  if (nkv <= 0 || nh % nkv != 0) throw_error("attention_gemm_f32: heads not a multiple of key/value heads");
  check_int(T * nh * hd, "sequence x features");
  const int64_t group = nh / nkv, qd = nh * hd, kvd = nkv * hd, TT = T * T;
  const float scale = 1.0f / std::sqrt(float(hd));
  // S_h^T [T(j), T(i)] = K_g [T, hd] Q_h^T: probs[h, i, j] = scale q_i,h . k_j,g.
  head_gemms(ctx, tf32, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, scale, k, kvd, 0, hd, q, qd, hd, group * hd, probs, T, TT,
             group * TT, group, nkv, false);
  attention_softmax_kernel<<<unsigned(nh * T), kThreads, 0, ctx.stream()>>>(probs, T);
  LB_CUDA_LAUNCH_CHECK();
  // out_h^T [hd, T(i)] = V_g^T [hd, T(j)] P_h^T.
  head_gemms(ctx, tf32, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, 1.0f, v, kvd, 0, hd, probs, T, TT, group * TT, out, qd, hd,
             group * hd, group, nkv, false);
}

void attention_backward_gemm_f32(const Context& ctx, const float* q, const float* k, const float* v,
                                 const float* dout, float* dq, float* dk, float* dv, float* probs, float* dprobs,
                                 int64_t T, int64_t nh, int64_t nkv, int64_t hd, bool tf32) {
  if (nkv <= 0 || nh % nkv != 0) throw_error("attention_backward_gemm_f32: heads not a multiple of key/value heads");
  check_int(T * nh * hd, "sequence x features");
  const int64_t group = nh / nkv, qd = nh * hd, kvd = nkv * hd, TT = T * T;
  const float scale = 1.0f / std::sqrt(float(hd));
  const cudaStream_t s = ctx.stream();
  // P recomputed; dP_h = dO_h V_g^T (as the scores, dout for q and v for k).
  head_gemms(ctx, tf32, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, scale, k, kvd, 0, hd, q, qd, hd, group * hd, probs, T, TT,
             group * TT, group, nkv, false);
  attention_softmax_kernel<<<unsigned(nh * T), kThreads, 0, s>>>(probs, T);
  LB_CUDA_LAUNCH_CHECK();
  head_gemms(ctx, tf32, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, 1.0f, v, kvd, 0, hd, dout, qd, hd, group * hd, dprobs, T, TT,
             group * TT, group, nkv, false);
  attention_dscores_kernel<<<unsigned(nh * T), kThreads, 0, s>>>(probs, dprobs, T);
  LB_CUDA_LAUNCH_CHECK();
  // dQ_h^T [hd, T(i)] = scale K_g^T [hd, T(j)] dS_h^T.
  head_gemms(ctx, tf32, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, scale, k, kvd, 0, hd, dprobs, T, TT, group * TT, dq, qd, hd,
             group * hd, group, nkv, false);
  // dK_g^T [hd, T(j)] = scale sum over the group's heads of Q_h^T [hd, T(i)] dS_h; dV_g likewise
  // with dO_h and P_h (the heads added in order, as the kernels add them).
  head_gemms(ctx, tf32, CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, scale, q, qd, hd, group * hd, dprobs, T, TT, group * TT, dk, kvd,
             0, hd, group, nkv, true);
  head_gemms(ctx, tf32, CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, 1.0f, dout, qd, hd, group * hd, probs, T, TT, group * TT, dv,
             kvd, 0, hd, group, nkv, true);
}

void swiglu_f32(const float* gate, const float* up, float* out, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  swiglu_kernel<false><<<grid_for(n), kThreads, 0, s>>>(gate, up, out, nullptr, n);
  LB_CUDA_LAUNCH_CHECK();
}

void swiglu_f32_bf16(const float* gate, const float* up, float* out, uint16_t* outb, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  swiglu_kernel<true><<<grid_for(n), kThreads, 0, s>>>(gate, up, out, outb, n);
  LB_CUDA_LAUNCH_CHECK();
}

void swiglu_backward_f32(const float* gate, const float* up, const float* dout, float* dgate, float* dup, int64_t n,
                         cudaStream_t s) {
  if (n == 0) return;
  swiglu_backward_kernel<false><<<grid_for(n), kThreads, 0, s>>>(gate, up, dout, dgate, dup, nullptr, nullptr, n);
  LB_CUDA_LAUNCH_CHECK();
}

void swiglu_backward_f32_bf16(const float* gate, const float* up, const float* dout, float* dgate, float* dup,
                              uint16_t* dgateb, uint16_t* dupb, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  swiglu_backward_kernel<true><<<grid_for(n), kThreads, 0, s>>>(gate, up, dout, dgate, dup, dgateb, dupb, n);
  LB_CUDA_LAUNCH_CHECK();
}

void cross_entropy_backward_f32(const float* logits, const int32_t* targets, float* dlogits, double* loss,
                                int64_t rows, int64_t V, float scale, cudaStream_t s) {
  if (rows == 0) return;
  cross_entropy_kernel<false><<<unsigned(rows), kThreads, 0, s>>>(logits, targets, dlogits, nullptr, loss, V, scale);
  LB_CUDA_LAUNCH_CHECK();
}

void cross_entropy_backward_bf16(const float* logits, const int32_t* targets, uint16_t* dlogits16, double* loss,
                                 int64_t rows, int64_t V, float scale, cudaStream_t s) {
  if (rows == 0) return;
  cross_entropy_kernel<true><<<unsigned(rows), kThreads, 0, s>>>(logits, targets, nullptr, dlogits16, loss, V, scale);
  LB_CUDA_LAUNCH_CHECK();
}

void dropout_mask_f32(const float* x, float* y, int64_t n, uint64_t stream, double p, bool accumulate,
                      cudaStream_t s) {
  if (n == 0) return;
  dropout_kernel<<<grid_for(n), kThreads, 0, s>>>(x, y, n, stream, p, float(1.0 / (1.0 - p)), accumulate);
  LB_CUDA_LAUNCH_CHECK();
}

static void check_groups(int64_t cols, int64_t r) {
  if (r <= 0 || cols % r != 0) throw_error("IEC kernels: the rank does not divide the linear's features");
}

void group_mean_add_f32(const float* x, float* h, int64_t rows, int64_t in, int64_t r, float coef, cudaStream_t s) {
  check_groups(in, r);
  if (rows * r == 0) return;
  group_mean_add_kernel<<<grid_for(rows * r), kThreads, 0, s>>>(x, h, rows, in, r, coef);
  LB_CUDA_LAUNCH_CHECK();
}

void repeat_add_f32(const float* h, float* y, int64_t rows, int64_t out, int64_t r, float coef, cudaStream_t s) {
  check_groups(out, r);
  if (rows * out == 0) return;
  repeat_add_kernel<<<grid_for(rows * out), kThreads, 0, s>>>(h, y, rows, out, r, coef);
  LB_CUDA_LAUNCH_CHECK();
}

void group_mean_backward_f32(const float* dh, float* dx, int64_t rows, int64_t in, int64_t r, float coef,
                             cudaStream_t s) {
  check_groups(in, r);
  if (rows * in == 0) return;
  group_mean_backward_kernel<<<grid_for(rows * in), kThreads, 0, s>>>(dh, dx, rows, in, r, coef);
  LB_CUDA_LAUNCH_CHECK();
}

void chunk_sum_backward_f32(const float* dy, const float* h, float* dh, double* partial, int64_t rows, int64_t out,
                            int64_t r, float scale, float coef, cudaStream_t s) {
  check_groups(out, r);
  if (rows * r == 0) return;
  chunk_sum_backward_kernel<<<grid_for(rows * r), kThreads, 0, s>>>(dy, h, dh, partial, rows, out, r, scale, coef);
  LB_CUDA_LAUNCH_CHECK();
}

void group_dot_f32(const float* x, const float* dh, double* partial, int64_t rows, int64_t in, int64_t r,
                   cudaStream_t s) {
  check_groups(in, r);
  if (rows * r == 0) return;
  group_dot_kernel<<<grid_for(rows * r), kThreads, 0, s>>>(x, dh, partial, rows, in, r);
  LB_CUDA_LAUNCH_CHECK();
}

void sum_into_f32(const double* partial, int64_t n, float* out, cudaStream_t s) {
  sum_into_kernel<<<1, kThreads, 0, s>>>(partial, n, out);
  LB_CUDA_LAUNCH_CHECK();
}

void add_f32(float* y, const float* x, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  add_kernel<<<grid_for(n), kThreads, 0, s>>>(y, x, n);
  LB_CUDA_LAUNCH_CHECK();
}

void sum_f32(const float* a, const float* b, float* out, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  sum_kernel<<<grid_for(n), kThreads, 0, s>>>(a, b, out, n);
  LB_CUDA_LAUNCH_CHECK();
}

}  // namespace lowbit::cuda
