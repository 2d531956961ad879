// Packed integer kernels (src/pack/packed_int.h) against the fake-quant reference: the format
// table's scalar dequantization of the same QuantizedLinear, multiplied in double precision.
//
// Shapes sit on both sides of the 32-wide block and of the group edges (groups that do not divide
// the columns, groups smaller and larger than a block, act-order permutations), and the batch
// runs across the 4-row activation tile. Codes, scales and zero-points are random, so the packed
// layout must reproduce every code of every container exactly.
#include "backend/ops.h"
#include "core/error.h"
#include "formats/safetensors.h"
#include "pack/packed_int.h"
#include "quant/quantized_linear.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

namespace lowbit {
namespace {

using pack::Isa;

QuantizedLinear random_linear(int64_t rows, int64_t cols, int bits, int64_t group, bool act_order, bool int_zeros,
                              std::mt19937& rng) {
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.bits = bits;
  q.group_size = group;
  q.dequant_dtype = DType::F32;
  const int maxq = (1 << bits) - 1;
  std::uniform_int_distribution<int> code(0, maxq);
  q.codes.resize(size_t(rows * cols));
  for (auto& c : q.codes) c = uint8_t(code(rng));
  if (act_order) {
    // GPTQ's act_order: column perm[i] is the i-th quantized and belongs to group i / group.
    std::vector<int32_t> perm(static_cast<size_t>(cols));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    q.g_idx.resize(size_t(cols));
    for (int64_t i = 0; i < cols; ++i) q.g_idx[size_t(perm[size_t(i)])] = int32_t(i / group);
  }
  const int64_t ns = q.num_scale_groups();
  std::uniform_real_distribution<float> scale(0.001f, 0.05f), zero(0.0f, float(maxq));
  q.scales.resize(size_t(ns));
  q.zeros.resize(size_t(ns));
  for (auto& s : q.scales) s = scale(rng);
  for (auto& z : q.zeros) z = int_zeros ? std::round(zero(rng)) : zero(rng);
  q.validate("test");
  return q;
}

std::vector<float> random_x(int64_t n, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(size_t(n * cols));
  for (auto& v : x) v = g(rng);
  // An outlier column, as LLM activations have: one block's scale is set by it.
  if (cols > 5)
    for (int64_t j = 0; j < n; ++j) x[size_t(j * cols + 5)] *= 20.0f;
  return x;
}

// y[n, rows] = x @ W^T with W the format's reference dequantization, in double; `mag` gets
// sum |w| |x| per output (the scale of fp32 rounding errors).
void reference(const QuantizedLinear& q, const std::vector<float>& x, int64_t n, std::vector<double>& y,
               std::vector<double>& mag) {
  std::vector<float> w(size_t(q.rows * q.cols));
  q.format->dequantize(q, w.data());
  y.assign(size_t(n * q.rows), 0.0);
  mag.assign(size_t(n * q.rows), 0.0);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t r = 0; r < q.rows; ++r) {
      double acc = 0, m = 0;
      for (int64_t c = 0; c < q.cols; ++c) {
        const double p = double(w[size_t(r * q.cols + c)]) * double(x[size_t(j * q.cols + c)]);
        acc += p;
        m += std::fabs(p);
      }
      y[size_t(j * q.rows + r)] = acc;
      mag[size_t(j * q.rows + r)] = m;
    }
}

// The activations the Q8 path actually multiplies, back in column order: ad * qa.
std::vector<float> dequantized_activations(const pack::PackedIntMatrix& p, const pack::Q8Activations& a) {
  std::vector<float> x(size_t(a.n * p.cols), 0.0f);
  for (int64_t j = 0; j < a.n; ++j)
    for (int64_t pos = 0; pos < p.padded(); ++pos) {
      const int32_t c = p.source_col.empty() ? int32_t(pos) : p.source_col[size_t(pos)];
      if (c < 0) continue;
      x[size_t(j * p.cols + c)] =
          a.d[size_t(j * p.blocks + pos / pack::kBlock)] * float(a.qs[size_t(j * p.padded() + pos)]);
    }
  return x;
}

// Per output, the most that rounding the activations to their blocks' 8-bit grids can move it:
// each activation moves by at most ad / 2, so the output by sum_c |w[r, c]| * ad(block of c) / 2.
std::vector<double> rounding_bound(const QuantizedLinear& q, const pack::PackedIntMatrix& p,
                                   const pack::Q8Activations& a) {
  std::vector<float> w(size_t(q.rows * q.cols));
  q.format->dequantize(q, w.data());
  std::vector<double> out(size_t(a.n * q.rows), 0.0);
  for (int64_t j = 0; j < a.n; ++j)
    for (int64_t pos = 0; pos < p.padded(); ++pos) {
      const int32_t c = p.source_col.empty() ? int32_t(pos) : p.source_col[size_t(pos)];
      if (c < 0) continue;
      const double half = 0.5 * a.d[size_t(j * p.blocks + pos / pack::kBlock)];
      for (int64_t r = 0; r < q.rows; ++r) out[size_t(j * q.rows + r)] += std::fabs(w[size_t(r * q.cols + c)]) * half;
    }
  return out;
}

struct Case {
  int64_t rows, cols;
  int bits;
  int64_t group;
  bool act_order, int_zeros;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  // cols: one block, a block and a bit, not a multiple of anything, 4 blocks, 448 (a small MLP).
  // groups: equal to a block, smaller (odd), larger (not a multiple of 32), the whole row.
  for (int bits : {1, 2, 3, 4, 5, 8})
    for (auto [cols, group] : std::vector<std::pair<int64_t, int64_t>>{
             {32, 32}, {40, 40}, {100, 20}, {128, 64}, {128, 128}, {200, 96}, {448, 128}, {96, 33}})
      for (bool act : {false, true}) out.push_back({int64_t(bits == 4 ? 17 : 9), cols, bits, group, act, bits != 5});
  out.push_back({1, 64, 4, 32, false, true});
  out.push_back({33, 256, 3, 128, true, true});
  // stories260K's shapes: hidden 64, MLP 172 (padded to 6 blocks).
  out.push_back({172, 64, 4, 32, false, true});
  out.push_back({64, 172, 4, 32, false, true});
  // Large enough at 9 and 70 activation rows for matmul_q8 to split the rows over threads.
  out.push_back({520, 512, 4, 128, true, true});
  return out;
}

TEST(PackedInt, CodesRoundTripThroughEveryContainer) {
  std::mt19937 rng(1);
  for (const Case& c : cases()) {
    const QuantizedLinear q = random_linear(c.rows, c.cols, c.bits, c.group, c.act_order, c.int_zeros, rng);
    const pack::PackedIntMatrix p = pack::pack_int_linear(q, "test");
    ASSERT_EQ(p.bits, pack::container_bits(c.bits));
    // Every weight, rebuilt from its block as d * code + m, equals the reference dequantization
    // up to the one rounding of m = -s * z (the reference rounds s * (q - z) once).
    std::vector<float> w(size_t(q.rows * q.cols));
    q.format->dequantize(q, w.data());
    const int64_t bb = pack::block_bytes(p.bits);
    for (int64_t r = 0; r < q.rows; ++r)
      for (int64_t pos = 0; pos < p.padded(); ++pos) {
        const int32_t col = p.source_col.empty() ? int32_t(pos) : p.source_col[size_t(pos)];
        if (col < 0) continue;
        const int64_t b = pos / pack::kBlock;
        const int code = pack::block_code(p.qs.data() + (r * p.blocks + b) * bb, p.bits, pos % pack::kBlock);
        const int want_code = q.codes[size_t(r * q.cols + col)] - (p.bits == 8 ? 128 : 0);
        ASSERT_EQ(code, want_code) << "bits " << c.bits << " row " << r << " col " << col;
        const float got = p.d[p.pair(r, b)] * float(code) + p.m[p.pair(r, b)];
        const float want = w[size_t(r * q.cols + col)];
        ASSERT_NEAR(got, want, 2e-6f * std::max(1.0f, std::fabs(p.m[p.pair(r, b)])));
      }
  }
}

TEST(PackedInt, Fp32ActivationsMatchTheFakeQuantProduct) {
  std::mt19937 rng(2);
  for (const Case& c : cases())
    for (int64_t n : {1, 3}) {
      const QuantizedLinear q = random_linear(c.rows, c.cols, c.bits, c.group, c.act_order, c.int_zeros, rng);
      const pack::PackedIntMatrix p = pack::pack_int_linear(q, "test");
      const std::vector<float> x = random_x(n, c.cols, rng);
      std::vector<double> want, mag;
      reference(q, x, n, want, mag);
      std::vector<float> xp(size_t(n * p.padded())), y(size_t(n * q.rows));
      pack::gather_padded(p, x.data(), n, xp.data());
      pack::matmul_f32(p, xp.data(), n, y.data());
      // Weights d * code + m carry one more fp32 rounding than s * (q - z): 2^-23 relative per term.
      for (size_t i = 0; i < y.size(); ++i)
        ASSERT_NEAR(y[i], want[i], 1e-6 * mag[i] + 1e-6) << "bits " << c.bits << " cols " << c.cols << " g "
                                                          << c.group << " act_order " << c.act_order;
    }
}

TEST(PackedInt, Int8ActivationKernelsMatchTheFakeQuantProductOnEveryIsa) {
  std::mt19937 rng(3);
  std::vector<Isa> isas = {Isa::Scalar};
  for (Isa i : {Isa::Avx2, Isa::Avx512Vnni})
    if (pack::isa_supported(i)) isas.push_back(i);
  std::printf("kernels tested: %zu (best on this CPU: %s)\n", isas.size(), pack::isa_name(pack::best_isa()));
  for (const Case& c : cases())
    for (int64_t n : {1, 2, 3, 4, 5, 9, 70}) {
      if (n == 70 && c.rows < 64) continue;  // the 64-row activation tiles, on the larger shapes
      const QuantizedLinear q = random_linear(c.rows, c.cols, c.bits, c.group, c.act_order, c.int_zeros, rng);
      const pack::PackedIntMatrix p = pack::pack_int_linear(q, "test");
      const std::vector<float> x = random_x(n, c.cols, rng);
      pack::Q8Activations a;
      pack::quantize_activations(p, x.data(), n, a);
      // Against the fake-quant weight times the activations the kernel sees: only fp32 rounding
      // of the per-block products and sums differs (d * ad * dot in float, blocks summed in float).
      const std::vector<float> xq = dequantized_activations(p, a);
      std::vector<double> exact, mag, full, full_mag;
      reference(q, xq, n, exact, mag);
      reference(q, x, n, full, full_mag);
      const std::vector<double> bound = rounding_bound(q, p, a);
      for (Isa isa : isas) {
        std::vector<float> y(size_t(n * q.rows), -1.0f);
        pack::matmul_q8(p, a, y.data(), isa);
        for (size_t i = 0; i < y.size(); ++i) {
          ASSERT_NEAR(y[i], exact[i], 4e-6 * mag[i] + 1e-6)
              << pack::isa_name(isa) << " bits " << c.bits << " cols " << c.cols << " g " << c.group << " act_order "
              << c.act_order << " n " << n << " out " << i;
          // And against the fp32 activations, within what their 8-bit rounding allows.
          ASSERT_NEAR(y[i], full[i], bound[i] + 4e-6 * full_mag[i] + 1e-6) << pack::isa_name(isa);
        }
      }
    }
}

TEST(PackedInt, ActivationQuantizationFollowsQ8_0) {
  // ggml's quantize_row_q8_0_ref: d = amax / 127, q = round(x / d) (halves away from zero).
  pack::PackedIntMatrix p;
  p.rows = 1;
  p.cols = 32;
  p.blocks = 1;
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[size_t(i)] = float(i - 16) * 0.25f;  // amax 4 at i = 0
  pack::Q8Activations a;
  pack::quantize_activations(p, x.data(), 1, a);
  EXPECT_FLOAT_EQ(a.d[0], 4.0f / 127.0f);
  int32_t sum = 0;
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(a.qs[size_t(i)], int8_t(std::round(x[size_t(i)] / (4.0f / 127.0f)))) << i;
    sum += a.qs[size_t(i)];
  }
  EXPECT_EQ(a.isum[0], sum);
}

