// The x86 kernels of packed_int.h: AVX2 (maddubs) and AVX-512 VNNI (vpdpbusd: four 4-bit blocks
// or two blocks of the other containers per step).
// Each function carries its own target attribute, so the file builds whatever -march says and
// the dispatcher in packed_int.cpp picks one by the CPU it runs on.
//
// Per block: unpack the 32 codes into 32 bytes (the container layouts of packed_int.h), multiply
// them with the 32 int8 activations into int32 partial sums, convert, and accumulate with the
// block's fp32 factor d * ad in float lanes; the zero-point terms m * ad * isum are accumulated
// in a scalar (AVX2) or sixteen blocks per FMA from the activations' dsum (VNNI). A row is multiplied with up to 4 activation rows at once, so the
// unpacked block is reused across them (small-batch products; batch 1 is decode).
#include "pack/packed_int.h"

#if defined(__x86_64__) || defined(_M_X64)

#include <immintrin.h>

#include <cstring>

namespace lowbit::pack::detail {

namespace {

#define LB_AVX2 __attribute__((target("avx2,fma")))
#define LB_VNNI __attribute__((target("avx2,fma,avx512f,avx512vl,avx512bw,avx512vnni")))

// 32 codes of a block as bytes in element order (signed int8 for the 8-bit container).
template <int B>
LB_AVX2 inline __m256i unpack(const uint8_t* p) {
  if constexpr (B == 4) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i m4 = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4));
  } else if constexpr (B == 2 || B == 3) {
    const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    const __m128i m2 = _mm_set1_epi8(3);
    const __m128i a0 = _mm_and_si128(v, m2), a1 = _mm_and_si128(_mm_srli_epi16(v, 2), m2);
    const __m128i a2 = _mm_and_si128(_mm_srli_epi16(v, 4), m2), a3 = _mm_and_si128(_mm_srli_epi16(v, 6), m2);
    const __m256i lo2 = _mm256_set_m128i(_mm_unpacklo_epi64(a2, a3), _mm_unpacklo_epi64(a0, a1));
    if constexpr (B == 2) {
      return lo2;
    } else {
      uint32_t hb;
      std::memcpy(&hb, p + 8, 4);
      // Byte i takes byte i/8 of the high-bit word, then tests bit i%8 of it.
      const __m256i spread = _mm256_shuffle_epi8(
          _mm256_set1_epi32(int(hb)), _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
      const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
      const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
      return _mm256_or_si256(lo2, _mm256_and_si256(set, _mm256_set1_epi8(4)));
    }
  } else {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
}

LB_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight int32 sums of codes x activations over one block, AVX2: maddubs takes unsigned x signed
// bytes (codes < 16 and |qa| <= 127 keep its int16 pair sums exact); the signed 8-bit container
// moves its signs onto the activations first (ggml's mul_sum_i8_pairs).
template <int B>
LB_AVX2 inline __m256i dot_avx2(__m256i c, __m256i q) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (B == 8) {
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(c, c), _mm256_sign_epi8(q, c));
    return _mm256_madd_epi16(p16, ones);
  } else {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(c, q), ones);
  }
}

template <int B, int NT>
LB_AVX2 void row_avx2(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r, int64_t j0) {
  constexpr int64_t bb = B * kBlock / 8;
  const int64_t P = w.padded(), nb = w.blocks;
  __m256 acc[NT];
  float macc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps(), macc[t] = 0;
  const uint8_t* wq = w.qs.data() + r * nb * bb;
  const float* wd = w.d.data() + r * w.pairs();
  const float* wm = w.m.empty() ? nullptr : w.m.data() + r * w.pairs();
  const int64_t gb = w.group_blocks;
  for (int64_t b = 0; b < nb; ++b) {
    const __m256i c = unpack<B>(wq + b * bb);
    for (int t = 0; t < NT; ++t) {
      const int64_t j = j0 + t;
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs.data() + j * P + b * kBlock));
      const float ad = a.d[size_t(j * nb + b)];
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_avx2<B>(c, q)), _mm256_set1_ps(wd[b / gb] * ad), acc[t]);
      if (wm != nullptr) macc[t] += wm[b / gb] * ad * float(a.isum[size_t(j * nb + b)]);
    }
  }
  for (int t = 0; t < NT; ++t) y[(j0 + t) * w.rows + r] = hsum(acc[t]) + macc[t];
}

// VNNI: vpdpbusd sums four u8 x s8 products straight into int32 (no int16 step), on 512-bit
// vectors holding two blocks (their activations are adjacent), each half scaled by its own block's
// factor. The 8-bit container is turned back into unsigned codes (c + 128 = c ^ 0x80) and its
// zero-point term takes the 128 back: d * c + m = d * (c + 128) + (m - 128 d).
template <int B>
LB_VNNI inline __m256i codes_u8(const uint8_t* p) {
  const __m256i c = unpack<B>(p);
  if constexpr (B == 8) return _mm256_xor_si256(c, _mm256_set1_epi8(char(0x80)));
  else return c;
}

