// Fast CPU ops: OpenBLAS for the matrix products, loops written so that GCC vectorizes them
// (-O3 -march=native), OpenMP across rows and heads.
#include "backend/ops.h"
#include "backend/ops_backward.h"

#include "backend/cpu/thread_pool.h"
#include "core/error.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

// LAPACK (in OpenBLAS), Fortran calling convention with the hidden string lengths.
extern "C" {
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info, size_t uplo_len);
void dpotri_(const char* uplo, const int* n, double* a, const int* lda, int* info, size_t uplo_len);
}

namespace lowbit {

namespace {

int g_threads = 0;  // 0: not set yet

// e^x for x <= 88 (Cephes expf: range reduction by ln 2, degree-6 polynomial; about 1 ulp).
// Branch-free so that loops over it vectorize. x below -87.3 flushes towards 0 (not exactly 0).
inline float exp_approx(float x) {
  x = std::max(x, -87.33f);
  x = std::min(x, 88.37f);
  const float t = x * 1.44269504088896341f + 12582912.0f;  // round(x / ln2) in the low mantissa bits
  const float n = t - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n by adding n to the exponent field.
  const int32_t ni = std::bit_cast<int32_t>(t) - 0x4b400000;
  return std::bit_cast<float>(std::bit_cast<int32_t>(p) + (ni << 23));
}

}  // namespace

void set_num_threads(int n) {
  if (n <= 0) n = omp_get_num_procs();
  g_threads = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() {
  if (g_threads == 0) set_num_threads(0);
  return g_threads;
}

namespace ops {

void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps) {
#pragma omp parallel for schedule(static) if (rows * dim > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    float ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < dim; ++i) ss += xr[i] * xr[i];
    // transformers: x * rsqrt(mean(x^2) + eps) in fp32, then times the weight.
    const float inv = 1.0f / std::sqrt(ss / float(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] * inv) * w[i];
  }
}

void linear(const float* x, const float* w, float* y, int64_t rows, int64_t in, int64_t out) {
  if (rows <= gemv_max_rows()) return gemv(x, w, DType::F32, y, rows, in, out);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(rows), blasint(out), blasint(in), 1.0f, x,
              blasint(in), w, blasint(in), 0.0f, y, blasint(out));
}

namespace {

// Rotates each (x[i], x[i + half]) pair of every head by the position's angle (rotate_half RoPE),
// or by its negative (Inverse: the transpose [[c, s], [-s, c]], RoPE's backward).
template <bool Inverse>
void rotate_pairs(float* x, int64_t T, int64_t heads, int64_t ld, const RopeTable& rt, int64_t pos0) {
  LB_ASSERT(pos0 + T <= rt.n_pos);
  const int64_t half = rt.half;
#pragma omp parallel for schedule(static) if (T * heads > 256)
  for (int64_t t = 0; t < T; ++t) {
    const float* c = rt.cos.data() + (pos0 + t) * half;
    const float* s = rt.sin.data() + (pos0 + t) * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* a = x + t * ld + h * 2 * half;
      float* b = a + half;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const float av = a[i], bv = b[i];
        if constexpr (Inverse) {
          a[i] = av * c[i] + bv * s[i];
          b[i] = bv * c[i] - av * s[i];
        } else {
          a[i] = av * c[i] - bv * s[i];
          b[i] = bv * c[i] + av * s[i];
        }
      }
    }
  }
}

}  // namespace

void rope(float* x, int64_t T, int64_t heads, int64_t ld, const RopeTable& rt, int64_t pos0) {
  rotate_pairs<false>(x, T, heads, ld, rt, pos0);
}

// Declared in backend/ops_backward.h; beside the forward, whose loop it shares.
void rope_backward(float* dx, int64_t T, int64_t heads, int64_t ld, const RopeTable& rt, int64_t pos0) {
  rotate_pairs<true>(dx, T, heads, ld, rt, pos0);
}

namespace {

// sum of e[0, n) in a fixed order: 16 lanes, lane l summing e[l], e[l + 16], ... over the whole
// groups of 16, the rest added to lane 0 in turn, then 0 + lane 0 + lane 1 + ... + lane 15. This
// is the order in which GCC's AVX-512 code for an `omp simd reduction` loop summed the softmax,
// written out: the sum no longer depends on the compiler's choices where the loop is inlined
// (or on the vector width), so decode's attention, on the thread pool, and the OpenMP path give
// the bits they gave before either existed.
float softmax_sum(const float* e, int64_t n) {
  using V16 = float __attribute__((vector_size(64)));
  V16 lanes = {};
  const int64_t whole = n / 16 * 16;
  for (int64_t j = 0; j < whole; j += 16) {
    V16 x;
    std::memcpy(&x, e + j, sizeof(x));
    lanes += x;
  }
  float lane0 = lanes[0];
  for (int64_t j = whole; j < n; ++j) lane0 += e[j];
  float sum = 0.0f + lane0;
  for (int l = 1; l < 16; ++l) sum += lanes[l];
  return sum;
}

// Head h, query rows [q0, q0 + rows) of attention() below: scores as one GEMM over the keys the
// rows may see, a row softmax over each row's visible prefix, then one GEMM with V. `scores`
// holds rows * (past + q0 + rows) floats.
void attend_block(const float* q, const float* k, const float* v, float* out, int64_t nh,
                                    int64_t nkv, int64_t hd, int64_t past, int64_t h, int64_t q0, int64_t rows,
                                    float* s) {
  const int64_t group = nh / nkv, ldq = nh * hd, ldk = nkv * hd, keys = past + q0 + rows;
  const float scale = 1.0f / std::sqrt(float(hd));
  const float* qh = q + q0 * ldq + h * hd;
  const float* kh = k + (h / group) * hd;
  const float* vh = v + (h / group) * hd;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasint(rows), blasint(keys), blasint(hd), scale, qh,
              blasint(ldq), kh, blasint(ldk), 0.0f, s, blasint(keys));
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * keys;
    const int64_t visible = past + q0 + r + 1;
    float mx = -INFINITY;
    for (int64_t j = 0; j < visible; ++j) mx = std::max(mx, sr[j]);
#pragma omp simd
    for (int64_t j = 0; j < visible; ++j) sr[j] = exp_approx(sr[j] - mx);
    const float inv = 1.0f / softmax_sum(sr, visible);
#pragma omp simd
    for (int64_t j = 0; j < visible; ++j) sr[j] *= inv;
    std::fill(sr + visible, sr + keys, 0.0f);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(rows), blasint(hd), blasint(keys), 1.0f, s,
              blasint(keys), vh, blasint(ldk), 0.0f, out + q0 * ldq + h * hd, blasint(ldq));
}

}  // namespace