// pack_q8_dense against ggml's Q8_0 of the same matrix (the gguf package's quantizer,
// scripts/make_q8_head_fixture.py): every code equal, d equal to Q8_0's fp16 scale once rounded to
// fp16, m zero; a width that is not a multiple of 32 equals Q8_0 of the matrix padded with zeros.
// Then its product, on every ISA, against the Q8_0-dequantized matrix times the activations.
TEST(PackedInt, DenseEightBitPackingFollowsQ8_0) {
  const std::string path = test::fixtures_dir() + "/pack/q8_dense.safetensors";
  LOWBIT_REQUIRE_PATH(path);
  auto ref = SafetensorsFile::open(path);
  const Tensor w = ref->tensor("w");
  const int64_t rows = w.dim(0), cols = w.dim(1);
  for (const int64_t width : {cols, int64_t(150)}) {
    const std::string suffix = width == cols ? "" : "150";
    const Tensor codes = ref->tensor("codes" + suffix), d16 = ref->tensor("d" + suffix);
    std::vector<float> wm(size_t(rows * width));
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(w.data_as<float>() + r * cols, width, wm.begin() + r * width);
    const pack::PackedIntMatrix p = pack::pack_q8_dense(DType::F32, wm.data(), rows, width);
    ASSERT_EQ(p.bits, 8);
    ASSERT_EQ(p.blocks, cols / 32);
    EXPECT_TRUE(p.m.empty());
    EXPECT_EQ(p.source_col.empty(), width == cols);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t b = 0; b < p.blocks; ++b) {
        const uint8_t* blk = p.qs.data() + (r * p.blocks + b) * 32;
        for (int64_t i = 0; i < 32; ++i)
          ASSERT_EQ(pack::block_code(blk, 8, i), int(codes.data_as<int8_t>()[r * cols + b * 32 + i]))
              << "width " << width << " row " << r << " block " << b << " element " << i;
        const size_t k = size_t(r * p.blocks + b);
        EXPECT_EQ(f32_to_f16(p.d[k]), d16.data_as<uint16_t>()[k]) << "row " << r << " block " << b;
        EXPECT_EQ(p.m_at(r, b), 0.0f);
      }
    // The product: Q8_0's dequantized weights (fp16 d times the codes) times the activations the
    // kernel sees; the only differences are d's fp16 rounding and fp32 sums.
    std::mt19937 rng(5);
    for (int64_t n : {1, 3}) {
      const std::vector<float> x = random_x(n, width, rng);
      pack::Q8Activations a;
      pack::quantize_activations(p, x.data(), n, a);
      for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni}) {
        if (!pack::isa_supported(isa)) continue;
        std::vector<float> y(size_t(n * rows));
        pack::matmul_q8(p, a, y.data(), isa);
        for (int64_t j = 0; j < n; ++j)
          for (int64_t r = 0; r < rows; ++r) {
            double want = 0, mag = 0;
            for (int64_t c = 0; c < width; ++c) {
              const int64_t b = c / 32;
              const double wq = double(f16_to_f32(d16.data_as<uint16_t>()[r * p.blocks + b])) *
                                double(codes.data_as<int8_t>()[r * cols + c]);
              const double xq = double(a.d[size_t(j * p.blocks + b)]) * double(a.qs[size_t(j * p.padded() + c)]);
              want += wq * xq;
              mag += std::fabs(wq * xq);
            }
            EXPECT_NEAR(y[size_t(j * rows + r)], want, 1e-3 * mag + 1e-6)
                << pack::isa_name(isa) << " width " << width << " row " << r;
          }
      }
    }
  }
  // Bad input is refused, naming the dtype or shape.
  const std::vector<int8_t> i8(64, 1);
  EXPECT_THROW(pack::pack_q8_dense(DType::I8, i8.data(), 2, 32), Error);
  EXPECT_THROW(pack::pack_q8_dense(DType::F32, w.data(), 0, 32), Error);
}

