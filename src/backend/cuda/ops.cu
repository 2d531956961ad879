#include "backend/cuda/ops.cuh"

#include "backend/cuda/block_reduce.cuh"

#include <algorithm>
#include <cfloat>
#include <string>

namespace lowbit::cuda {

namespace {

constexpr int kThreads = 256;

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

// The same through 16-byte loads of x (dim % 4 == 0, 16-byte aligned rows and 8-byte aligned w, y).
__global__ void rmsnorm4_kernel(const float* x, const bf16* w, bf16* y, int64_t dim, float eps) {
  __shared__ float shared[33];
  const float4* xr = reinterpret_cast<const float4*>(x + int64_t(blockIdx.x) * dim);
  const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(w);
  __nv_bfloat162* yr = reinterpret_cast<__nv_bfloat162*>(y + int64_t(blockIdx.x) * dim);
  const int64_t n4 = dim / 4;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
    const float4 v = xr[i];
    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
  ss = block_reduce<false>(ss, shared);
  const float inv = rsqrtf(ss / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
    const float4 v = xr[i];
    const float2 wa = __bfloat1622float2(w2[2 * i]), wb = __bfloat1622float2(w2[2 * i + 1]);
    yr[2 * i] = __floats2bfloat162_rn(v.x * inv * wa.x, v.y * inv * wa.y);
    yr[2 * i + 1] = __floats2bfloat162_rn(v.z * inv * wb.x, v.w * inv * wb.y);
  }
}

__global__ void rope_kernel(bf16* x, int64_t T, int64_t heads, int64_t hd, int64_t ld, const float* cos,
                            const float* sin, int64_t pos0, const int32_t* pos0_dev) {
  // grid: (B*T), threads over heads * hd/2
  if (pos0_dev != nullptr) pos0 = *pos0_dev;
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

// The same, two adjacent pairs per thread (hd % 4 == 0, even ld, 4-byte aligned x).
__global__ void rope2_kernel(bf16* x, int T, int heads, int hd, int64_t ld, const float* cos, const float* sin,
                             int64_t pos0, const int32_t* pos0_dev) {
  if (pos0_dev != nullptr) pos0 = *pos0_dev;
  const int64_t row = blockIdx.x;
  const int t = int(row % T), half = hd / 2, pairs = half / 2;
  bf16* xr = x + row * ld;
  const float* c = cos + (pos0 + t) * half;
  const float* s = sin + (pos0 + t) * half;
  for (int j = threadIdx.x; j < heads * pairs; j += blockDim.x) {
    const int h = j / pairs, i = (j % pairs) * 2;
    __nv_bfloat162* a = reinterpret_cast<__nv_bfloat162*>(xr + h * hd + i);
    __nv_bfloat162* b = reinterpret_cast<__nv_bfloat162*>(xr + h * hd + i + half);
    const float2 av = __bfloat1622float2(*a), bv = __bfloat1622float2(*b);
    const float2 cv = *reinterpret_cast<const float2*>(c + i), sv = *reinterpret_cast<const float2*>(s + i);
    *a = __floats2bfloat162_rn(av.x * cv.x - bv.x * sv.x, av.y * cv.y - bv.y * sv.y);
    *b = __floats2bfloat162_rn(bv.x * cv.x + av.x * sv.x, bv.y * cv.y + av.y * sv.y);
  }
}

// grid: (T, 2): row t of k (y 0) or v (y 1) into the cache row *pos + t, 16 bytes per thread
// where the row allows (kvd % 8 == 0 and 16-byte aligned rows), else one value per thread.
__global__ void kv_append_kernel(const bf16* k, const bf16* v, int64_t ld, bf16* cache_k, bf16* cache_v, int64_t kvd,
                                 const int32_t* pos) {
  const int64_t t = blockIdx.x;
  const bf16* src = (blockIdx.y == 0 ? k : v) + t * ld;
  bf16* dst = (blockIdx.y == 0 ? cache_k : cache_v) + (int64_t(*pos) + t) * kvd;
  const bool wide = kvd % 8 == 0 && ld % 8 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(dst) % 16 == 0;
  if (wide) {
    for (int64_t c = threadIdx.x; c < kvd / 8; c += blockDim.x)
      reinterpret_cast<uint4*>(dst)[c] = reinterpret_cast<const uint4*>(src)[c];
  } else {
    for (int64_t c = threadIdx.x; c < kvd; c += blockDim.x) dst[c] = src[c];
  }
}

__global__ void add_i32_kernel(int32_t* x, int32_t by) { *x += by; }

// One block per row: each thread keeps the first largest of its strided values (NaN never
// compares larger), then the block keeps the largest of those, the smallest index on ties.
__global__ void argmax_kernel(const float* x, int32_t* out, int64_t V) {
  __shared__ float best_v[32];
  __shared__ int32_t best_i[32];
  const float* r = x + int64_t(blockIdx.x) * V;
  float bv = -INFINITY;
  int32_t bi = -1;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = r[i];
    if (v > bv || (bi < 0 && v == bv)) {  // the first -inf counts too: every row has an index
      bv = v;
      bi = int32_t(i);
    }
  }
  const auto better = [](float v, int32_t i, float w, int32_t j) {  // (w, j) beats (v, i)
    return j >= 0 && (i < 0 || w > v || (w == v && j < i));
  };
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, bv, o);
    const int32_t j = __shfl_xor_sync(0xffffffffu, bi, o);
    if (better(bv, bi, w, j)) bv = w, bi = j;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  if (lane == 0) best_v[warp] = bv, best_i[warp] = bi;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < nwarps; ++w)
      if (better(bv, bi, best_v[w], best_i[w])) bv = best_v[w], bi = best_i[w];
    // std::max_element keeps element 0 when it is NaN (no value compares greater).
    out[blockIdx.x] = bi < 0 || isnan(r[0]) ? 0 : bi;
  }
}