template <int B>
LB_VNNI inline float m_u8(float m, float d) {
  if constexpr (B == 8) return m - 128.0f * d;
  else return m;
}

// The zero-point terms of a row against NT activation rows: sum over (d, m) pairs of m times the
// pair's blocks' d_a * isum (gsum), sixteen pairs per FMA. The 8-bit container's m is m - 128 d
// (see codes_u8).
template <int B, int NT>
LB_VNNI inline void zero_point_terms(const PackedIntMatrix& w, const Q8Activations& a, int64_t r, int64_t j0,
                                     __m512* macc) {
  const int64_t np = w.pairs();
  const float* wd = w.d.data() + r * np;
  const float* wm = w.m.data() + r * np;  // unused when m is empty
  for (int64_t k0 = 0; k0 < np; k0 += 16) {
    const __mmask16 k = k0 + 16 <= np ? __mmask16(0xFFFF) : __mmask16((1u << (np - k0)) - 1);
    __m512 m = w.m.empty() ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(k, wm + k0);
    if constexpr (B == 8) m = _mm512_fnmadd_ps(_mm512_maskz_loadu_ps(k, wd + k0), _mm512_set1_ps(128.0f), m);
    for (int t = 0; t < NT; ++t)
      macc[t] = _mm512_fmadd_ps(m, _mm512_maskz_loadu_ps(k, a.gsum.data() + (j0 + t) * np + k0), macc[t]);
  }
}

// d of blocks b..b+3 (b a multiple of 4) of a row whose pairs start at wd, gb blocks per pair.
LB_VNNI inline __m128 block_d4(const float* wd, int64_t b, int64_t gb) {
  if (gb == 1) return _mm_loadu_ps(wd + b);
  if (gb % 4 == 0) return _mm_set1_ps(wd[b / gb]);
  return _mm_set_ps(wd[(b + 3) / gb], wd[(b + 2) / gb], wd[(b + 1) / gb], wd[b / gb]);
}
// d of blocks b, b+1 (b even) in the low two lanes.
LB_VNNI inline __m128 block_d2(const float* wd, int64_t b, int64_t gb) {
  if (gb == 1) return _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(wd + b)));
  if (gb % 2 == 0) return _mm_set1_ps(wd[b / gb]);
  return _mm_set_ps(0.0f, 0.0f, wd[(b + 1) / gb], wd[b / gb]);
}

// The factors d * d_a of blocks b..b+3 of a row, each spread over the lanes its block's sums sit in:
// four lanes per block (the 4-bit kernel) or eight lanes for blocks b, b+1 (the pair kernels).
LB_VNNI inline __m512 factors4(__m128 d4, const float* ad) {
  const __m512i idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_mul_ps(d4, _mm_loadu_ps(ad))));
}
LB_VNNI inline __m512 factors2(__m128 d2, const float* ad) {
  const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m128 f = _mm_mul_ps(d2, _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(ad))));
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(f));
}

// One block (the tail of a row) against NT activation rows, in qs's order.
template <int B, int NT>
LB_VNNI inline void block_vnni(const PackedIntMatrix& w, const Q8Activations& a, int64_t r, int64_t j0, int64_t b,
                               __m512* acc) {
  constexpr int64_t bb = B * kBlock / 8;
  const int64_t P = w.padded(), nb = w.blocks;
  const __m256i c = codes_u8<B>(w.qs.data() + (r * nb + b) * bb);
  const float wd = w.d[w.pair(r, b)];
  for (int t = 0; t < NT; ++t) {
    const int64_t j = j0 + t;
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs.data() + j * P + b * kBlock));
    const __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), c, q);
    acc[t] = _mm512_add_ps(acc[t], _mm512_zextps256_ps512(_mm256_mul_ps(
                                       _mm256_cvtepi32_ps(s), _mm256_set1_ps(wd * a.d[size_t(j * nb + b)]))));
  }
}

// 4-bit rows: four blocks (64 bytes of nibbles) per step. The low nibbles are elements 0..15 of
// each block and the high ones 16..31, which is the order of qs4, so two vpdpbusd leave each
// block's sum in four int32 lanes, scaled by that block's factor.
template <int NT>
LB_VNNI void row_vnni4(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r, int64_t j0) {
  const int64_t P = w.padded(), nb = w.blocks;
  __m512 acc[NT], macc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps(), macc[t] = _mm512_setzero_ps();
  const uint8_t* wq = w.qs.data() + r * nb * 16;
  const float* wd = w.d.data() + r * w.pairs();
  const int64_t gb = w.group_blocks;
  const __m512i m4 = _mm512_set1_epi8(15);
  // The zero-point terms first: their loads of the row's m start before the code stream's.
  zero_point_terms<4, NT>(w, a, r, j0, macc);
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    const __m512i v = _mm512_loadu_si512(wq + b * 16);
    const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    const __m128 d4 = block_d4(wd, b, gb);
    for (int t = 0; t < NT; ++t) {
      const int64_t j = j0 + t;
      const int8_t* q = a.qs4.data() + j * P + b * kBlock;
      __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(q));
      s = _mm512_dpbusd_epi32(s, hi, _mm512_loadu_si512(q + 64));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), factors4(d4, a.d.data() + j * nb + b), acc[t]);
    }
  }
  for (; b < nb; ++b) block_vnni<4, NT>(w, a, r, j0, b, acc);
  for (int t = 0; t < NT; ++t) y[(j0 + t) * w.rows + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t], macc[t]));
}