// One (d, m) pair per group when the groups span equal numbers of blocks, the last one at most as
// many (the products on such shapes are checked above), one per block otherwise.
TEST(PackedInt, GroupsOfEqualBlocksShareOnePair) {
  std::mt19937 rng(7);
  struct Shape {
    int64_t cols, group;
    bool act_order;
    int64_t want;
  };
  for (const Shape& c : {Shape{256, 128, false, 4}, Shape{256, 64, true, 2}, Shape{288, 96, false, 3},
                         Shape{256, 32, false, 1}, Shape{200, 128, false, 4}, Shape{256, 48, false, 2},
                         Shape{200, 96, true, 3}, Shape{160, -1, false, 5}}) {
    const QuantizedLinear q =
        random_linear(3, c.cols, 4, c.group < 0 ? c.cols : c.group, c.act_order, true, rng);
    const pack::PackedIntMatrix p = pack::pack_int_linear(q, "test");
    EXPECT_EQ(p.group_blocks, c.want) << c.cols << " " << c.group;
    EXPECT_EQ(int64_t(p.d.size()), 3 * ((p.blocks + p.group_blocks - 1) / p.group_blocks));
    for (int64_t r = 0; r < 3; ++r)
      for (int64_t b = 0; b < p.blocks; ++b)
        for (int64_t i = 0; i < pack::kBlock; ++i) {
          const int32_t col = p.source_col.empty() ? int32_t(b * pack::kBlock + i) : p.source_col[size_t(b * pack::kBlock + i)];
          if (col < 0) continue;
          const int64_t g = q.g_idx.empty() ? col / q.group_size : q.g_idx[size_t(col)];
          ASSERT_EQ(p.d[p.pair(r, b)], q.scales[size_t(r * q.groups_per_row() + g)]);
        }
  }
}