// Rows [gate | up] of 2F, in place. grid.x covers a row's F (8 elements per thread through
// 16-byte loads when F % 8 == 0), grid.y strides over the rows.
__global__ void swiglu_rows8_kernel(bf16* gu, int64_t rows, int64_t F) {
  const int64_t c = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 8;
  if (c >= F) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    uint4* gp = reinterpret_cast<uint4*>(gu + r * 2 * F + c);
    const uint4 gv = *gp, uv = *reinterpret_cast<const uint4*>(gu + r * 2 * F + F + c);
    const bf16* g8 = reinterpret_cast<const bf16*>(&gv);
    const bf16* u8 = reinterpret_cast<const bf16*>(&uv);
    uint4 ov;
    bf16* o8 = reinterpret_cast<bf16*>(&ov);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float g = __bfloat162float(g8[e]);
      o8[e] = __float2bfloat16(g / (1.0f + __expf(-g)) * __bfloat162float(u8[e]));
    }
    *gp = ov;
  }
}

__global__ void swiglu_rows_kernel(bf16* gu, int64_t rows, int64_t F) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= F) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float g = __bfloat162float(gu[r * 2 * F + c]);
    gu[r * 2 * F + c] = __float2bfloat16(g / (1.0f + __expf(-g)) * __bfloat162float(gu[r * 2 * F + F + c]));
  }
}

__global__ void f32_to_bf16_kernel(const float* x, bf16* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16(x[i]);
}

__global__ void bf16_to_f32_kernel(const bf16* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __bfloat162float(x[i]);
}

// Running (max, sum of exp(x - max), argmax) of a set of logits; merged across lanes and warps.
struct SoftmaxState {
  float m, sum;
  int32_t arg;
};

__device__ __forceinline__ SoftmaxState merge(SoftmaxState a, SoftmaxState b) {
  if (b.m > a.m || (b.m == a.m && b.arg < a.arg)) {
    const SoftmaxState t = a;
    a = b;
    b = t;
  }
  // a has the larger max (or the same max and the first index).
  const float scaled = b.sum == 0.0f ? 0.0f : b.sum * __expf(b.m - a.m);
  return {a.m, a.sum + scaled, a.arg};
}

__device__ __forceinline__ void push(SoftmaxState& st, float x, int32_t i) {
  if (x > st.m) {
    st.sum = st.sum * __expf(st.m - x) + 1.0f;
    st.m = x;
    st.arg = i;
  } else {
    st.sum += __expf(x - st.m);
  }
}

