// The int32 packings of the export formats against the consumers' own packing code
// (tests/fixtures/export/packing.safetensors, scripts/make_export_fixtures.py:
// compressed_tensors' pack_to_int32, AutoAWQ's pack_exllama and unpack_awq/reverse_awq_order),
// and lowbit int grids as ggml blocks read back by the ggml dequantizers.
#include "core/dtype.h"
#include "export/export_gguf_types.h"
#include "export/int32_packing.h"
#include "formats/ggml_quants.h"
#include "formats/safetensors.h"
#include "test_util.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>

namespace lowbit {
namespace {

std::shared_ptr<const SafetensorsFile> fixture() {
  return SafetensorsFile::open(test::fixtures_dir() + "/export/packing.safetensors");
}

template <typename T>
std::vector<T> values_of(const Tensor& t) {
  std::vector<T> v(size_t(t.numel()));
  std::memcpy(v.data(), t.data(), v.size() * sizeof(T));
  return v;
}

std::vector<uint32_t> widen(const Tensor& t) {
  const std::vector<uint8_t> v = values_of<uint8_t>(t);
  return std::vector<uint32_t>(v.begin(), v.end());
}

TEST(ExportPacking, DenseRowsMatchCompressedTensors) {
  auto f = fixture();
  for (int b = 1; b <= 8; ++b) {
    const Tensor values = f->tensor(fmt::format("dense_b{}_values", b));
    const Tensor words = f->tensor(fmt::format("dense_b{}_words", b));
    const std::vector<int32_t> got = pack_dense_rows(widen(values), values.dim(0), values.dim(1), b);
    EXPECT_EQ(int64_t(got.size()), words.numel()) << b;
    EXPECT_EQ(got, values_of<int32_t>(words)) << b << " bits";
  }
}

TEST(ExportPacking, GptqLayoutMatchesAutoAwqPackExllama) {
  auto f = fixture();
  for (int b : {2, 4, 8}) {
    const Tensor iw = f->tensor(fmt::format("gptq_b{}_iweight", b));  // [in, out]
    const Tensor iz = f->tensor(fmt::format("gptq_b{}_izeros", b));   // [G, out]
    const int64_t in = iw.dim(0), out = iw.dim(1);
    // As gptq_export.cpp packs: the rows of the weight [out, in] packed, then transposed.
    const std::vector<uint32_t> w_t = transpose(widen(iw), in, out);
    const std::vector<int32_t> packed = pack_dense_rows(w_t, out, in, b);
    EXPECT_EQ(transpose(packed, out, in * b / 32), values_of<int32_t>(f->tensor(fmt::format("gptq_b{}_qweight", b))))
        << b << " bits";
    EXPECT_EQ(pack_dense_rows(widen(iz), iz.dim(0), out, b),
              values_of<int32_t>(f->tensor(fmt::format("gptq_b{}_qzeros", b))))
        << b << " bits";
  }
}

TEST(ExportPacking, AwqOrderInvertsAutoAwqUnpacking) {
  auto f = fixture();
  const Tensor values = f->tensor("awq_values");
  EXPECT_EQ(pack_awq_rows(widen(values), values.dim(0), values.dim(1)), values_of<int32_t>(f->tensor("awq_words")));
}

// A [2, 64] int grid with fp16-exact scales in groups of 32.
QuantizedLinear grid(int bits, bool sym) {
  QuantizedLinear q;
  q.rows = 2;
  q.cols = 64;
  q.bits = bits;
  q.group_size = 32;
  const int maxq = (1 << bits) - 1;
  for (int64_t i = 0; i < q.rows * q.cols; ++i) q.codes.push_back(uint8_t((i * 7 + 3) % (maxq + 1)));
  for (int g = 0; g < 4; ++g) {
    q.scales.push_back(f16_to_f32(f32_to_f16(0.0123f * float(g + 1))));
    q.zeros.push_back(sym ? float(1 << (bits - 1)) : float((g * 5) % (maxq + 1)));
  }
  return q;
}

TEST(ExportGgufBlocks, Q8_0AndQ4_0HoldSymmetricGridsExactly) {
  for (int bits : {8, 4}) {
    const QuantizedLinear q = grid(bits, true);
    ASSERT_EQ(gguf_block_problem(q), "");
    const GgufBlocks b = pack_gguf_blocks(q);
    EXPECT_EQ(b.type, uint32_t(bits == 8 ? GgmlType::Q8_0 : GgmlType::Q4_0));
    std::vector<float> got(size_t(q.rows * q.cols));
    ggml_dequantize(b.type, b.bytes.data(), got.data(), q.rows * q.cols, "test");
    for (int64_t r = 0; r < q.rows; ++r)
      for (int64_t c = 0; c < q.cols; ++c) {
        const int64_t s = q.scale_index(r, c);
        EXPECT_EQ(got[size_t(r * q.cols + c)], q.scales[size_t(s)] * (float(q.codes[size_t(r * q.cols + c)]) - q.zeros[size_t(s)]))
            << bits << " bits at " << r << "," << c;
      }
  }
}

TEST(ExportGgufBlocks, Q4_1HoldsAsymmetricCodesWithTheMinInFp16) {
  const QuantizedLinear q = grid(4, false);
  const GgufBlocks b = pack_gguf_blocks(q);
  EXPECT_EQ(b.type, uint32_t(GgmlType::Q4_1));
  std::vector<float> got(size_t(q.rows * q.cols));
  ggml_dequantize(b.type, b.bytes.data(), got.data(), q.rows * q.cols, "test");
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c) {
      const int64_t s = q.scale_index(r, c);
      const float d = q.scales[size_t(s)];
      const float m = f16_to_f32(f32_to_f16(-d * q.zeros[size_t(s)]));
      EXPECT_EQ(got[size_t(r * q.cols + c)], float(q.codes[size_t(r * q.cols + c)]) * d + m) << r << "," << c;
    }
}

TEST(ExportGgufBlocks, LayoutsWithoutABlockTypeAreNamed) {
  EXPECT_NE(gguf_block_problem(grid(3, false)).find("not 3-bit asymmetric"), std::string::npos);
  EXPECT_NE(gguf_block_problem(grid(8, false)).find("not 8-bit asymmetric"), std::string::npos);
  QuantizedLinear q = grid(4, true);
  q.g_idx.assign(size_t(q.cols), 0);
  EXPECT_NE(gguf_block_problem(q).find("act-order"), std::string::npos);
  q = grid(4, true);
  q.group_size = 16;
  q.scales.resize(8, q.scales[0]);
  q.zeros.resize(8, 8.0f);
  EXPECT_NE(gguf_block_problem(q).find("not whole 32-element ggml blocks"), std::string::npos);
}

}  // namespace
}  // namespace lowbit