void attention(const float* q, const float* k, const float* v, float* out, int64_t T, int64_t nh, int64_t nkv,
               int64_t hd, int64_t past) {
  // Blocks of queries against the keys they may see (causal): scores for a block are one GEMM,
  // a row softmax over the visible prefix, then one GEMM with V. Keys past the block are never
  // touched, which halves the work against a full T x T product.
  constexpr int64_t kBlock = 64;
  const int64_t nblocks = (T + kBlock - 1) / kBlock;
  // Decode (one query row: some tens of microseconds per layer at a few hundred keys, most of it
  // OpenBLAS's set-up of 2 x nh one-row GEMMs) runs its heads on the thread pool
  // (backend/cpu/thread_pool.h), whose workers are awake between decode's products: an OpenMP
  // region here would wake passive threads once per layer and token. OpenBLAS runs a GEMM of
  // under 2^18 multiply-adds on the calling thread (GEMM_MULTITHREAD_THRESHOLD), so a worker's
  // GEMMs start no threads of their own; longer caches take the OpenMP path. Both run the same
  // attend_block, with the same GEMMs, so the bits are the same. (Plain loops instead of the
  // one-row GEMMs measured 2.5x faster on one thread, but sum in another order: decode's tokens
  // would change.)
  if (T == 1 && (past + 1) * hd < (int64_t(1) << 17)) {
    parallel_chunks(nh, [&](int64_t h) {
      thread_local std::vector<float> scores;
      scores.resize(size_t(past + 1));
      attend_block(q, k, v, out, nh, nkv, hd, past, h, 0, 1, scores.data());
    });
    return;
  }
  // OpenBLAS (its OpenMP build) runs single-threaded when called inside a parallel region.
#pragma omp parallel
  {
    // Sized for the longest block there is.
    std::vector<float> scores(size_t(std::min(kBlock, T) * (past + T)));
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t h = 0; h < nh; ++h)
      for (int64_t b = nblocks - 1; b >= 0; --b)  // longest blocks first
        attend_block(q, k, v, out, nh, nkv, hd, past, h, b * kBlock, std::min(kBlock, T - b * kBlock),
                     scores.data());
  }
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + exp_approx(-g)) * up[i];
  }
}

void nll_rows(const float* logits, const int32_t* targets, double* out, int64_t rows, int64_t V) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* l = logits + r * V;
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int64_t i = 0; i < V; ++i) mx = std::max(mx, l[i]);
    // Partial sums in fp32 lanes, combined in double: log-softmax at better than fp32 accuracy.
    constexpr int64_t kChunk = 1024;
    double sum = 0;
    for (int64_t c = 0; c < V; c += kChunk) {
      const int64_t e = std::min(V, c + kChunk);
      float part = 0;
#pragma omp simd reduction(+ : part)
      for (int64_t i = c; i < e; ++i) part += exp_approx(l[i] - mx);
      sum += part;
    }
    out[r] = std::log(sum) + double(mx) - double(l[targets[r]]);
  }
}

void gram_accumulate(const float* x, int64_t rows, int64_t cols, double* acc) {
  std::vector<float> g(size_t(cols * cols));
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, blasint(cols), blasint(rows), 1.0f, x, blasint(cols), 0.0f,
              g.data(), blasint(cols));
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < cols; ++i) {
    for (int64_t j = i; j < cols; ++j) {
      const double v = g[size_t(i * cols + j)];
      acc[i * cols + j] += v;
      if (j != i) acc[j * cols + i] += v;
    }
  }
}

// Row-major storage is the column-major storage of the transpose, so a row-major lower factor is
// LAPACK's upper one and vice versa.
bool cholesky(double* a, int64_t n, bool upper) {
  LB_CHECK(n <= int64_t(1) << 30, "cholesky: matrix of order {} is too large", n);
  const int ni = int(n);
  int info = 0;
  const char uplo = upper ? 'L' : 'U';
  dpotrf_(&uplo, &ni, a, &ni, &info, 1);
  LB_ASSERT(info >= 0);
  if (info > 0) return false;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      if (upper ? j < i : j > i) a[i * n + j] = 0.0;
  return true;
}

void cholesky_inverse(double* l, int64_t n) {
  const int ni = int(n);
  int info = 0;
  const char uplo = 'U';
  dpotri_(&uplo, &ni, l, &ni, &info, 1);
  LB_CHECK(info == 0, "cholesky_inverse: singular factor (LAPACK dpotri info {})", info);
  // dpotri wrote the row-major lower triangle; mirror it.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) l[i * n + j] = l[j * n + i];
}

}  // namespace ops

}  // namespace lowbit