// One block per row, one pass over the logits (16-byte loads when V % 4 == 0).
__global__ void nll_kernel(const float* logits, const int32_t* targets, float* out, int32_t* argmax, int64_t V) {
  __shared__ SoftmaxState shared[32];
  const float* l = logits + int64_t(blockIdx.x) * V;
  SoftmaxState st{-FLT_MAX, 0.0f, 0};
  if (V % 4 == 0) {
    const float4* l4 = reinterpret_cast<const float4*>(l);
    for (int64_t i = threadIdx.x; i < V / 4; i += blockDim.x) {
      const float4 x = l4[i];
      push(st, x.x, int32_t(4 * i));
      push(st, x.y, int32_t(4 * i + 1));
      push(st, x.z, int32_t(4 * i + 2));
      push(st, x.w, int32_t(4 * i + 3));
    }
  } else {
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) push(st, l[i], int32_t(i));
  }
  for (int o = 16; o > 0; o >>= 1) {
    const SoftmaxState other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.sum, o),
                             __shfl_xor_sync(0xffffffffu, st.arg, o)};
    st = merge(st, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  if (lane == 0) shared[warp] = st;
  __syncthreads();
  if (threadIdx.x == 0) {
    SoftmaxState r = shared[0];
    for (int w = 1; w < nwarps; ++w) r = merge(r, shared[w]);
    out[blockIdx.x] = logf(r.sum) + r.m - l[targets[blockIdx.x]];
    if (argmax) argmax[blockIdx.x] = r.arg;
  }
}

// KL-divergence rows, one block of kKldThreads per row. Block reductions run in a fixed order
// (per-thread strided partials, a warp butterfly, then the warps in order), so the result does not
// depend on timing and two equal rows reduce to bit-equal values.
constexpr int kKldThreads = 512;

struct AddOp {
  __device__ double operator()(double x, double y) const { return x + y; }
};

template <typename T, typename Op>
__device__ T block_reduce_ordered(T v, Op op, T* shared) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  __syncthreads();  // shared may still be read by a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T r = shared[0];
  for (int w = 1; w < nwarps; ++w) r = op(r, shared[w]);
  return r;
}

// (max, first index of the max) of a row.
__device__ void row_max_arg(const float* x, int64_t V, float* m_out, int32_t* arg_out, float* sm, int32_t* sa) {
  float m = -FLT_MAX;
  int32_t a = INT32_MAX;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
    if (x[i] > m) {  // strided in increasing order: the first index of this thread's max
      m = x[i];
      a = int32_t(i);
    }
  for (int o = 16; o > 0; o >>= 1) {
    const float om = __shfl_xor_sync(0xffffffffu, m, o);
    const int32_t oa = __shfl_xor_sync(0xffffffffu, a, o);
    if (om > m || (om == m && oa < a)) {
      m = om;
      a = oa;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) {
    sm[warp] = m;
    sa[warp] = a;
  }
  __syncthreads();
  m = sm[0];
  a = sa[0];
  for (int w = 1; w < nwarps; ++w)
    if (sm[w] > m || (sm[w] == m && sa[w] < a)) {
      m = sm[w];
      a = sa[w];
    }
  *m_out = m;
  *arg_out = a;
}

__global__ void kld_kernel(const float* base_logits, const float* logits, const int32_t* targets, double* kld,
                           uint8_t* agree, double* nll_b, double* nll_q, int64_t V) {
  __shared__ double sd[32];
  __shared__ float sm[32];
  __shared__ int32_t sa[32];
  const int64_t r = blockIdx.x;
  const float* b = base_logits + r * V;
  const float* q = logits + r * V;
  const AddOp add;
  float mb, mq;
  int32_t ab, aq;
  row_max_arg(b, V, &mb, &ab, sm, sa);
  row_max_arg(q, V, &mq, &aq, sm, sa);
  double eb = 0, eq = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    eb += exp(double(b[i]) - double(mb));
    eq += exp(double(q[i]) - double(mq));
  }
  const double lse_b = double(mb) + log(block_reduce_ordered(eb, add, sd));
  const double lse_q = double(mq) + log(block_reduce_ordered(eq, add, sd));
  double s = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const double lb = double(b[i]) - lse_b;
    s += exp(lb) * (lb - (double(q[i]) - lse_q));
  }
  s = block_reduce_ordered(s, add, sd);
  if (threadIdx.x == 0) {
    kld[r] = s;
    agree[r] = ab == aq ? 1 : 0;
    nll_b[r] = lse_b - double(b[targets[r]]);
    nll_q[r] = lse_q - double(q[targets[r]]);
  }
}

