// The GPU's low-bit GEMV layout packed on the host (src/pack/gemv_pack.h), checked on the CPU:
// the round trip back to codes, scales and zero-points for random codes of every width, group
// sizes 32/64/128 and K on both sides of the 1024-column tile; the layout's dequantized weight
// against the format's own dequantize (QuantizedLinear::dequantize, int and NF4 with double
// quantization); the raw code words against the bit drawing of gemv_layout.h, written out here a
// second time independently of unit_code/word_index; padding; the layout --packed picks per
// linear (pack/gpu_packed.h); and the errors for linears the layout cannot hold.
#include "core/dtype.h"
#include "core/error.h"
#include "pack/gemv_pack.h"
#include "pack/gpu_packed.h"
#include "quant/nf4.h"
#include "w4_test_linear.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace lowbit {
namespace {

using test::random_w4_linear;
using test::W4Order;
using test::W4Scales;

struct Shape {
  int64_t rows, cols, group;
};
// K below, at and past the 1024-column tile, a partial last group (200 % 64, 172 % 32), groups
// larger than K.
const Shape kShapes[] = {{3, 128, 128}, {5, 200, 64}, {64, 172, 32},  {17, 384, 128},
                         {2, 96, 128},  {9, 256, 32}, {33, 1024, 64}, {4, 4096, 128}};

// A random NF4 linear from lowbit's own quantizer (with or without double quantization).
QuantizedLinear random_nf4(int64_t rows, int64_t cols, int64_t block, bool dq, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> w(size_t(rows * cols));
  for (auto& v : w) v = normal(rng);
  return nf4_quantize(w.data(), rows, cols, block, dq, DType::BF16);
}

std::vector<float> fake_quant(const QuantizedLinear& q) {
  std::vector<float> w(size_t(q.rows * q.cols));
  q.dequantize(w.data());
  return w;
}

TEST(GemvPack, IntRoundTripKeepsCodesScalesAndZeros) {
  std::mt19937 rng(11);
  for (int bits : {1, 2, 3, 4, 5, 7, 8})
    for (const Shape& s : kShapes) {
      SCOPED_TRACE(std::to_string(bits) + " bits [" + std::to_string(s.rows) + ", " + std::to_string(s.cols) +
                   "] g" + std::to_string(s.group));
      const QuantizedLinear q = random_w4_linear(s.rows, s.cols, s.group, bits, W4Order::Plain, W4Scales::Bf16, rng);
      const pack::GemvPacked p = pack::pack_gemv(q, "test");
      EXPECT_EQ(p.bits, bits <= 2 ? 2 : bits <= 4 ? bits : 8);
      EXPECT_EQ(int64_t(p.codes.size()), s.rows * p.units() * 4 * p.bits);
      const pack::GemvUnpacked u = pack::unpack_gemv(p);
      ASSERT_EQ(u.codes, q.codes);
      ASSERT_EQ(u.scales, q.scales);  // bf16 values: kept exactly
      ASSERT_EQ(u.zeros, q.zeros);
      // The layout's weight is the fake-quant bf16 weight, bit for bit.
      ASSERT_EQ(pack::dequantize_gemv(p), fake_quant(q));
    }
}

TEST(GemvPack, IntScalesAreRoundedToBf16) {
  std::mt19937 rng(12);
  const QuantizedLinear q = random_w4_linear(6, 256, 64, 3, W4Order::Plain, W4Scales::F32, rng);
  const pack::GemvUnpacked u = pack::unpack_gemv(pack::pack_gemv(q, "test"));
  for (size_t i = 0; i < q.scales.size(); ++i) EXPECT_EQ(u.scales[i], bf16_to_f32(f32_to_bf16(q.scales[i])));
}

TEST(GemvPack, Nf4RoundTripAndDequantizeEqualTheFormat) {
  std::mt19937 rng(13);
  for (bool dq : {false, true})
    for (const Shape& s : {Shape{4, 128, 64}, Shape{7, 448, 64}, Shape{16, 256, 128}, Shape{3, 4096, 64}}) {
      SCOPED_TRACE(std::string(dq ? "dq " : "") + std::to_string(s.rows) + "x" + std::to_string(s.cols));
      const QuantizedLinear q = random_nf4(s.rows, s.cols, s.group, dq, rng);
      ASSERT_TRUE(pack::can_pack_gemv(q));
      const pack::GemvPacked p = pack::pack_gemv(q, "test");
      EXPECT_EQ(p.bits, 4);
      EXPECT_EQ(p.kind, pack::gemv::Kind::Codebook);
      const pack::GemvUnpacked u = pack::unpack_gemv(p);
      ASSERT_EQ(u.codes, q.codes);
      // The (double-quantization-decoded) fp32 absmax values, exactly.
      ASSERT_EQ(u.scales, q.scales);
      EXPECT_TRUE(u.zeros.empty());
      ASSERT_EQ(pack::dequantize_gemv(p), fake_quant(q));
    }
}

// One nonzero code per matrix, at a chosen (row, column): exactly the words the drawing in
// gemv_layout.h names hold it, at the drawn bits; every other word is 0.
TEST(GemvPack, CodeWordsFollowTheDrawing) {
  struct Probe {
    int q_bits, row, col;
    uint32_t code;
  };
  const int64_t rows = 3, cols = 1300;  // 2 tiles (16 units) a row, the second mostly padding
  for (const Probe& pr : {Probe{2, 1, 37, 2}, Probe{2, 2, 1299, 3}, Probe{3, 1, 37, 5}, Probe{3, 0, 200, 6},
                          Probe{3, 2, 1131, 3}, Probe{4, 2, 133, 11}, Probe{8, 1, 1023, 201}, Probe{8, 0, 6, 77},
                          Probe{2, 0, 0, 1}, Probe{3, 1, 1087, 7}}) {
    SCOPED_TRACE(std::to_string(pr.q_bits) + " bits at [" + std::to_string(pr.row) + ", " + std::to_string(pr.col) +
                 "]");
    QuantizedLinear q;
    q.rows = rows;
    q.cols = cols;
    q.bits = pr.q_bits;
    q.group_size = 32;
    q.codes.assign(size_t(rows * cols), 0);
    q.codes[size_t(pr.row * cols + pr.col)] = uint8_t(pr.code);
    q.scales.assign(size_t(q.num_scale_groups()), 1.0f);
    q.zeros.assign(q.scales.size(), 0.0f);
    const pack::GemvPacked p = pack::pack_gemv(q, "test");
    ASSERT_EQ(p.units(), 16);
    // Column c is code 8 (c % 1024 / 64) + c % 8 of unit 8 (c / 1024) + c % 64 / 8.
    const int64_t units = 16, b = pr.q_bits;
    const int64_t u = 8 * (pr.col / 1024) + pr.col % 64 / 8, i = 8 * (pr.col % 1024 / 64) + pr.col % 8;
    // Word W of unit u of row n is 32-bit word ((n * b + W / 4) * units + u) * 4 + W % 4.
    auto at = [&](int64_t W) { return size_t(((pr.row * b + W / 4) * units + u) * 4 + W % 4); };
    std::vector<uint32_t> expect(p.codes.size(), 0u);
    if (b == 3) {
      expect[at(i / 16)] |= (pr.code & 3u) << (2 * (i % 16));
      expect[at(8 + i / 32)] |= (pr.code >> 2) << (i % 32);
    } else {
      const int64_t per = 32 / b;
      expect[at(i / per)] |= pr.code << (b * (i % per));
    }
    EXPECT_EQ(p.codes, expect);
  }
}

TEST(GemvPack, RunColumnAndColumnSlotAreInverse) {
  for (int64_t c = 0; c < 3 * pack::gemv::kTileCodes; ++c) {
    const pack::gemv::CodeSlot s = pack::gemv::column_slot(c);
    ASSERT_EQ(pack::gemv::run_column(s.unit, s.code / 8) + s.code % 8, c);
  }
}

TEST(GemvPack, PaddingIsZero) {
  std::mt19937 rng(14);
  // K = 200: one tile of 8 units, 824 padding columns; groups of 64.
  const QuantizedLinear q = random_w4_linear(5, 200, 64, 3, W4Order::Plain, W4Scales::Bf16, rng);
  const pack::GemvPacked p = pack::pack_gemv(q, "test");
  ASSERT_EQ(p.units(), 8);
  ASSERT_EQ(p.padded_k(), 1024);
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t u = 0; u < 8; ++u) {
      uint32_t w[12];
      for (int W = 0; W < 12; ++W) w[W] = p.codes[size_t(pack::gemv::word_index(n, u, W, 3, 8))];
      for (int i = 0; i < 128; ++i)
        if (pack::gemv::run_column(u, i / 8) + i % 8 >= 200) {
          EXPECT_EQ(pack::gemv::unit_code(w, 3, i), 0u) << n << " " << i;
        }
    }
  // K = 64, groups of 32: the linear has 2 groups a row, the layout 32 (1024 padded columns),
  // those past the linear's with scale word 0.
  const QuantizedLinear q3 = random_w4_linear(2, 64, 32, 8, W4Order::Plain, W4Scales::Bf16, rng);
  const pack::GemvPacked p3 = pack::pack_gemv(q3, "test");
  ASSERT_EQ(p3.groups(), 32);
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t g = 2; g < 32; ++g) EXPECT_EQ(p3.scales[size_t(n * 32 + g)], 0u);
}

