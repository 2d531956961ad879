// The low-bit GEMV kernel's arithmetic on the CPU, without a GPU: its lanes' code
// (src/backend/cuda/gemv_lowbit_lane.h) run over a whole grid by tests/gemv_emulation.h, against
// the CPU product of lowbit's own dequantized weight (QuantizedLinear::dequantize in bf16), for
// 1-8-bit int and NF4 codes, K on both sides of the 1024-column tile, partial last groups, and
// M = 1, 3, 16, 17, 64 (the 1-, 4- and 16-row configurations and several launches); and the
// lanes' decoding (which the dequantize + cuBLAS kernel runs too) against the layout's weight.
//
// Tolerances as in tests/cuda/test_gemv_lowbit.cpp: bit-exact where every product and partial sum
// is exact (power-of-two scales, activations in {-8..8} / 8, K * max|code - zero| < 2^17); else
// within the fp32 summation bound (K / 16 + 80 roundings of 2^-24 times sum |x w|, an
// overestimate of a lane's K / 32 fused multiply-adds and the 5 butterfly sums) of the reference
// computed from the same bf16 activations, plus 2^-9 sum |x w| against the one computed from the
// fp32 activations before their rounding to bf16, plus the bf16 output's rounding.
#include "backend/cuda/gemv_lowbit_lane.h"
#include "core/dtype.h"
#include "gemv_emulation.h"
#include "pack/gemv_pack.h"
#include "quant/nf4.h"
#include "w4_test_linear.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace lowbit {
namespace {

using test::random_w4_linear;
using test::W4Order;
using test::W4Scales;

struct Case {
  int64_t n, k, group;
  int bits;  // int code width; 0: NF4 (double-quantized)
};

const Case kCases[] = {
    {64, 128, 128, 2}, {130, 200, 64, 2}, {257, 4096, 128, 2}, {33, 172, 32, 3}, {96, 384, 32, 3},
    {40, 256, 64, 1},  {64, 256, 32, 8},  {31, 1024, 128, 8},  {50, 128, 64, 5}, {70, 256, 128, 4},
    {64, 128, 64, 0},  {129, 448, 64, 0}, {48, 4096, 64, 0},  {40, 1000, 96, 3},  // groups of 96: a division
};

QuantizedLinear make_linear(const Case& c, bool exact, std::mt19937& rng) {
  if (c.bits > 0)
    return random_w4_linear(c.n, c.k, c.group, c.bits, W4Order::Plain, exact ? W4Scales::PowerOfTwo : W4Scales::Bf16,
                            rng);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> w(size_t(c.n * c.k));
  for (auto& v : w) v = normal(rng);
  return nf4_quantize(w.data(), c.n, c.k, c.group, true, DType::BF16);
}

void sweep(bool exact) {
  std::mt19937 rng(exact ? 505 : 606);
  for (const Case& c : kCases) {
    if (exact && !(c.bits > 0 && c.k * ((1 << c.bits) - 1) < (int64_t(1) << 17))) continue;
    const QuantizedLinear q = make_linear(c, exact, rng);
    const pack::GemvPacked p = pack::pack_gemv(q, "test");
    std::vector<float> w(size_t(c.n * c.k));
    q.dequantize(w.data());
    for (int64_t M : {1, 3, 16, 17, 64}) {
      SCOPED_TRACE((c.bits ? "int" + std::to_string(c.bits) : std::string("nf4")) + " [" + std::to_string(c.n) +
                   ", " + std::to_string(c.k) + "] g" + std::to_string(c.group) + " M " + std::to_string(M) +
                   (exact ? " exact" : ""));
      std::vector<float> xf(size_t(M * c.k));
      std::uniform_int_distribution<int> small(-8, 8);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (auto& v : xf) v = exact ? float(small(rng)) / 8.0f : normal(rng);
      std::vector<uint16_t> xb(xf.size());
      for (size_t i = 0; i < xf.size(); ++i) xb[i] = f32_to_bf16(xf[i]);
      const std::vector<uint16_t> y = test::emulate_gemv(p, xb, M);
      const double chain = double(c.k / 16 + 80) * std::ldexp(1.0, -24);
      int bad = 0;
      for (int64_t m = 0; m < M && bad < 5; ++m)
        for (int64_t n = 0; n < c.n && bad < 5; ++n) {
          double rb = 0, sb = 0, rf = 0, sf = 0;
          for (int64_t k = 0; k < c.k; ++k) {
            const double wk = w[size_t(n * c.k + k)];
            const double b = double(bf16_to_f32(xb[size_t(m * c.k + k)])) * wk;
            const double f = double(xf[size_t(m * c.k + k)]) * wk;
            rb += b;
            sb += std::fabs(b);
            rf += f;
            sf += std::fabs(f);
          }
          const double got = bf16_to_f32(y[size_t(m * c.n + n)]);
          if (exact) {
            if (y[size_t(m * c.n + n)] != f32_to_bf16(float(rb))) {
              ADD_FAILURE() << "y[" << m << ", " << n << "] = " << got << ", exact " << rb;
              ++bad;
            }
            continue;
          }
          const double out = std::ldexp(std::fabs(rb), -8);
          if (!(std::fabs(got - rb) <= out + chain * sb) ||
              !(std::fabs(got - rf) <= out + (chain + std::ldexp(1.0, -9)) * sf)) {
            ADD_FAILURE() << "y[" << m << ", " << n << "] = " << got << ", reference " << rb << " (bf16 x), " << rf
                          << " (fp32 x)";
            ++bad;
          }
        }
    }
  }
}

TEST(GemvLane, EmulatedKernelMatchesTheDequantizedProductExactly) { sweep(true); }

TEST(GemvLane, EmulatedKernelMatchesTheDequantizedProductOnRandomData) { sweep(false); }

// Every code decoded as the lanes (and the dequantize kernel) decode it equals the layout's
// weight, itself the fake-quant bf16 weight (tests/unit/test_gemv_pack.cpp).
TEST(GemvLane, DecodingEqualsTheLayoutsWeight) {
  std::mt19937 rng(707);
  for (const Case& c : kCases) {
    SCOPED_TRACE(std::to_string(c.bits) + " bits, K " + std::to_string(c.k));
    const QuantizedLinear q = make_linear(c, false, rng);
    const pack::GemvPacked p = pack::pack_gemv(q, "test");
    const std::vector<float> want = pack::dequantize_gemv(p);
    cuda::gemv_lane::Params lp{};
    lp.codes = p.codes.data();
    lp.scales = p.scales.data();
    lp.N = int(p.n);
    lp.units = int(p.units());
    lp.groups = int(p.groups());
    lp.group_size = int(p.group_size);
    lp.group_shift = -1;  // the division (the emulation takes the shift)
    std::vector<float> got(size_t(p.n * p.k));
    auto decode_all = [&](auto bits_tag, auto cb_tag) {
      constexpr int B = decltype(bits_tag)::value;
      constexpr bool CB = decltype(cb_tag)::value;
      for (int n = 0; n < int(p.n); ++n)
        for (int u = 0; u < int(p.units()); ++u) {
          uint32_t w[4 * B];
          cuda::gemv_lane::load_unit<B>(lp, n, u, w);
          for (int i = 0; i < 128; ++i) {
            const int64_t c0 = pack::gemv::run_column(u, i / 8), col = c0 + i % 8;
            if (col >= p.k) continue;
            const uint32_t sw = cuda::gemv_lane::load_group_scale(lp, n, int(c0));
            got[size_t(n * p.k + col)] =
                cuda::gemv_lane::decode<CB>(pack::gemv::unit_code(w, B, i), sw, p.codebook.data());
          }
        }
    };
    using F = std::false_type;
    if (p.kind == pack::gemv::Kind::Codebook) decode_all(std::integral_constant<int, 4>{}, std::true_type{});
    else if (p.bits == 2) decode_all(std::integral_constant<int, 2>{}, F{});
    else if (p.bits == 3) decode_all(std::integral_constant<int, 3>{}, F{});
    else if (p.bits == 4) decode_all(std::integral_constant<int, 4>{}, F{});
    else decode_all(std::integral_constant<int, 8>{}, F{});
    ASSERT_EQ(got, want);
  }
}

}  // namespace
}  // namespace lowbit
