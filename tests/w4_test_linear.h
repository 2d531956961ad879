// Random 4-bit "int" QuantizedLinears for the W4A16 tests (tests/unit/test_w4_tiles.cpp on the
// CPU, tests/cuda/test_w4a16.cpp on the GPU).
#pragma once

#include "core/dtype.h"
#include "quant/quantized_linear.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace lowbit::test {

enum class W4Scales {
  PowerOfTwo,  // 2^-e, e in 2..6: dequantized weights are short binary fractions (exact sums)
  Bf16,        // random values rounded to bf16: the tiles hold them exactly
  F32,         // random fp32 values: the tiles round them to bf16
};

enum class W4Order {
  Plain,     // group c / group_size
  ActOrder,  // GPTQ's act_order: a random permutation, perm[i] in group i / group_size
  Uneven,    // each column in a random group (groups of unequal sizes, some maybe empty)
};

inline QuantizedLinear random_w4_linear(int64_t rows, int64_t cols, int64_t group, int bits, W4Order order,
                                        W4Scales scales, std::mt19937& rng) {
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.bits = bits;
  q.group_size = group;
  q.dequant_dtype = DType::BF16;
  const int maxq = (1 << bits) - 1;
  std::uniform_int_distribution<int> code(0, maxq);
  q.codes.resize(size_t(rows * cols));
  for (auto& c : q.codes) c = uint8_t(code(rng));
  const int64_t gpr = q.groups_per_row();
  if (order == W4Order::ActOrder) {
    std::vector<int32_t> perm(static_cast<size_t>(cols));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    q.g_idx.resize(size_t(cols));
    for (int64_t i = 0; i < cols; ++i) q.g_idx[size_t(perm[size_t(i)])] = int32_t(i / group);
  } else if (order == W4Order::Uneven) {
    std::uniform_int_distribution<int32_t> grp(0, int32_t(gpr - 1));
    q.g_idx.resize(size_t(cols));
    for (auto& g : q.g_idx) g = grp(rng);
  }
  const int64_t ns = q.num_scale_groups();
  q.scales.resize(size_t(ns));
  q.zeros.resize(size_t(ns));
  std::uniform_int_distribution<int> expo(2, 6), zero(0, maxq);
  std::uniform_real_distribution<float> uni(0.002f, 0.05f);
  for (auto& s : q.scales) {
    if (scales == W4Scales::PowerOfTwo) s = std::ldexp(1.0f, -expo(rng));
    else if (scales == W4Scales::Bf16) s = bf16_to_f32(f32_to_bf16(uni(rng)));
    else s = uni(rng);
  }
  for (auto& z : q.zeros) z = float(zero(rng));
  q.validate("random_w4_linear");
  return q;
}

}  // namespace lowbit::test