// SliM-LLM's search rows (kl_search.h): the host code's arithmetic, one block of kKldThreads per row.
// (max, sum of exp(x - max)) of a row, the shift taken in fp32 as the host does.
__device__ void clamped_softmax_shift(const float* x, int64_t O, float* m, double* sum, double* sd, float* sm,
                                      int32_t* sa) {
  int32_t arg;
  row_max_arg(x, O, m, &arg, sm, sa);
  double e = 0;
  for (int64_t i = threadIdx.x; i < O; i += blockDim.x) e += exp(double(x[i] - *m));
  *sum = block_reduce_ordered(e, AddOp{}, sd);
}

__global__ void clamped_log_softmax_kernel(const float* y, double* logq, int64_t O) {
  __shared__ double sd[32];
  __shared__ float sm[32];
  __shared__ int32_t sa[32];
  const float* yr = y + int64_t(blockIdx.x) * O;
  double* lq = logq + int64_t(blockIdx.x) * O;
  float m;
  double sum;
  clamped_softmax_shift(yr, O, &m, &sum, sd, sm, sa);
  for (int64_t i = threadIdx.x; i < O; i += blockDim.x) lq[i] = log(fmax(exp(double(yr[i] - m)) / sum, 1e-6));
}

__global__ void clamped_softmax_kl_kernel(const float* z, const double* logq, double* row_kl, int64_t O) {
  __shared__ double sd[32];
  __shared__ float sm[32];
  __shared__ int32_t sa[32];
  const float* zr = z + int64_t(blockIdx.x) * O;
  const double* lq = logq + int64_t(blockIdx.x) * O;
  float m;
  double sum;
  clamped_softmax_shift(zr, O, &m, &sum, sd, sm, sa);
  double kl = 0;
  for (int64_t i = threadIdx.x; i < O; i += blockDim.x) {
    const double p = fmax(exp(double(zr[i] - m)) / sum, 1e-6);
    kl += p * (log(p) - lq[i]);
  }
  kl = block_reduce_ordered(kl, AddOp{}, sd);
  if (threadIdx.x == 0) row_kl[blockIdx.x] = kl;
}

__global__ void sum_ordered_kernel(const double* v, int64_t n, double* out) {
  __shared__ double sd[32];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
  s = block_reduce_ordered(s, AddOp{}, sd);
  if (threadIdx.x == 0) *out = s;
}

// Activation fake quantization, one block per row. Absolute maximum of a row of bf16 pairs.
__device__ float row_absmax(const bf16* xr, int64_t cols, float* shared) {
  float m = 0.0f;
  for (int64_t c = 2 * int64_t(threadIdx.x); c < cols; c += 2 * int64_t(blockDim.x)) {
    const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(xr + c));
    m = fmaxf(m, fmaxf(fabsf(v.x), fabsf(v.y)));
  }
  return block_reduce<true>(m, shared);
}

// Segment maxima: seg_max[r / seg_rows] = max over its rows (as uint bits: non-negative floats
// order as their bit patterns).
__global__ void segment_absmax_kernel(const bf16* x, int64_t cols, int64_t ld, int64_t seg_rows, unsigned* seg_max) {
  __shared__ float shared[33];
  const float m = row_absmax(x + int64_t(blockIdx.x) * ld, cols, shared);
  if (threadIdx.x == 0) atomicMax(seg_max + blockIdx.x / seg_rows, __float_as_uint(m));
}

// x <- bf16(rint(x / s) * s): s from the row's own maximum (seg_max == nullptr, static_scale <=
// 0), its segment's maximum, or static_scale (then clamped to [-qmax - 1, qmax]).
__global__ void fake_quantize_kernel(bf16* x, int64_t cols, int64_t ld, float qmax, int64_t seg_rows,
                                     const unsigned* seg_max, float static_scale) {
  __shared__ float shared[33];
  bf16* xr = x + int64_t(blockIdx.x) * ld;
  float sc = static_scale;
  if (sc <= 0.0f) {
    const float m = seg_max ? __uint_as_float(seg_max[blockIdx.x / seg_rows]) : row_absmax(xr, cols, shared);
    sc = fmaxf(m, 1e-5f) / qmax;
  }
  const bool clamp = static_scale > 0.0f;
  for (int64_t c = 2 * int64_t(threadIdx.x); c < cols; c += 2 * int64_t(blockDim.x)) {
    __nv_bfloat162* p = reinterpret_cast<__nv_bfloat162*>(xr + c);
    const float2 v = __bfloat1622float2(*p);
    float a = rintf(v.x / sc), b = rintf(v.y / sc);
    if (clamp) {
      a = fminf(fmaxf(a, -qmax - 1.0f), qmax);
      b = fminf(fmaxf(b, -qmax - 1.0f), qmax);
    }
    *p = __floats2bfloat162_rn(a * sc, b * sc);
  }
}

}  // namespace