// Other containers: two blocks per 512-bit vector (their activations are adjacent in qs), each
// half scaled by its own block's factor.
template <int B, int NT>
LB_VNNI void row_vnni(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r, int64_t j0) {
  if constexpr (B == 4) {
    row_vnni4<NT>(w, a, y, r, j0);
  } else {
    constexpr int64_t bb = B * kBlock / 8;
    const int64_t P = w.padded(), nb = w.blocks;
    __m512 acc[NT], macc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps(), macc[t] = _mm512_setzero_ps();
    const uint8_t* wq = w.qs.data() + r * nb * bb;
    const float* wd = w.d.data() + r * w.pairs();
    const int64_t gb = w.group_blocks;
    zero_point_terms<B, NT>(w, a, r, j0, macc);
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
      __m512i c;
      if constexpr (B == 8)
        c = _mm512_xor_si512(_mm512_loadu_si512(wq + b * bb), _mm512_set1_epi8(char(0x80)));
      else
        c = _mm512_inserti64x4(_mm512_castsi256_si512(codes_u8<B>(wq + b * bb)), codes_u8<B>(wq + (b + 1) * bb), 1);
      const __m128 d2 = block_d2(wd, b, gb);
      for (int t = 0; t < NT; ++t) {
        const int64_t j = j0 + t;
        const __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c,
                                              _mm512_loadu_si512(a.qs.data() + j * P + b * kBlock));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), factors2(d2, a.d.data() + j * nb + b), acc[t]);
      }
    }
    for (; b < nb; ++b) block_vnni<B, NT>(w, a, r, j0, b, acc);
    for (int t = 0; t < NT; ++t) y[(j0 + t) * w.rows + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t], macc[t]));
  }
}

// The (d, m) pairs of row r + 4: they are arrays apart from the codes, a stream of a few bytes per
// row that the hardware prefetchers leave alone, and at batch 1 a row's first loads of them
// otherwise wait on memory (a profile of testbed-44m decode: 15% of the kernel's time).
inline void prefetch_pairs(const PackedIntMatrix& w, int64_t r) {
  if (r + 4 >= w.rows) return;
  const size_t k = size_t((r + 4) * w.pairs());
  __builtin_prefetch(w.d.data() + k);
  if (!w.m.empty()) __builtin_prefetch(w.m.data() + k);
}

template <int B, bool Vnni>
void rows_tiled(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r0, int64_t r1, int64_t j0,
                int64_t j1) {
  for (int64_t r = r0; r < r1; ++r) {
    prefetch_pairs(w, r);
    int64_t j = j0;
    for (; j + 4 <= j1; j += 4) Vnni ? row_vnni<B, 4>(w, a, y, r, j) : row_avx2<B, 4>(w, a, y, r, j);
    for (; j + 2 <= j1; j += 2) Vnni ? row_vnni<B, 2>(w, a, y, r, j) : row_avx2<B, 2>(w, a, y, r, j);
    for (; j < j1; ++j) Vnni ? row_vnni<B, 1>(w, a, y, r, j) : row_avx2<B, 1>(w, a, y, r, j);
  }
}

template <bool Vnni>
void rows_any(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r0, int64_t r1, int64_t j0,
              int64_t j1) {
  switch (w.bits) {
    case 2: rows_tiled<2, Vnni>(w, a, y, r0, r1, j0, j1); break;
    case 3: rows_tiled<3, Vnni>(w, a, y, r0, r1, j0, j1); break;
    case 4: rows_tiled<4, Vnni>(w, a, y, r0, r1, j0, j1); break;
    default: rows_tiled<8, Vnni>(w, a, y, r0, r1, j0, j1); break;
  }
}

}  // namespace

void rows_q8_avx2(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r0, int64_t r1, int64_t j0,
                  int64_t j1) {
  rows_any<false>(w, a, y, r0, r1, j0, j1);
}

void rows_q8_avx512vnni(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r0, int64_t r1,
                        int64_t j0, int64_t j1) {
  rows_any<true>(w, a, y, r0, r1, j0, j1);
}

}  // namespace lowbit::pack::detail

#else  // not x86: the dispatcher never picks these (isa_supported says no); they run the scalar code.

namespace lowbit::pack::detail {
void rows_q8_avx2(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r0, int64_t r1, int64_t j0,
                  int64_t j1) {
  rows_q8_scalar(w, a, y, r0, r1, j0, j1);
}
void rows_q8_avx512vnni(const PackedIntMatrix& w, const Q8Activations& a, float* y, int64_t r0, int64_t r1,
                        int64_t j0, int64_t j1) {
  rows_q8_scalar(w, a, y, r0, r1, j0, j1);
}
}  // namespace lowbit::pack::detail

#endif
