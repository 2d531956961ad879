// The GPU's W4A16 tiles packed on the host (src/pack/w4_tiles.h), checked on the CPU: the round
// trip back to codes, scales and zero-points; the dequantized tiles against the fake-quant
// weight (QuantizedLinear::dequantize); every code word of a step against the bit drawing in
// w4_tiles_layout.h (the order the tensor-core kernel's fragment arithmetic assumes), which is
// written out here a second time, independently of code_pos(); the slot order of act_order and
// uneven groups; padding; and the errors for layouts the tiles cannot hold.
#include "core/error.h"
#include "pack/w4_tiles.h"
#include "w4_test_linear.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace lowbit {
namespace {

using test::random_w4_linear;
using test::W4Order;
using test::W4Scales;

struct Shape {
  int64_t rows, cols, group;
  int bits;
  W4Order order;
};

// Edges: N below, at and above the 64-column chunk; K and group sizes that are and are not
// multiples of the 16-slot step; a group size larger than K; act_order and uneven groups.
const Shape kShapes[] = {
    {64, 128, 128, 4, W4Order::Plain},    {72, 256, 128, 4, W4Order::Plain},  {130, 200, 128, 4, W4Order::Plain},
    {5, 100, 100, 3, W4Order::Plain},     {128, 300, 48, 4, W4Order::Plain},  {65, 320, 64, 4, W4Order::ActOrder},
    {33, 250, 32, 2, W4Order::ActOrder},  {70, 192, 40, 4, W4Order::Uneven},  {8, 40, 128, 1, W4Order::Plain},
    {200, 1040, 128, 4, W4Order::Plain},
};

TEST(W4Tiles, RoundTripKeepsCodesScalesAndZeros) {
  std::mt19937 rng(7);
  for (const Shape& s : kShapes)
    for (W4Scales sc : {W4Scales::Bf16, W4Scales::F32}) {
      SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols << " group " << s.group << " bits " << s.bits
                                        << " order " << int(s.order) << " scales " << int(sc));
      const QuantizedLinear q = random_w4_linear(s.rows, s.cols, s.group, s.bits, s.order, sc, rng);
      const pack::W4Tiles t = pack::pack_w4_tiles(q, "layer");
      EXPECT_EQ(t.group_slots % 16, 0);
      EXPECT_EQ(t.padded_n() % 64, 0);
      EXPECT_GE(t.padded_n(), t.n);
      EXPECT_EQ(t.codes.size(), size_t(t.chunks() * t.ksteps() * 128));
      const pack::W4Unpacked u = pack::unpack_w4_tiles(t);
      EXPECT_EQ(u.codes, q.codes);
      ASSERT_EQ(u.scales.size(), q.scales.size());
      for (size_t i = 0; i < q.scales.size(); ++i) {
        ASSERT_EQ(u.scales[i], bf16_to_f32(f32_to_bf16(q.scales[i]))) << i;
        ASSERT_EQ(u.zeros[i], q.zeros[i]) << i;
      }
    }
}

TEST(W4Tiles, DequantizedTilesEqualTheFakeQuantWeight) {
  // With bf16 scales the tiles' w = bf16(scale * (code - zero)) is the fake-quant bf16 weight
  // bit for bit; with fp32 scales it is off by the scale's rounding to bf16 (2^-9 relative) at
  // most, plus the weight's own rounding (2^-9 relative).
  std::mt19937 rng(11);
  for (const Shape& s : kShapes)
    for (W4Scales sc : {W4Scales::PowerOfTwo, W4Scales::Bf16, W4Scales::F32}) {
      SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols << " group " << s.group << " scales " << int(sc));
      const QuantizedLinear q = random_w4_linear(s.rows, s.cols, s.group, s.bits, s.order, sc, rng);
      const Tensor ref = q.dequantize_f32();
      const std::vector<float> got = pack::dequantize_w4_tiles(pack::pack_w4_tiles(q, "layer"));
      const float* r = ref.data_as<float>();
      for (size_t i = 0; i < got.size(); ++i) {
        if (sc == W4Scales::F32) {
          ASSERT_NEAR(got[i], r[i], std::ldexp(std::fabs(r[i]), -7) + 1e-30f) << i;
        } else {
          ASSERT_EQ(got[i], r[i]) << i;
        }
      }
    }
}

