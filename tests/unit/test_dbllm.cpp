// DB-LLM's fdb format and its initialization: the FDB form of a 2-bit RTN weight dequantizes to
// the RTN weight bit for bit (every zero-point 0..3, fp32 and bf16 models), the packed block
// round-trips, the paper's fixed grid keeps its levels, and bad input is refused.
#include "core/error.h"
#include "formats/llama_config.h"
#include "quant/dbllm.h"
#include "quant/formats/bit_plane.h"
#include "quant/formats/fdb_format.h"
#include "quant/method.h"
#include "quant/rtn.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <set>

namespace lowbit {
namespace {

// [rows, cols] weights whose groups of 128 take every zero-point: all positive (z = 0), all
// negative (z = 3), and mixed with either side larger (z = 1, 2).
std::vector<float> mixed_weights(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> w(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float v = nd(gen);
      switch ((r + c / 128) % 4) {
        case 0: v = std::fabs(v) + 0.001f; break;
        case 1: v = -std::fabs(v) - 0.001f; break;
        case 2: v = v > 0 ? 2.5f * v : v; break;
        default: v = v < 0 ? 2.5f * v : v; break;
      }
      w[size_t(r * cols + c)] = v;
    }
  return w;
}

TEST(Fdb, InitFromRtnEqualsRtnBitForBit) {
  const int64_t rows = 24, cols = 512;
  const auto w = mixed_weights(rows, cols, 1);
  for (DType dt : {DType::F32, DType::BF16}) {
    const QuantizedLinear rtn = rtn_quantize(w.data(), rows, cols, 2, 128, false, dt);
    std::set<float> zs(rtn.zeros.begin(), rtn.zeros.end());
    EXPECT_EQ(zs, (std::set<float>{0.0f, 1.0f, 2.0f, 3.0f}));  // every zero-point is exercised
    const QuantizedLinear fdb = fdb_from_int2(rtn, true);
    fdb.validate("fdb");
    const Tensor a = rtn.dequantize_f32(), b = fdb.dequantize_f32();
    EXPECT_EQ(std::memcmp(a.data(), b.data(), size_t(a.nbytes())), 0);
    // The init is the paper's alpha1 = 2s, alpha2 = -s.
    for (int64_t s = 0; s < rtn.num_scale_groups(); ++s) {
      EXPECT_EQ(fdb_alpha(fdb)[3 * s], 2.0f * rtn.scales[size_t(s)]);
      EXPECT_EQ(fdb_alpha(fdb)[3 * s + 1], -rtn.scales[size_t(s)]);
    }
    EXPECT_DOUBLE_EQ(fdb.bits_per_weight(), 2.0 + 48.0 / 128.0);
  }
}

// The paper's binarization b1 = H(w' - (a1 + a2) / 2), b2 = H(-(w' - a1 b1 - a2 / 2)), w' = w - beta,
// applied to the dequantized weight, gives back the stored planes: the planes are the nearest
// dual-binary levels, which re-binarization during training relies on.
TEST(Fdb, HeavisideBinarizationRecoversPlanes) {
  const int64_t rows = 8, cols = 256;
  const auto w = mixed_weights(rows, cols, 2);
  const QuantizedLinear fdb = fdb_from_int2(rtn_quantize(w.data(), rows, cols, 2, 128, false, DType::F32), true);
  const Tensor d = fdb.dequantize_f32();
  const uint8_t* p1 = fdb.extras.at("fdb.b1").data_as<uint8_t>();
  const uint8_t* p2 = fdb.extras.at("fdb.b2").data_as<uint8_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float* a = fdb_alpha(fdb) + 3 * (r * 2 + c / 128);
      const double x = double(d.data_as<float>()[r * cols + c]) - a[2];
      const int b1 = x - (double(a[0]) + a[1]) / 2 >= 0;
      const int b2 = -(x - a[0] * b1 - double(a[1]) / 2) >= 0;
      EXPECT_EQ(b1, int(plane_bit(p1, cols, r, c)));
      EXPECT_EQ(b2, int(plane_bit(p2, cols, r, c)));
    }
}

TEST(Fdb, PaperGridHasFourLevelsAndCoversTheGroup) {
  const int64_t rows = 16, cols = 256;
  const auto w = mixed_weights(rows, cols, 3);
  const QuantizedLinear q2 = rtn2_paper_grid(w.data(), rows, cols, 128, DType::F32);
  const QuantizedLinear fdb = fdb_from_int2(q2, false);
  fdb.validate("fdb");
  EXPECT_DOUBLE_EQ(fdb.bits_per_weight(), 2.25);
  const Tensor d = fdb.dequantize_f32();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < 2; ++g) {
      const float s = q2.scales[size_t(r * 2 + g)];
      for (int64_t c = g * 128; c < (g + 1) * 128; ++c) {
        const float v = d.data_as<float>()[r * cols + c];
        EXPECT_TRUE(v == -s || v == 0.0f || v == s || v == 2 * s) << v << " " << s;
        EXPECT_LE(std::fabs(v - w[size_t(r * cols + c)]), s / 2 * (1 + 1e-6f));
      }
    }
}