namespace {

// Per column of x [rows, cols] (row stride ld): max |x| into absmax and sum |x| into abssum,
// added to what they hold. One thread per column pair, one block row per chunk of rows.
constexpr int kStatRows = 256;
__global__ void column_abs_stats_kernel(const bf16* x, int64_t rows, int64_t cols, int64_t ld, float* absmax,
                                        float* abssum) {
  const int64_t c = 2 * (int64_t(blockIdx.x) * blockDim.x + threadIdx.x);
  if (c >= cols) return;
  const int64_t r0 = int64_t(blockIdx.y) * kStatRows, r1 = min(rows, r0 + kStatRows);
  float m0 = 0.0f, m1 = 0.0f, s0 = 0.0f, s1 = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(x + r * ld + c));
    m0 = fmaxf(m0, fabsf(v.x));
    m1 = fmaxf(m1, fabsf(v.y));
    s0 += fabsf(v.x);
    s1 += fabsf(v.y);
  }
  // Non-negative floats order as their bit patterns.
  atomicMax(reinterpret_cast<unsigned*>(absmax + c), __float_as_uint(m0));
  atomicMax(reinterpret_cast<unsigned*>(absmax + c + 1), __float_as_uint(m1));
  atomicAdd(abssum + c, s0);
  atomicAdd(abssum + c + 1, s1);
}

}  // namespace

void column_abs_stats(const bf16* x, int64_t rows, int64_t cols, int64_t ld, float* absmax, float* abssum,
                      cudaStream_t s) {
  if (rows == 0) return;
  if (cols % 2 != 0 || ld % 2 != 0) throw_error("column_abs_stats: row length and stride must be even");
  const dim3 grid(unsigned((cols / 2 + kThreads - 1) / kThreads), unsigned((rows + kStatRows - 1) / kStatRows));
  column_abs_stats_kernel<<<grid, kThreads, 0, s>>>(x, rows, cols, ld, absmax, abssum);
  LB_CUDA_LAUNCH_CHECK();
}

void fake_quantize(bf16* x, int64_t rows, int64_t cols, int64_t ld, int bits, int64_t seg_rows, float static_scale,
                   unsigned* seg_scratch, cudaStream_t s) {
  if (rows == 0) return;
  if (cols % 2 != 0 || ld % 2 != 0) throw_error("fake_quantize: row length and stride must be even");
  if (bits < 2 || bits > 16) throw_error("fake_quantize: " + std::to_string(bits) + " bits is outside 2..16");
  const float qmax = float((1 << (bits - 1)) - 1);
  const unsigned* seg = nullptr;
  if (static_scale <= 0.0f && seg_rows > 1) {
    if (rows % seg_rows != 0) throw_error("fake_quantize: rows do not divide into segments");
    LB_CUDA_CHECK(cudaMemsetAsync(seg_scratch, 0, size_t(rows / seg_rows) * sizeof(unsigned), s));
    segment_absmax_kernel<<<unsigned(rows), kThreads, 0, s>>>(x, cols, ld, seg_rows, seg_scratch);
    LB_CUDA_LAUNCH_CHECK();
    seg = seg_scratch;
  }
  fake_quantize_kernel<<<unsigned(rows), kThreads, 0, s>>>(x, cols, ld, qmax, std::max<int64_t>(seg_rows, 1), seg,
                                                           static_scale);
  LB_CUDA_LAUNCH_CHECK();
}

namespace {

unsigned grid_stride_blocks(int64_t n) { return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)); }

}  // namespace