void expect_refused(const QuantizedLinear& q, const std::string& needle) {
  EXPECT_FALSE(pack::can_pack_gemv(q));
  try {
    (void)pack::pack_gemv(q, "blk.0.test");
    ADD_FAILURE() << "no error; expected one naming '" << needle << "'";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("blk.0.test"), std::string::npos) << m;
    EXPECT_NE(m.find(needle), std::string::npos) << m;
  }
}

TEST(GemvPack, RefusesWhatTheLayoutCannotHold) {
  std::mt19937 rng(15);
  // Group sizes that are not multiples of 32.
  expect_refused(random_w4_linear(4, 96, 48, 2, W4Order::Plain, W4Scales::Bf16, rng), "group size 48");
  expect_refused(random_w4_linear(4, 100, 100, 3, W4Order::Plain, W4Scales::Bf16, rng), "group size 100");
  // act_order.
  expect_refused(random_w4_linear(4, 256, 64, 2, W4Order::ActOrder, W4Scales::Bf16, rng), "act_order");
  // NF4 blocks of 64 over rows of 172 columns (stories260K's down_proj) straddle rows.
  expect_refused(random_nf4(64, 172, 64, true, rng), "straddle rows");
  // Zero-points that are not integers in [-256, 256].
  QuantizedLinear z = random_w4_linear(2, 64, 32, 8, W4Order::Plain, W4Scales::Bf16, rng);
  z.zeros[1] = 2.5f;
  EXPECT_THROW(pack::pack_gemv(z, "t"), Error);
  z.zeros[1] = 300.0f;
  EXPECT_THROW(pack::pack_gemv(z, "t"), Error);
  // A 5-bit codebook.
  QuantizedLinear cb = random_nf4(2, 64, 64, false, rng);
  cb.bits = 5;
  cb.codebook.resize(32, 0.0f);
  expect_refused(cb, "5-bit codes");
  // A format with no GPU kernel.
  QuantizedLinear other = random_w4_linear(2, 64, 32, 2, W4Order::Plain, W4Scales::Bf16, rng);
  other.format = &kPbllmFormat;
  expect_refused(other, "pbllm");
  // A trivial g_idx (c / group_size) is no act_order.
  QuantizedLinear plain = random_w4_linear(3, 128, 32, 3, W4Order::Plain, W4Scales::Bf16, rng);
  plain.g_idx.resize(128);
  for (int c = 0; c < 128; ++c) plain.g_idx[size_t(c)] = c / 32;
  EXPECT_TRUE(pack::can_pack_gemv(plain));
  EXPECT_EQ(pack::dequantize_gemv(pack::pack_gemv(plain, "t")), fake_quant(plain));
}

