#include "quant/reference_numerics.h"

#include "core/error.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

// Built with -ffp-contract=off (src/CMakeLists.txt): every product and sum here is rounded on its
// own, as in the reference's separate tensor operations.

namespace lowbit {

namespace {

constexpr int kLanes = 8;   // fp32 lanes of the Vectorized<float> that ATen's sum kernel runs with
constexpr int kIlp = 4;     // interleaved accumulators (row_sum's ilp_factor, the outer sum's nrows)
constexpr int kLevels = 4;  // cascade levels of multi_row_sum

template <int L>
using Lanes = std::array<float, L>;

int64_t ceil_log2(int64_t x) {
  if (x <= 2) return 1;
  int64_t b = 0;
  for (uint64_t v = uint64_t(x - 1); v != 0; v >>= 1) ++b;
  return b;
}

template <int L>
void add_into(Lanes<L>& a, const Lanes<L>& b) {
  for (int l = 0; l < L; ++l) a[size_t(l)] += b[size_t(l)];
}

// multi_row_sum's carry after a whole level-0 chunk that ends at step i: each level is added onto
// the next and cleared, up to the first level whose step count is not yet complete.
template <int L, int NR>
void carry(std::array<std::array<Lanes<L>, NR>, kLevels>& acc, int64_t i, int64_t level_power) {
  const int64_t level_mask = (int64_t(1) << level_power) - 1;
  for (int j = 1; j < kLevels; ++j) {
    for (int k = 0; k < NR; ++k) {
      add_into<L>(acc[size_t(j)][size_t(k)], acc[size_t(j - 1)][size_t(k)]);
      acc[size_t(j - 1)][size_t(k)] = Lanes<L>{};
    }
    if ((i & (level_mask << (j * level_power))) != 0) break;
  }
}

int64_t level_power_of(int64_t size) { return std::max<int64_t>(4, ceil_log2(size) / kLevels); }

// ATen's multi_row_sum: NR interleaved sums over `size` steps, in a cascade of kLevels levels of
// 2^level_power steps each. load(i, k) gives step i's value for sum k.
template <int L, int NR, typename Load>
std::array<Lanes<L>, NR> multi_row_sum(int64_t size, const Load& load) {
  const int64_t level_power = level_power_of(size);
  const int64_t level_step = int64_t(1) << level_power;
  std::array<std::array<Lanes<L>, NR>, kLevels> acc{};
  int64_t i = 0;
  while (i + level_step <= size) {
    for (int64_t j = 0; j < level_step; ++j, ++i)
      for (int k = 0; k < NR; ++k) add_into<L>(acc[0][size_t(k)], load(i, k));
    carry<L, NR>(acc, i, level_power);
  }
  for (; i < size; ++i)
    for (int k = 0; k < NR; ++k) add_into<L>(acc[0][size_t(k)], load(i, k));
  for (int j = 1; j < kLevels; ++j)
    for (int k = 0; k < NR; ++k) add_into<L>(acc[0][size_t(k)], acc[size_t(j)][size_t(k)]);
  return acc[0];
}

// ATen's row_sum: the `size` elements as a [-1, 4] array summed column-wise, the leftover
// elements onto the first column, then the four columns added in order. elem(i) gives element i.
template <int L, typename Elem>
Lanes<L> row_sum(int64_t size, const Elem& elem) {
  const int64_t size_ilp = size / kIlp;
  auto partial = multi_row_sum<L, kIlp>(size_ilp, [&](int64_t i, int k) { return elem(i * kIlp + k); });
  for (int64_t i = size_ilp * kIlp; i < size; ++i) add_into<L>(partial[0], elem(i));
  for (int k = 1; k < kIlp; ++k) add_into<L>(partial[0], partial[size_t(k)]);
  return partial[0];
}

}  // namespace

int64_t torch_sum_chunk_f32(int64_t n) { return int64_t(kIlp * kLanes) << level_power_of(n / (kIlp * kLanes)); }

void torch_sum_chunk_partials_f32(const float* x, int64_t chunk, float* partials) {
  // Step t's kIlp vectors are its kTorchSumPartials consecutive values: accumulator k, lane l is
  // partial k * kLanes + l.
  static_assert(kTorchSumPartials == kIlp * kLanes);
  float acc[kTorchSumPartials] = {};
  for (int64_t t = 0; t < chunk / kTorchSumPartials; ++t)
    for (int q = 0; q < kTorchSumPartials; ++q) acc[q] += x[t * kTorchSumPartials + q];
  std::copy(acc, acc + kTorchSumPartials, partials);
}

float torch_sum_from_chunks_f32(const float* partials, const float* rest, int64_t n) {
  if (n < kLanes) return torch_sum_f32(rest, n);
  // torch_sum_f32's row_sum and multi_row_sum with each whole chunk's level-0 sum taken from
  // partials instead of being added up here.
  const int64_t nvec = n / kLanes, size = nvec / kIlp, level_power = level_power_of(size);
  const int64_t level_step = int64_t(1) << level_power, nchunks = size / level_step;
  std::array<std::array<Lanes<kLanes>, kIlp>, kLevels> acc{};
  int64_t i = 0;
  for (int64_t c = 0; c < nchunks; ++c) {
    for (int k = 0; k < kIlp; ++k)
      for (int l = 0; l < kLanes; ++l) acc[0][size_t(k)][size_t(l)] = partials[c * kTorchSumPartials + k * kLanes + l];
    i += level_step;
    carry<kLanes, kIlp>(acc, i, level_power);
  }
  const float* r = rest;
  for (; i < size; ++i, r += kTorchSumPartials)
    for (int k = 0; k < kIlp; ++k)
      for (int l = 0; l < kLanes; ++l) acc[0][size_t(k)][size_t(l)] += r[k * kLanes + l];
  for (int j = 1; j < kLevels; ++j)
    for (int k = 0; k < kIlp; ++k) add_into<kLanes>(acc[0][size_t(k)], acc[size_t(j)][size_t(k)]);
  Lanes<kLanes> p = acc[0][0];
  for (int64_t v = size * kIlp; v < nvec; ++v, r += kLanes)
    for (int l = 0; l < kLanes; ++l) p[size_t(l)] += r[l];
  for (int k = 1; k < kIlp; ++k) add_into<kLanes>(p, acc[0][size_t(k)]);
  float a = 0.0f;
  for (int64_t t = nvec * kLanes; t < n; ++t, ++r) a += *r;
  for (int l = 0; l < kLanes; ++l) a += p[size_t(l)];
  return 0.0f + a;
}

namespace {

// torch_sum_f32 of kLanes <= n < 512 values (fewer than one chunk, so no carries): the same
// additions on 8-lane vectors held in registers, for the short rows that BiLLM's searches sum
// millions of times. GCC's vector extension adds lane by lane with the IEEE rounding of the
// scalar code.
typedef float Vec8 __attribute__((vector_size(kLanes * sizeof(float))));
static_assert(kLanes == 8);

Vec8 load8(const float* x) {
  Vec8 v;
  std::memcpy(&v, x, sizeof(v));
  return v;
}

float sum_short(const float* x, int64_t n) {
  const int64_t nvec = n / kLanes, size = nvec / kIlp;
  Vec8 a0{}, a1{}, a2{}, a3{};
  for (int64_t i = 0; i < size; ++i, x += kIlp * kLanes) {
    a0 += load8(x);
    a1 += load8(x + kLanes);
    a2 += load8(x + 2 * kLanes);
    a3 += load8(x + 3 * kLanes);
  }
  // multi_row_sum adds its kLevels - 1 empty upper levels (x + 0 is not x for x = -0).
  static_assert(kIlp == 4 && kLevels == 4);
  const Vec8 zero{};
  for (int j = 1; j < kLevels; ++j) {
    a0 += zero;
    a1 += zero;
    a2 += zero;
    a3 += zero;
  }
  for (int64_t v = size * kIlp; v < nvec; ++v, x += kLanes) a0 += load8(x);
  a0 += a1;
  a0 += a2;
  a0 += a3;
  float a = 0.0f;
  for (int64_t t = nvec * kLanes; t < n; ++t, ++x) a += *x;
  for (int l = 0; l < kLanes; ++l) a += a0[l];
  return 0.0f + a;
}

}  // namespace

float torch_sum_f32(const float* x, int64_t n, bool nan_as_zero) {
  if (!nan_as_zero && n >= kLanes && n < torch_sum_chunk_f32(n)) return sum_short(x, n);
  auto value = [&](int64_t i) { return nan_as_zero && std::isnan(x[i]) ? 0.0f : x[i]; };
  if (n < kLanes) return 0.0f + row_sum<1>(n, [&](int64_t i) { return Lanes<1>{value(i)}; })[0];
  const int64_t nvec = n / kLanes;
  const Lanes<kLanes> v = row_sum<kLanes>(nvec, [&](int64_t i) {
    Lanes<kLanes> out;
    for (int l = 0; l < kLanes; ++l) out[size_t(l)] = value(i * kLanes + l);
    return out;
  });
  float acc = 0.0f;
  for (int64_t k = nvec * kLanes; k < n; ++k) acc += value(k);
  for (int l = 0; l < kLanes; ++l) acc += v[size_t(l)];
  return 0.0f + acc;
}

void torch_column_sums_f32(const float* x, int64_t rows, int64_t cols, float* out) {
  int64_t j = 0;
  if (cols >= kLanes) {
    for (; j + kIlp * kLanes <= cols; j += kIlp * kLanes) {
      const auto sums = multi_row_sum<kLanes, kIlp>(rows, [&](int64_t i, int k) {
        Lanes<kLanes> v;
        for (int l = 0; l < kLanes; ++l) v[size_t(l)] = x[i * cols + j + k * kLanes + l];
        return v;
      });
      for (int k = 0; k < kIlp; ++k)
        for (int l = 0; l < kLanes; ++l) out[j + k * kLanes + l] = 0.0f + sums[size_t(k)][size_t(l)];
    }
    for (; j + kLanes <= cols; j += kLanes) {
      const auto s = row_sum<kLanes>(rows, [&](int64_t i) {
        Lanes<kLanes> v;
        for (int l = 0; l < kLanes; ++l) v[size_t(l)] = x[i * cols + j + l];
        return v;
      });
      for (int l = 0; l < kLanes; ++l) out[j + l] = 0.0f + s[size_t(l)];
    }
    for (; j < cols; ++j) out[j] = 0.0f + row_sum<1>(rows, [&](int64_t i) { return Lanes<1>{x[i * cols + j]}; })[0];
    return;
  }
  // Fewer columns than a vector: ATen's scalar outer sum, four columns at a time.
  for (; j + kIlp - 1 < cols; j += kIlp) {
    const auto sums = multi_row_sum<1, kIlp>(rows, [&](int64_t i, int k) { return Lanes<1>{x[i * cols + j + k]}; });
    for (int k = 0; k < kIlp; ++k) out[j + k] = 0.0f + sums[size_t(k)][0];
  }
  for (; j < cols; ++j) out[j] = 0.0f + row_sum<1>(rows, [&](int64_t i) { return Lanes<1>{x[i * cols + j]}; })[0];
}

std::vector<float> torch_linspace_f32(float start, float end, int64_t steps) {
  LB_CHECK(steps >= 2, "linspace: {} steps", steps);
  const float step = (end - start) / float(steps - 1);
  const int64_t halfway = steps / 2;
  std::vector<float> out(static_cast<size_t>(steps));
  // step * i is exact in double (a 24-bit significand times an integer below 2^29), so the
  // double sum rounded to float is the single rounding of the fused form.
  for (int64_t i = 0; i < steps; ++i)
    out[size_t(i)] = i < halfway ? float(double(start) + double(step) * double(i))
                                 : float(double(end) - double(step) * double(steps - 1 - i));
  return out;
}

float numpy_quantile_f32(const std::vector<float>& sorted, float q) {
  LB_CHECK(!sorted.empty(), "quantile of no values");
  const int64_t n = int64_t(sorted.size());
  const float v = float(n - 1) * q;
  if (v >= float(n - 1)) return sorted.back();
  const float prev = std::floor(v);
  const int64_t i = int64_t(prev);
  const float g = v - prev;
  const float a = sorted[size_t(i)], b = sorted[size_t(i + 1)];
  const float d = b - a;
  if (g >= 0.5f) return b - d * (1.0f - g);
  return a + d * g;
}

}  // namespace lowbit