namespace {

// Per block: sum over a grid-stride share of term(a[i], b[i]) (fp64), a fixed reduction tree.
struct SquaredDiff {
  __device__ double operator()(float a, float b) const {
    const double d = double(a) - double(b);
    return d * d;
  }
};
struct Product {
  __device__ double operator()(float a, float b) const { return double(a) * double(b); }
};

template <class Term>
__global__ void pair_sum_partials_kernel(const float* a, const float* b, int64_t n, double* partial) {
  __shared__ double red[kThreads];
  const Term term;
  double acc = 0.0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    acc += term(a[i], b[i]);
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}

__global__ void scale_f32_in_f64_kernel(float* x, int64_t n, double scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = float(double(x[i]) * scale);
}

}  // namespace

void dot_partials(const float* a, const float* b, int64_t n, double* partial, cudaStream_t s) {
  pair_sum_partials_kernel<Product><<<kSquaredDiffBlocks, kThreads, 0, s>>>(a, b, n, partial);
  LB_CUDA_LAUNCH_CHECK();
}

void scale_f32_in_f64(float* x, int64_t n, double scale, cudaStream_t s) {
  if (n == 0) return;
  scale_f32_in_f64_kernel<<<unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096)), kThreads, 0, s>>>(
      x, n, scale);
  LB_CUDA_LAUNCH_CHECK();
}

void squared_diff_partials(const float* a, const float* b, int64_t n, double* partial, cudaStream_t s) {
  pair_sum_partials_kernel<SquaredDiff><<<kSquaredDiffBlocks, kThreads, 0, s>>>(a, b, n, partial);
  LB_CUDA_LAUNCH_CHECK();
}

void embed(const int32_t* ids, const bf16* table, float* out, int64_t n, int64_t H, cudaStream_t s) {
  if (n == 0) return;
  embed_kernel<<<unsigned(n), kThreads, 0, s>>>(ids, table, out, n, H);
  LB_CUDA_LAUNCH_CHECK();
}

void rmsnorm(const float* x, const bf16* w, bf16* y, int64_t rows, int64_t dim, float eps, cudaStream_t s) {
  if (rows == 0) return;
  const auto aligned = [](const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; };
  if (dim % 4 == 0 && aligned(x, 16) && aligned(w, 8) && aligned(y, 8))
    rmsnorm4_kernel<<<unsigned(rows), kThreads, 0, s>>>(x, w, y, dim, eps);
  else
    rmsnorm_kernel<<<unsigned(rows), kThreads, 0, s>>>(x, w, y, dim, eps);
  LB_CUDA_LAUNCH_CHECK();
}

void rope(bf16* x, int64_t B, int64_t T, int64_t heads, int64_t hd, int64_t ld, const float* cos, const float* sin,
          int64_t pos0, cudaStream_t s, const int32_t* pos0_dev) {
  if (B * T == 0) return;
  if (hd % 4 == 0 && ld % 2 == 0 && reinterpret_cast<uintptr_t>(x) % 4 == 0)
    rope2_kernel<<<unsigned(B * T), 128, 0, s>>>(x, int(T), int(heads), int(hd), ld, cos, sin, pos0, pos0_dev);
  else
    rope_kernel<<<unsigned(B * T), 128, 0, s>>>(x, T, heads, hd, ld, cos, sin, pos0, pos0_dev);
  LB_CUDA_LAUNCH_CHECK();
}

void kv_append(const bf16* k, const bf16* v, int64_t ld, bf16* cache_k, bf16* cache_v, int64_t kvd, int64_t T,
               const int32_t* pos_dev, cudaStream_t s) {
  if (T == 0) return;
  kv_append_kernel<<<dim3(unsigned(T), 2), 128, 0, s>>>(k, v, ld, cache_k, cache_v, kvd, pos_dev);
  LB_CUDA_LAUNCH_CHECK();
}

void add_i32(int32_t* x, int32_t by, cudaStream_t s) {
  add_i32_kernel<<<1, 1, 0, s>>>(x, by);
  LB_CUDA_LAUNCH_CHECK();
}

void argmax_rows(const float* x, int32_t* out, int64_t rows, int64_t V, cudaStream_t s) {
  if (rows == 0) return;
  argmax_kernel<<<unsigned(rows), 1024, 0, s>>>(x, out, V);
  LB_CUDA_LAUNCH_CHECK();
}