// The bit drawing of w4_tiles_layout.h, written out on its own: word j of lane 4g + t of one
// (chunk, k-step) holds, from bit 0 up, q(2j, 2t), q(2j, 2t+8), q(2j+1, 2t), q(2j+1, 2t+8),
// q(2j, 2t+1), q(2j, 2t+9), q(2j+1, 2t+1), q(2j+1, 2t+9), where q(tile, row) is the code of
// column 64 chunk + 8 tile + g at slot 16 kstep + row.
TEST(W4Tiles, CodeWordsFollowTheFragmentDrawing) {
  std::mt19937 rng(3);
  const QuantizedLinear q = random_w4_linear(150, 96, 32, 4, W4Order::Plain, W4Scales::Bf16, rng);
  const pack::W4Tiles t = pack::pack_w4_tiles(q, "layer");
  ASSERT_TRUE(t.source_col.empty());
  ASSERT_EQ(t.ksteps(), 6);
  const struct {
    int tile_add, row_add;
  } nibble[8] = {{0, 0}, {0, 8}, {1, 0}, {1, 8}, {0, 1}, {0, 9}, {1, 1}, {1, 9}};
  auto code = [&](int64_t n, int64_t k) -> uint32_t { return n < q.rows ? q.codes[size_t(n * q.cols + k)] : 0u; };
  for (int64_t chunk = 0; chunk < t.chunks(); ++chunk)
    for (int64_t ks = 0; ks < t.ksteps(); ++ks)
      for (int lane = 0; lane < 32; ++lane)
        for (int j = 0; j < 4; ++j) {
          const int g = lane / 4, tt = lane % 4;
          uint32_t expect = 0;
          for (int b = 0; b < 8; ++b) {
            const int64_t n = 64 * chunk + 8 * (2 * j + nibble[b].tile_add) + g;
            const int64_t k = 16 * ks + 2 * tt + nibble[b].row_add;
            expect |= code(n, k) << (4 * b);
          }
          const size_t word = size_t(((chunk * t.ksteps() + ks) * 32 + lane) * 4 + j);
          ASSERT_EQ(t.codes[word], expect) << "chunk " << chunk << " step " << ks << " lane " << lane << " word " << j;
        }
  // Scale words: [chunk][group][g][tile] = bf16(scale) | bf16(128 + zero) << 16; padded columns 0.
  for (int64_t n = 0; n < t.padded_n(); ++n)
    for (int64_t grp = 0; grp < t.groups; ++grp) {
      const size_t idx = size_t((((n / 64) * t.groups + grp) * 8 + n % 8) * 8 + (n % 64) / 8);
      uint32_t expect = 0;
      if (n < q.rows) {
        const size_t i = size_t(n * t.groups + grp);
        expect = uint32_t(f32_to_bf16(q.scales[i])) | uint32_t(f32_to_bf16(128.0f + q.zeros[i])) << 16;
      }
      ASSERT_EQ(t.scales[idx], expect) << "column " << n << " group " << grp;
    }
}

TEST(W4Tiles, CodePositionsAreDistinct) {
  // Every (column, slot) of a padded matrix has its own nibble, and all nibbles are used.
  const int64_t ksteps = 3, np = 128;
  std::set<std::pair<int64_t, int>> seen;
  for (int64_t n = 0; n < np; ++n)
    for (int64_t k = 0; k < ksteps * 16; ++k) {
      const pack::w4::CodePos p = pack::w4::code_pos(n, k, ksteps);
      ASSERT_GE(p.word, 0);
      ASSERT_LT(p.word, np / 64 * ksteps * 128);
      ASSERT_EQ(p.shift % 4, 0);
      ASSERT_TRUE(seen.insert({p.word, p.shift}).second) << n << " " << k;
    }
  EXPECT_EQ(int64_t(seen.size()), np * ksteps * 16);
}

TEST(W4Tiles, NibbleCoordinatesInvertCodePositions) {
  // What a kernel's lane reads from its 16 bytes (nibble_coord) is where the packer put it.
  const int64_t ksteps = 5;
  for (int64_t chunk = 0; chunk < 3; ++chunk)
    for (int64_t ks = 0; ks < ksteps; ++ks)
      for (int lane = 0; lane < 32; ++lane)
        for (int j = 0; j < 4; ++j)
          for (int p = 0; p < 4; ++p)
            for (int odd = 0; odd < 2; ++odd) {
              const pack::w4::NibbleCoord c = pack::w4::nibble_coord(chunk, ks, lane, j, p, odd);
              const pack::w4::CodePos pos = pack::w4::code_pos(c.n, c.k, ksteps);
              ASSERT_EQ(pos.word, ((chunk * ksteps + ks) * 32 + lane) * 4 + j);
              ASSERT_EQ(pos.shift, 4 * p + 16 * odd);
            }
}