TEST(GpuPackedLayout, PicksTheKernelsOrRefuses) {
  using pack::GpuPackedLayout;
  std::mt19937 rng(16);
  auto layout = [](const QuantizedLinear& q) { return pack::gpu_packed_layout(q, "blk.1.mlp"); };
  EXPECT_EQ(layout(random_w4_linear(4, 128, 128, 4, W4Order::Plain, W4Scales::Bf16, rng)), GpuPackedLayout::W4A16);
  EXPECT_EQ(layout(random_w4_linear(4, 128, 128, 2, W4Order::Plain, W4Scales::Bf16, rng)), GpuPackedLayout::Gemv);
  EXPECT_EQ(layout(random_w4_linear(4, 128, 64, 3, W4Order::Plain, W4Scales::Bf16, rng)), GpuPackedLayout::Gemv);
  EXPECT_EQ(layout(random_w4_linear(4, 128, 32, 8, W4Order::Plain, W4Scales::Bf16, rng)), GpuPackedLayout::Gemv);
  EXPECT_EQ(layout(random_nf4(4, 128, 64, true, rng)), GpuPackedLayout::Gemv);
  // Up to 4 bits the tiles take what the GEMV layout cannot (act_order, odd group sizes).
  EXPECT_EQ(layout(random_w4_linear(4, 256, 64, 2, W4Order::ActOrder, W4Scales::Bf16, rng)), GpuPackedLayout::W4A16);
  EXPECT_EQ(layout(random_w4_linear(4, 96, 48, 3, W4Order::Plain, W4Scales::Bf16, rng)), GpuPackedLayout::W4A16);
  // Beyond them: refused, naming the linear and the reason.
  for (const QuantizedLinear& q : {random_w4_linear(4, 256, 64, 8, W4Order::ActOrder, W4Scales::Bf16, rng),
                                   random_nf4(64, 172, 64, false, rng)}) {
    try {
      (void)layout(q);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("blk.1.mlp"), std::string::npos) << m;
      EXPECT_NE(m.find("no kernel"), std::string::npos) << m;
    }
  }
}

}  // namespace
}  // namespace lowbit