void swiglu_rows(bf16* gate_up, int64_t rows, int64_t F, cudaStream_t s) {
  if (rows * F == 0) return;
  const unsigned gy = unsigned(std::min<int64_t>(rows, 65535));
  if (F % 8 == 0 && reinterpret_cast<uintptr_t>(gate_up) % 16 == 0)
    swiglu_rows8_kernel<<<dim3(unsigned((F / 8 + kThreads - 1) / kThreads), gy), kThreads, 0, s>>>(gate_up, rows, F);
  else
    swiglu_rows_kernel<<<dim3(unsigned((F + kThreads - 1) / kThreads), gy), kThreads, 0, s>>>(gate_up, rows, F);
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

void kld_rows(const float* base_logits, const float* logits, const int32_t* targets, double* kld, uint8_t* agree,
              double* nll_b, double* nll_q, int64_t rows, int64_t V, cudaStream_t s) {
  if (rows == 0) return;
  kld_kernel<<<unsigned(rows), kKldThreads, 0, s>>>(base_logits, logits, targets, kld, agree, nll_b, nll_q, V);
  LB_CUDA_LAUNCH_CHECK();
}

void clamped_log_softmax_rows(const float* y, double* logq, int64_t rows, int64_t O, cudaStream_t s) {
  if (rows == 0) return;
  clamped_log_softmax_kernel<<<unsigned(rows), kKldThreads, 0, s>>>(y, logq, O);
  LB_CUDA_LAUNCH_CHECK();
}

void clamped_softmax_kl_rows(const float* z, const double* logq, double* row_kl, int64_t rows, int64_t O,
                             cudaStream_t s) {
  if (rows == 0) return;
  clamped_softmax_kl_kernel<<<unsigned(rows), kKldThreads, 0, s>>>(z, logq, row_kl, O);
  LB_CUDA_LAUNCH_CHECK();
}

void sum_ordered(const double* v, int64_t n, double* out, cudaStream_t s) {
  sum_ordered_kernel<<<1, kKldThreads, 0, s>>>(v, n, out);
  LB_CUDA_LAUNCH_CHECK();
}

void linear(const Context& ctx, const bf16* A, const bf16* W, bf16* C, int64_t M, int64_t N, int64_t K, int64_t lda,
            int64_t ldc) {
  const float alpha = 1.0f, beta = 0.0f;
  // Row-major C[M,N] = A[M,K] W[N,K]^T is column-major C^T[N,M] = W^T(op T of col-major W[K,N]) A^T.
  LB_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &alpha, W, CUDA_R_16BF,
                               int(K), A, CUDA_R_16BF, int(lda ? lda : K), &beta, C, CUDA_R_16BF, int(ldc ? ldc : N),
                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void linear(const Context& ctx, const bf16* A, const bf16* W, float* C, int64_t M, int64_t N, int64_t K,
            bool accumulate, int64_t lda) {
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  LB_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &alpha, W, CUDA_R_16BF,
                               int(K), A, CUDA_R_16BF, int(lda ? lda : K), &beta, C, CUDA_R_32F, int(N),
                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void gram_accumulate(const Context& ctx, const bf16* X, float* H, int64_t M, int64_t K, int64_t ldx) {
  const float alpha = 1.0f, beta = 1.0f;
  const int ld = int(ldx ? ldx : K);
  // Column-major X^T is [K, M] (leading dimension ld); H = X^T (X^T)^T.
  LB_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, int(K), int(K), int(M), &alpha, X, CUDA_R_16BF,
                               ld, X, CUDA_R_16BF, ld, &beta, H, CUDA_R_32F, int(K), CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
}

void linear_f32(const Context& ctx, const float* A, int64_t lda, const float* W, int64_t ldw, float* C, int64_t ldc,
                int64_t M, int64_t N, int64_t K, bool accumulate) {
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  // As linear(): row-major C[M,N] = A W^T is column-major C^T = op_T(W^T) A^T. CUBLAS_COMPUTE_32F
  // with fp32 operands runs fp32 FMAs (TF32 only with the _FAST_TF32 compute types).
  LB_CUBLAS_CHECK(cublasGemmEx(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &alpha, W, CUDA_R_32F,
                               int(ldw), A, CUDA_R_32F, int(lda), &beta, C, CUDA_R_32F, int(ldc), CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
}

}  // namespace lowbit::cuda