// matmul_q8 splits the rows of a large enough product over the thread pool; which thread computes
// a row must not change it. Decode's shapes (one activation row, products above the parallel
// threshold) and prompt-sized ones, whole matrices and row views, at 2 and 3 threads, equal the
// single-threaded product bit for bit, job after job.
TEST(PackedInt, ThreadedProductsEqualTheSingleThreadedOnesBitForBit) {
  std::mt19937 rng(9);
  struct RestoreThreads {  // also when an assertion ends the test early
    int n = num_threads();
    ~RestoreThreads() { set_num_threads(n); }
  } restore;
  struct Shape {
    int64_t rows, cols, n, r0, r1;
  };
  for (const Shape& c : {Shape{3584, 512, 1, 0, -1}, Shape{1000, 576, 1, 100, 900}, Shape{600, 1536, 2, 0, -1},
                         Shape{520, 512, 70, 0, -1}}) {
    ASSERT_GT(c.rows * (c.cols / 32) * c.n, pack::min_parallel_blocks());
    const QuantizedLinear q = random_linear(c.rows, c.cols, 4, 128, false, true, rng);
    const pack::PackedIntMatrix p = pack::pack_int_linear(q, "test");
    const std::vector<float> x = random_x(c.n, c.cols, rng);
    pack::Q8Activations a;
    pack::quantize_activations(p, x.data(), c.n, a);
    set_num_threads(1);
    std::vector<float> want(size_t(c.n * c.rows), -1.0f);
    pack::matmul_q8(p, a, want.data(), pack::best_isa(), c.r0, c.r1);
    for (int t : {2, 3}) {
      set_num_threads(t);
      for (int rep = 0; rep < 50; ++rep) {
        std::vector<float> y(size_t(c.n * c.rows), -1.0f);
        pack::matmul_q8(p, a, y.data(), pack::best_isa(), c.r0, c.r1);
        ASSERT_EQ(0, std::memcmp(y.data(), want.data(), y.size() * sizeof(float)))
            << c.rows << "x" << c.cols << " n " << c.n << " threads " << t << " repeat " << rep;
      }
    }
  }
}

TEST(PackedInt, FormatsWithoutAPackedKernelAreRefused) {
  std::mt19937 rng(4);
  QuantizedLinear q = random_linear(4, 64, 4, 32, false, true, rng);
  q.format = &kCodebookFormat;
  try {
    pack::pack_int_linear(q, "model.layers.0.self_attn.q_proj.weight");
    FAIL() << "a codebook linear was packed as int";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.self_attn.q_proj.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("codebook"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowbit
