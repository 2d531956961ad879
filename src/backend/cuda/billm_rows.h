// One row of BiLLM's candidate searches (quant/billm.h, steps b and c) and the chunked mean of
// their squared errors, written once for nvcc and for the host compiler: the GPU searches
// (billm.cuh) run one thread per (candidate, row) through this code, and the CPU test
// (tests/unit/test_billm_rows.cpp) runs every (candidate, row) of a block through the very same
// code and checks it bit for bit against the host searches (quant/billm.cpp). Every product,
// quotient and sum is rounded on its own (the device with the _rn intrinsics, the host compiled
// with -ffp-contract=off), in the order of the host's lane code: BRA as bra_lanes, sums as
// torch_sum_f32_lanes, the mean as torch_sum_chunk_partials_f32 and torch_sum_from_chunks_f32
// (quant/reference_numerics.h).
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define LB_BILLM_HD __host__ __device__ __forceinline__
#else
#define LB_BILLM_HD inline
#endif

namespace lowbit::billm_rows {

// The longest row (block) the GPU searches take: each thread holds two reconstructions of it.
constexpr int kMaxN = 128;
constexpr int kPartials = 32;  // kTorchSumPartials: 4 accumulators x 8 lanes

LB_BILLM_HD float add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
LB_BILLM_HD float sub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
LB_BILLM_HD float mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
LB_BILLM_HD float div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
// fabs: the sign bit cleared (NaN payloads kept), as the host's abs_r.
LB_BILLM_HD float magnitude(float a) {
#ifdef __CUDA_ARCH__
  return __int_as_float(__float_as_int(a) & 0x7fffffff);
#else
  union {
    float f;
    uint32_t u;
  } v{a};
  v.u &= 0x7fffffffu;
  return v.f;
#endif
}

// torch_sum_f32_lanes for one row of 8 <= n < 512 values, t(j) value j.
template <typename T>
LB_BILLM_HD float row_sum(int n, const T& t) {
  const int nvec = n / 8, size = nvec / 4;
  auto acc = [&](int q) {
    float a = 0.0f;
    for (int i = 0; i < size; ++i) a = add(a, t(i * 32 + q));
    for (int j = 1; j < 4; ++j) a = add(a, 0.0f);  // x + 0 is not x for x = -0
    return a;
  };
  float a = 0.0f;
  for (int k = nvec * 8; k < n; ++k) a = add(a, t(k));
  for (int l = 0; l < 8; ++l) {
    float p = acc(l);
    for (int v = size * 4; v < nvec; ++v) p = add(p, t(v * 8 + l));
    for (int k = 1; k < 4; ++k) p = add(p, acc(k * 8 + l));
    a = add(a, p);
  }
  return add(0.0f, a);
}

// BRA(x, mask, order) of one row as bra_lanes: x(j) the value, mf(j) 1 or 0; recon [n].
template <typename X, typename M>
LB_BILLM_HD void bra(int n, int order, const X& x, const M& mf, float* recon) {
  float cnt = 0.0f;
  for (int j = 0; j < n; ++j) cnt = add(cnt, mf(j));
  for (int j = 0; j < n; ++j) recon[j] = 0.0f;
  for (int od = 0; od < order; ++od) {
    auto res = [&](int j) { return sub(mul(x(j), mf(j)), recon[j]); };
    float mean = div(row_sum(n, [&](int j) { return mf(j) != 0.0f ? res(j) : 0.0f; }), cnt);
    if (mean != mean) mean = 0.0f;
    float scale = div(row_sum(n, [&](int j) { return mf(j) != 0.0f ? magnitude(sub(res(j), mean)) : 0.0f; }), cnt);
    if (scale != scale) scale = 0.0f;
    for (int j = 0; j < n; ++j) {
      const float m = mf(j), d = sub(res(j), mean);
      const float sg = m != 0.0f ? (d > 0.0f ? 1.0f : (d < 0.0f ? -1.0f : 0.0f)) : 0.0f;
      const float b = add(mul(sg, scale), mean);
      recon[j] = add(recon[j], mul(b, m));
    }
  }
}

// Step b, candidate k (the k top-ranked columns salient): e[j] = (x - (BRA(x, rest, 2) +
// BRA(x, top k, 2)))^2. rank [n]: column j's place in the descending column scores.
template <typename X>
LB_BILLM_HD void salient_row(int n, const X& x, const int32_t* rank, int k, float* e) {
  float ga[kMaxN], gb[kMaxN];
  bra(n, 2, x, [&](int j) { return rank[j] < k ? 1.0f : 0.0f; }, ga);
  bra(n, 2, x, [&](int j) { return rank[j] >= k ? 1.0f : 0.0f; }, gb);
  for (int j = 0; j < n; ++j) {
    const float d = sub(x(j), add(gb[j], ga[j]));
    e[j] = mul(d, d);
  }
}

// Step c, split p: e[j] = (x - ((BRA(x, below, 1) + BRA(x, above, 1)) + g3))^2, below = keep and
// a < p, above = keep and a >= p (a = |S| with the salient entries 0; keep: not salient).
template <typename X, typename A, typename K, typename G>
LB_BILLM_HD void split_row(int n, const X& x, const A& a, const K& keep, const G& g3, float p, float* e) {
  float ga[kMaxN], gb[kMaxN];
  bra(n, 1, x, [&](int j) { return keep(j) && a(j) < p ? 1.0f : 0.0f; }, ga);
  bra(n, 1, x, [&](int j) { return keep(j) && a(j) >= p ? 1.0f : 0.0f; }, gb);
  for (int j = 0; j < n; ++j) {
    const float d = sub(x(j), add(add(ga[j], gb[j]), g3(j)));
    e[j] = mul(d, d);
  }
}

// ---- torch's sum of a candidate's rows * n errors, from chunks ---------------------------------

LB_BILLM_HD int64_t ceil_log2(int64_t x) {
  if (x <= 2) return 1;
  int64_t b = 0;
  for (uint64_t v = uint64_t(x - 1); v != 0; v >>= 1) ++b;
  return b;
}
LB_BILLM_HD int64_t level_power_of(int64_t size) {
  const int64_t p = ceil_log2(size) / 4;
  return p > 4 ? p : 4;
}
// torch_sum_chunk_f32.
LB_BILLM_HD int64_t chunk_of(int64_t n) { return int64_t(kPartials) << level_power_of(n / kPartials); }

// Partial q of one chunk (torch_sum_chunk_partials_f32): values q, q + 32, ... added onto 0.
LB_BILLM_HD float chunk_partial(const float* x, int64_t chunk, int q) {
  float a = 0.0f;
  for (int64_t t = 0; t < chunk / kPartials; ++t) a = add(a, x[t * kPartials + q]);
  return a;
}

// torch_sum_from_chunks_f32 for n >= 8: partials [n / chunk][32], rest [n % chunk].
LB_BILLM_HD float sum_from_chunks(const float* partials, const float* rest, int64_t n) {
  constexpr int kLanes = 8, kIlp = 4, kLevels = 4;
  const int64_t nvec = n / kLanes, size = nvec / kIlp, level_power = level_power_of(size);
  const int64_t level_step = int64_t(1) << level_power, nchunks = size / level_step;
  const int64_t level_mask = level_step - 1;
  float acc[kLevels][kIlp][kLanes];
  for (int j = 0; j < kLevels; ++j)
    for (int k = 0; k < kIlp; ++k)
      for (int l = 0; l < kLanes; ++l) acc[j][k][l] = 0.0f;
  int64_t i = 0;
  for (int64_t c = 0; c < nchunks; ++c) {
    for (int k = 0; k < kIlp; ++k)
      for (int l = 0; l < kLanes; ++l) acc[0][k][l] = partials[c * kPartials + k * kLanes + l];
    i += level_step;
    // multi_row_sum's carry: each level onto the next, up to the first incomplete one.
    for (int j = 1; j < kLevels; ++j) {
      for (int k = 0; k < kIlp; ++k)
        for (int l = 0; l < kLanes; ++l) {
          acc[j][k][l] = add(acc[j][k][l], acc[j - 1][k][l]);
          acc[j - 1][k][l] = 0.0f;
        }
      if ((i & (level_mask << (j * level_power))) != 0) break;
    }
  }
  const float* r = rest;
  for (; i < size; ++i, r += kPartials)
    for (int k = 0; k < kIlp; ++k)
      for (int l = 0; l < kLanes; ++l) acc[0][k][l] = add(acc[0][k][l], r[k * kLanes + l]);
  for (int j = 1; j < kLevels; ++j)
    for (int k = 0; k < kIlp; ++k)
      for (int l = 0; l < kLanes; ++l) acc[0][k][l] = add(acc[0][k][l], acc[j][k][l]);
  float p[kLanes];
  for (int l = 0; l < kLanes; ++l) p[l] = acc[0][0][l];
  for (int64_t v = size * kIlp; v < nvec; ++v, r += kLanes)
    for (int l = 0; l < kLanes; ++l) p[l] = add(p[l], r[l]);
  for (int k = 1; k < kIlp; ++k)
    for (int l = 0; l < kLanes; ++l) p[l] = add(p[l], acc[0][k][l]);
  float a = 0.0f;
  for (int64_t t = nvec * kLanes; t < n; ++t, ++r) a = add(a, *r);
  for (int l = 0; l < kLanes; ++l) a = add(a, p[l]);
  return add(0.0f, a);
}

}  // namespace lowbit::billm_rows