TEST(W4Tiles, SlotOrderAndPadding) {
  std::mt19937 rng(5);
  {  // Plain groups of a multiple of 16: identity, slots from K on are padding.
    const QuantizedLinear q = random_w4_linear(10, 200, 128, 4, W4Order::Plain, W4Scales::Bf16, rng);
    const pack::W4Tiles t = pack::pack_w4_tiles(q, "layer");
    EXPECT_TRUE(t.source_col.empty());
    EXPECT_EQ(t.group_slots, 128);
    EXPECT_EQ(t.padded_k(), 256);
  }
  {  // A group size of 40: groups padded to 48 slots.
    const QuantizedLinear q = random_w4_linear(10, 100, 40, 4, W4Order::Plain, W4Scales::Bf16, rng);
    const pack::W4Tiles t = pack::pack_w4_tiles(q, "layer");
    EXPECT_EQ(t.group_slots, 48);
    ASSERT_EQ(t.source_col.size(), size_t(144));
    for (int64_t s = 0; s < 144; ++s) {
      const int64_t g = s / 48, i = s % 48;
      const int64_t expect = i < 40 && g * 40 + i < 100 ? g * 40 + i : -1;
      ASSERT_EQ(t.source_col[size_t(s)], expect) << s;
    }
  }
  for (W4Order order : {W4Order::ActOrder, W4Order::Uneven}) {  // each group's columns ascending
    const QuantizedLinear q = random_w4_linear(10, 300, 64, 4, order, W4Scales::Bf16, rng);
    const pack::W4Tiles t = pack::pack_w4_tiles(q, "layer");
    ASSERT_EQ(t.source_col.size(), size_t(t.padded_k()));
    std::vector<int> hits(300, 0);
    int64_t largest = 0;
    for (int64_t g = 0; g < t.groups; ++g) {
      int64_t prev = -1, count = 0;
      for (int64_t i = 0; i < t.group_slots; ++i) {
        const int32_t c = t.source_col[size_t(g * t.group_slots + i)];
        if (c < 0) {
          prev = INT64_MAX;  // padding only after the members
          continue;
        }
        ASSERT_GT(c, prev) << "group " << g;
        ASSERT_EQ(q.g_idx[size_t(c)], g);
        prev = c;
        ++hits[size_t(c)];
        ++count;
      }
      largest = std::max(largest, count);
    }
    for (int h : hits) ASSERT_EQ(h, 1);
    EXPECT_EQ(t.group_slots, (largest + 15) / 16 * 16);
  }
}

TEST(W4Tiles, RefusesLayoutsItCannotHold) {
  std::mt19937 rng(9);
  auto expect_error = [](const QuantizedLinear& q, const std::string& part) {
    try {
      pack::pack_w4_tiles(q, "blk.3.ffn_up");
      FAIL() << "no error for " << part;
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("blk.3.ffn_up"), std::string::npos) << m;
      EXPECT_NE(m.find(part), std::string::npos) << m;
    }
  };
  QuantizedLinear q = random_w4_linear(8, 64, 32, 4, W4Order::Plain, W4Scales::Bf16, rng);
  QuantizedLinear b = q;
  b.bits = 5;
  expect_error(b, "5");
  b = q;
  b.zeros[3] = 2.5f;
  expect_error(b, "2.5");
  b = q;
  b.zeros[0] = 200.0f;
  expect_error(b, "200");
  b = q;
  b.format = &kCodebookFormat;
  expect_error(b, "codebook");
  b = q;
  b.codes.pop_back();
  expect_error(b, "511 codes");
  b = q;
  b.codes[17] = 16;  // out of range for 4 bits
  b.bits = 4;
  expect_error(b, "16");
  b = q;
  b.format = &kCodebookFormat;
  EXPECT_FALSE(pack::can_pack_w4_tiles(b));
  EXPECT_TRUE(pack::can_pack_w4_tiles(q));
}

}  // namespace
}  // namespace lowbit
