// Matrix-vector products for decode: a few activation rows against a weight read once.
//
// OpenBLAS's sgemm packs (copies) the whole weight matrix on every call before multiplying; at
// one row that copy is most of the time (a profile of `generate` on testbed-44m: 62% of all
// cycles in sgemm_incopy). Here each weight row is streamed once and dotted with every activation
// row, with the weight converted from its stored dtype (bf16/fp16 convert exactly to fp32), so a
// 16-bit model reads half the bytes an fp32 copy of it would.
#include "backend/ops.h"

#include "core/error.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <bit>

namespace lowbit::ops {

namespace {

constexpr int64_t kMaxRows = 4;

#if defined(__AVX512F__)
template <DType WT>
inline __m512 load16(const void* w, int64_t i) {
  if constexpr (WT == DType::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(w) + i);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + i));
    if constexpr (WT == DType::BF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else return _mm512_cvtph_ps(h);
  }
}
#endif

template <DType WT>
inline float load1(const void* w, int64_t i) {
  if constexpr (WT == DType::F32) return static_cast<const float*>(w)[i];
  else if constexpr (WT == DType::BF16) return bf16_to_f32(static_cast<const uint16_t*>(w)[i]);
  else return f16_to_f32(static_cast<const uint16_t*>(w)[i]);
}

// y[r, o] for rows r < R of one weight row o (w points at it).
template <DType WT, int R>
inline void dot_rows(const float* x, const void* w, float* y, int64_t in, int64_t out, int64_t o) {
  int64_t i = 0;
  float acc[R] = {};
#if defined(__AVX512F__)
  // Two accumulators per row hide the FMA latency; the loop is bound by the weight stream.
  __m512 a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = _mm512_setzero_ps(), a1[r] = _mm512_setzero_ps();
  for (; i + 32 <= in; i += 32) {
    const __m512 w0 = load16<WT>(w, i), w1 = load16<WT>(w, i + 16);
    for (int r = 0; r < R; ++r) {
      a0[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + r * in + i), a0[r]);
      a1[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + r * in + i + 16), a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) acc[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
#endif
  for (; i < in; ++i) {
    const float wv = load1<WT>(w, i);
    for (int r = 0; r < R; ++r) acc[r] += wv * x[r * in + i];
  }
  for (int r = 0; r < R; ++r) y[r * out + o] = acc[r];
}

template <DType WT>
void gemv_typed(const float* x, const void* w, float* y, int64_t rows, int64_t in, int64_t out) {
  const int64_t esize = WT == DType::F32 ? 4 : 2;
  // Threads over output rows for products of 1M weights and more; smaller ones (a few tens of
  // microseconds on one core) stay on one thread, as waking another (OMP_WAIT_POLICY=PASSIVE)
  // costs about as much. testbed-44m decode, 2 threads: 348 tokens/s at 64K, 391 at 1M.
#pragma omp parallel for schedule(static) if (out * in > 1048576)
  for (int64_t o = 0; o < out; ++o) {
    const void* wr = static_cast<const uint8_t*>(w) + o * in * esize;
    switch (rows) {
      case 1: dot_rows<WT, 1>(x, wr, y, in, out, o); break;
      case 2: dot_rows<WT, 2>(x, wr, y, in, out, o); break;
      case 3: dot_rows<WT, 3>(x, wr, y, in, out, o); break;
      default: dot_rows<WT, 4>(x, wr, y, in, out, o); break;
    }
  }
}

}  // namespace

int64_t gemv_max_rows() { return kMaxRows; }

void gemv(const float* x, const void* w, DType wt, float* y, int64_t rows, int64_t in, int64_t out) {
  LB_ASSERT(rows >= 1 && rows <= kMaxRows);
  switch (wt) {
    case DType::F32: gemv_typed<DType::F32>(x, w, y, rows, in, out); break;
    case DType::BF16: gemv_typed<DType::BF16>(x, w, y, rows, in, out); break;
    case DType::F16: gemv_typed<DType::F16>(x, w, y, rows, in, out); break;
    default: throw Error(fmt::format("gemv: weights of dtype {} are not supported", dtype_name(wt)));
  }
}

}  // namespace lowbit::ops