TEST(Fdb, PackedBlocksRoundTrip) {
  const int64_t rows = 5, cols = 384;
  const auto w = mixed_weights(rows, cols, 4);
  const QuantizedLinear fdb = fdb_from_int2(rtn_quantize(w.data(), rows, cols, 2, 128, false, DType::F32), true);
  const auto blocks = fdb_pack128(fdb);
  ASSERT_EQ(blocks.size(), size_t(rows * 3));
  const QuantizedLinear back = fdb_unpack128(blocks, rows, cols, true, DType::F32);
  for (const char* p : {"fdb.b1", "fdb.b2"})
    EXPECT_EQ(std::memcmp(back.extras.at(p).data(), fdb.extras.at(p).data(), size_t(fdb.extras.at(p).nbytes())), 0);
  for (int64_t i = 0; i < rows * 3 * 3; ++i)
    EXPECT_EQ(fdb_alpha(back)[i], f16_to_f32(f32_to_f16(fdb_alpha(fdb)[i])));
  // Bit order as drawn: bit j of b1[i] is column 8 i + j of the group.
  for (int64_t c = 0; c < 128; ++c)
    EXPECT_EQ(((blocks[1].b1[c / 8] >> (c % 8)) & 1) != 0,
              plane_bit(fdb.extras.at("fdb.b1").data_as<uint8_t>(), cols, 0, 128 + c));
}

TEST(Fdb, BadInputIsRefused) {
  const int64_t rows = 4, cols = 256;
  const auto w = mixed_weights(rows, cols, 5);
  EXPECT_THROW(fdb_from_int2(rtn_quantize(w.data(), rows, cols, 3, 128, false, DType::F32), true), Error);
  EXPECT_THROW(fdb_from_int2(rtn_quantize(w.data(), rows, cols, 2, 128, false, DType::F32), false), Error);
  EXPECT_THROW(fdb_from_int2(rtn_quantize(w.data(), rows, cols, 2, 96, false, DType::F32), true), Error);
  QuantizedLinear fdb = fdb_from_int2(rtn_quantize(w.data(), rows, cols, 2, 128, false, DType::F32), true);
  QuantizedLinear missing = fdb;
  missing.extras.erase("fdb.b2");
  EXPECT_THROW(missing.validate("x"), Error);
  QuantizedLinear short_alpha = fdb;
  short_alpha.extras["fdb.alpha"] = Tensor::empty(DType::F32, {3, 3});
  EXPECT_THROW(short_alpha.validate("x"), Error);
  QuantizedLinear nan_alpha = fdb;
  nan_alpha.extras["fdb.alpha"] = Tensor::empty(DType::F32, {rows * 2, 3});
  nan_alpha.extras["fdb.alpha"].mutable_data_as<float>()[4] = NAN;
  EXPECT_THROW(nan_alpha.validate("x"), Error);
  EXPECT_THROW(fdb_unpack128(fdb_pack128(fdb), rows, cols + 128, true, DType::F32), Error);
  EXPECT_THROW(make_method("dbllm:init=gptq,offset=0"), Error);
  EXPECT_THROW(make_method("dbllm:init=awq"), Error);
  EXPECT_THROW(make_method("dbllm:g=128,bits=3"), Error);
  LlamaConfig c;
  c.hidden_size = 192;
  c.intermediate_size = 512;
  c.num_attention_heads = 3;
  c.num_key_value_heads = 1;
  c.head_dim = 64;
  EXPECT_THROW(make_method("dbllm:g=128")->check_shapes(c), Error);
}

}  // namespace
}  // namespace lowbit
