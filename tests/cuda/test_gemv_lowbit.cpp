// The low-bit GEMV kernels (backend/cuda/gemv_lowbit.cuh) against the CPU product of lowbit's own
// dequantized weight (QuantizedLinear::dequantize in bf16, which tests/unit/test_gemv_pack.cpp
// ties to the layout and the quant tests to the references): 1-, 2-, 3-, 5-, 8-bit int codes (the
// 2-, 3- and 8-bit containers, and the 4-bit one) and NF4 with and without double quantization,
// over N on both sides of a warp's rows, K on both sides of the 1024-column tile (x read in place
// or from the zero-padded copy), group sizes 32/64/128 (and 96) with partial last groups, batch M = 1, 3,
// 16 (the GEMV's widest launch), 17 and 64 (two and four launches, and DequantGemm), both
// kernels and Auto, bf16 output and the fp32 accumulating epilogue, row strides wider than the
// matrices. Then CudaModel with such packed linears (--packed on a CUDA device) against the same
// model's fake-quant bf16 GPU forward: logits and the perplexity on stories260K and llama3-mini.
// Skipped without a GPU.
//
// Tolerances. Both kernels multiply the exact bf16 weight by the bf16 activation exactly in fp32
// (8 x 8 significant bits), so against the reference computed from the same bf16 activations in
// double the only errors are the fp32 sums (at most one rounding per addition, 2^-24 relative,
// 2^-23 allowed: cuBLAS's tensor-core accumulation truncates; along a chain of at most K / 16 +
// 80 additions: a lane's K / 32 fused multiply-adds and the warp's 5 shuffle sums, or cuBLAS's
// 16-deep steps and their blocked sums) times sum |x w|, and the output's rounding to bf16
// (2^-9 relative, 2^-8 allowed). Against the reference computed from the fp32 activations
// before their rounding to bf16 each activation adds at most 2^-9 of its |x w| (round to nearest):
// 2^-9 sum |x w| more. In the exact cases (int codes with power-of-two scales, activations in
// {-8..8} / 8, K * max|code - zero| < 2^17) every product and partial sum is a multiple of 2^-9
// below 2^15, exact in fp32 whatever the order, and the output must equal the reference rounded
// once to bf16, bit for bit: any misplaced code, scale or zero-point shows. Wherever the Gemv
// kernel runs, its outputs must also equal its CPU emulation (tests/gemv_emulation.h, the same
// lane code and butterfly, checked without a GPU by tests/unit/test_gemv_lane.cpp) bit for bit.
#include "backend/cuda/gemv_lowbit.cuh"
#include "backend/cuda/packed_weight.cuh"
#include "core/dtype.h"
#include "core/error.h"
#include "eval/cuda_eval.h"
#include "formats/checkpoint.h"
#include "model/cuda_model.h"
#include "pack/gemv_cuda.h"
#include "pack/gemv_pack.h"
#include "pack/gpu_packed_cuda.h"
#include "quant/method.h"
#include "quant/nf4.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "gemv_emulation.h"
#include "packed_forward.h"
#include "product_reference.h"
#include "test_util.h"
#include "w4_test_linear.h"
#include "cuda_test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace lowbit {
namespace {

using cuda::bf16;
using cuda::DeviceBuffer;
using cuda::GemvKernel;
using test::random_w4_linear;
using test::W4Order;
using test::W4Scales;

cuda::Context& gemv_ctx() {
  static cuda::Context c(0);
  return c;
}

struct Case {
  int64_t n, k, group;
  int bits;   // int code width; 0: NF4
  bool dq;    // NF4: double quantization
};

const Case kCases[] = {
    {64, 128, 128, 2, false},    // one unit, 8 warps' rows exactly
    {130, 200, 64, 2, false},    // K past one unit: padded copy of x; partial last group
    {257, 4096, 128, 2, false},  // long K, N just past a block's 8 rows
    {33, 172, 32, 3, false},     // stories260K's down_proj shape class (K % 32 = 12)
    {96, 384, 32, 3, false},
    {1000, 1024, 128, 3, false},
    {40, 256, 64, 1, false},     // 1-bit codes in the 2-bit container
    {64, 256, 32, 8, false},
    {301, 4096, 128, 8, false},  // one row per warp: N % 4 = 1
    {50, 128, 64, 5, false},     // 5-bit codes in the 8-bit container
    {40, 1000, 96, 3, false},    // groups of 96 (not a power of two: divided, not shifted)
    {24, 3072, 128, 2, false},   // three tiles: 24 units a row, lanes 24..31 idle
    {70, 256, 128, 4, false},    // the 4-bit int container (the W4A16 tiles' codes, GEMV layout)
    {64, 128, 64, 0, true},      // NF4 with double quantization
    {129, 448, 64, 0, true},     // K % 128 = 64: padded copy of x
    {256, 4096, 64, 0, true},
    {40, 256, 128, 0, false},    // NF4 without double quantization, blocks of 128
};
const int64_t kBatches[] = {1, 3, 16, 17, 64};

QuantizedLinear make_linear(const Case& c, bool exact, std::mt19937& rng) {
  if (c.bits > 0)
    return random_w4_linear(c.n, c.k, c.group, c.bits, W4Order::Plain, exact ? W4Scales::PowerOfTwo : W4Scales::Bf16,
                            rng);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> w(size_t(c.n * c.k));
  for (auto& v : w) v = normal(rng);
  return nf4_quantize(w.data(), c.n, c.k, c.group, c.dq, DType::BF16);
}

// Whether every product and partial sum of the case is exact in fp32 (see the top).
bool exact_case(const Case& c) { return c.bits > 0 && c.k * ((1 << c.bits) - 1) < (int64_t(1) << 17); }

// x [M, lda] in fp32 (columns from K on are garbage the kernels must not read into the result).
std::vector<float> make_x(int64_t M, int64_t K, int64_t lda, bool exact, std::mt19937& rng) {
  std::vector<float> x(size_t(M * lda), 0.0f);
  std::uniform_int_distribution<int> small(-8, 8);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < lda; ++c) {
      float v = c >= K ? 1.0e4f : exact ? float(small(rng)) / 8.0f : normal(rng);
      if (!exact && c == 5) v *= 20.0f;  // an outlier column
      x[size_t(m * lda + c)] = v;
    }
  return x;
}

std::vector<float> round_bf16(const std::vector<float>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = bf16_to_f32(f32_to_bf16(v[i]));
  return r;
}

using test::Reference;
using test::reference;

DeviceBuffer<bf16> upload_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
  DeviceBuffer<bf16> d(h.size());
  cuda::upload(d.get(), reinterpret_cast<const bf16*>(h.data()), h.size(), gemv_ctx().stream());
  return d;
}

// Checks y = got [M, ldc] (columns from N on must still hold `sentinel`) against the two
// references; `base` is what an accumulating product added to (0 otherwise).
void check(const std::vector<double>& got, const std::vector<double>& base, double sentinel, int64_t M, int64_t N,
           int64_t K, int64_t ldc, const Reference& ref_b, const Reference& ref_f, bool exact, bool bf16_out,
           const std::string& what) {
  const double chain = double(K / 16 + 80) * std::ldexp(1.0, -23);
  int bad = 0;
  for (int64_t m = 0; m < M && bad < 5; ++m)
    for (int64_t n = 0; n < ldc && bad < 5; ++n) {
      const size_t i = size_t(m * ldc + n);
      if (n >= N) {
        if (got[i] != sentinel) {
          ADD_FAILURE() << what << ": wrote past N at row " << m << " column " << n;
          ++bad;
        }
        continue;
      }
      const double y = got[i] - base[i];
      const double rb = ref_b.y[size_t(m * N + n)], sb = ref_b.sumabs[size_t(m * N + n)];
      const double rf = ref_f.y[size_t(m * N + n)], sf = ref_f.sumabs[size_t(m * N + n)];
      if (exact && bf16_out) {
        const double want = bf16_to_f32(f32_to_bf16(float(rb)));
        if (y != want) {
          ADD_FAILURE() << what << ": y[" << m << ", " << n << "] = " << y << ", exact " << want << " (" << rb << ")";
          ++bad;
        }
        continue;
      }
      // The output's rounding: bf16 (2^-9, 2^-8 allowed) or, accumulated into fp32, the sum's
      // and the addition's (2^-24 of |base| and of |y|, 2^-22 allowed).
      const double out_round = bf16_out ? std::ldexp(std::fabs(rb), -8)
                                        : std::ldexp(std::fabs(rb) + std::fabs(base[i]), -22);
      const double tol_b = out_round + chain * sb;
      const double tol_f = out_round + (chain + std::ldexp(1.0, -8)) * sf;  // x rounded to bf16: 2^-8 relative
      if (!(std::fabs(y - rb) <= tol_b) || !(std::fabs(y - rf) <= tol_f)) {
        ADD_FAILURE() << what << ": y[" << m << ", " << n << "] = " << y << ", reference " << rb << " (bf16 x; "
                      << "tolerance " << tol_b << "), " << rf << " (fp32 x; tolerance " << tol_f << ")";
        ++bad;
      }
    }
}

// The Gemv kernel runs exactly the fp32 operations of its CPU emulation, in the same order
// (explicit fused multiply-adds and roundings, no reassociation): its bf16 outputs must equal the
// emulation's bit for bit.
void expect_emulated(const std::vector<uint16_t>& got, const std::vector<float>& sums, int64_t M, int64_t N,
                     int64_t ldc, const std::string& what) {
  int bad = 0;
  for (int64_t m = 0; m < M && bad < 5; ++m)
    for (int64_t n = 0; n < N && bad < 5; ++n) {
      const uint16_t want = f32_to_bf16(sums[size_t(m * N + n)]);
      if (got[size_t(m * ldc + n)] != want) {
        ADD_FAILURE() << what << ": y[" << m << ", " << n << "] = " << bf16_to_f32(got[size_t(m * ldc + n)])
                      << ", the emulated kernel's " << bf16_to_f32(want);
        ++bad;
      }
    }
}

const char* kernel_name(GemvKernel k) {
  return k == GemvKernel::Gemv ? "gemv" : k == GemvKernel::DequantGemm ? "dequant" : "auto";
}

void sweep(bool exact) {
  std::mt19937 rng(exact ? 303 : 404);
  cuda::W4A16Workspace ws;
  const cudaStream_t s = gemv_ctx().stream();
  for (const Case& c : kCases) {
    if (exact && !exact_case(c)) continue;
    const QuantizedLinear q = make_linear(c, exact, rng);
    const pack::GemvPacked p = pack::pack_gemv(q, "test");
    const cuda::GemvWeight w = pack::upload_gemv_packed(p, "test", s);
    const Tensor wt = q.dequantize_f32();  // bf16 values (dequant_dtype BF16)
    const std::vector<float> wref(wt.data_as<float>(), wt.data_as<float>() + c.n * c.k);
    for (int64_t M : kBatches) {
      // Row strides: tight; wider by 8 (x read in place when K is whole units); odd (padded copy).
      const int64_t lda = M % 3 == 0 ? c.k : M % 3 == 1 ? c.k + 8 : c.k + 1;
      const int64_t ldc = M % 2 == 0 ? c.n : c.n + 3;
      const std::vector<float> xf = make_x(M, c.k, lda, exact, rng);
      const std::vector<float> xb = round_bf16(xf);
      const DeviceBuffer<bf16> dx = upload_bf16(xf);
      const Reference ref_b = reference(wref, c.n, c.k, xb, M, lda), ref_f = reference(wref, c.n, c.k, xf, M, lda);
      // The Gemv kernel's sums as its lanes' code computes them on the CPU (tests/gemv_emulation.h).
      std::vector<uint16_t> x_tight(size_t(M * c.k));
      for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < c.k; ++k) x_tight[size_t(m * c.k + k)] = f32_to_bf16(xf[size_t(m * lda + k)]);
      const std::vector<float> emulated = test::emulate_gemv_sums(p, x_tight, M);
      for (GemvKernel kernel : {GemvKernel::Auto, GemvKernel::Gemv, GemvKernel::DequantGemm}) {
        const std::string what = std::string(c.bits ? "int" + std::to_string(c.bits) : "nf4") + " [" +
                                 std::to_string(c.n) + ", " + std::to_string(c.k) + "] g" + std::to_string(c.group) +
                                 " M " + std::to_string(M) + " " + kernel_name(kernel) + (exact ? " exact" : "");
        // bf16 output.
        const double sentinel = -776.0;  // exact in bf16 (8 significant bits) and in fp32
        std::vector<uint16_t> h(size_t(M * ldc), f32_to_bf16(float(sentinel)));
        DeviceBuffer<bf16> dc(h.size());
        cuda::upload(dc.get(), reinterpret_cast<const bf16*>(h.data()), h.size(), s);
        cuda::gemv_linear(w, dx.get(), dc.get(), M, ws, s, lda, ldc, kernel);
        cuda::download(reinterpret_cast<bf16*>(h.data()), dc.get(), h.size(), s);
        std::vector<double> got(h.size());
        for (size_t i = 0; i < h.size(); ++i) got[i] = bf16_to_f32(h[i]);
        check(got, std::vector<double>(h.size(), 0.0), sentinel, M, c.n, c.k, ldc, ref_b, ref_f, exact, true, what);
        const bool gemv_ran =
            kernel == GemvKernel::Gemv || (kernel == GemvKernel::Auto && cuda::gemv_auto_kernel(M) == GemvKernel::Gemv);
        if (gemv_ran) expect_emulated(h, emulated, M, c.n, ldc, what);
        // fp32 accumulation into C (the residual add), for M = 3 and 17 (one and two launches).
        if (M == 3 || M == 17) {
          std::vector<float> base(size_t(M * ldc));
          std::normal_distribution<float> normal(0.0f, 4.0f);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < ldc; ++n) base[size_t(m * ldc + n)] = n < c.n ? normal(rng) : float(sentinel);
          DeviceBuffer<float> df(base.size());
          cuda::upload(df.get(), base.data(), base.size(), s);
          cuda::gemv_linear_accumulate(w, dx.get(), df.get(), M, ws, s, lda, ldc, kernel);
          std::vector<float> hf(base.size());
          cuda::download(hf.data(), df.get(), hf.size(), s);
          std::vector<double> gotf(hf.begin(), hf.end()), based(base.begin(), base.end());
          for (size_t i = 0; i < based.size(); ++i)
            if (based[i] == sentinel) based[i] = 0.0;  // gap columns: compared with the sentinel itself
          check(gotf, based, sentinel, M, c.n, c.k, ldc, ref_b, ref_f, false, false, what + " accumulate");
          if (gemv_ran) {
            // The epilogue adds the warp's sum to C once, in fp32.
            std::vector<float> want(hf.size());
            for (int64_t m = 0; m < M; ++m)
              for (int64_t n = 0; n < ldc; ++n)
                want[size_t(m * ldc + n)] =
                    n < c.n ? base[size_t(m * ldc + n)] + emulated[size_t(m * c.n + n)] : base[size_t(m * ldc + n)];
            EXPECT_EQ(hf, want) << what << " accumulate: not the emulated kernel's fp32 sums";
          }
        }
      }
    }
  }
}

TEST(GemvLowbit, MatchesTheDequantizedProductExactly) {
  REQUIRE_GPU();
  sweep(true);
}

TEST(GemvLowbit, MatchesTheDequantizedProductOnRandomData) {
  REQUIRE_GPU();
  sweep(false);
}

TEST(GemvLowbit, PackedWeightRunsEitherLayout) {
  REQUIRE_GPU();
  // One PackedWeight per layout, through packed_linear: the same products as the layouts' own
  // entry points, bit for bit (the same kernels).
  std::mt19937 rng(5);
  const cudaStream_t s = gemv_ctx().stream();
  cuda::W4A16Workspace ws;
  for (int bits : {2, 4}) {
    const QuantizedLinear q = random_w4_linear(96, 256, 64, bits, W4Order::Plain, W4Scales::Bf16, rng);
    const auto pw = pack::upload_packed_linear(q, "test", s);
    EXPECT_EQ(pw->layout(), bits == 4 ? "w4a16" : "gemv-int2");
    EXPECT_EQ(pw->n(), 96);
    EXPECT_EQ(pw->k(), 256);
    const std::vector<float> x = make_x(5, 256, 256, false, rng);
    const DeviceBuffer<bf16> dx = upload_bf16(x);
    DeviceBuffer<bf16> a(5 * 96), b(5 * 96);
    cuda::packed_linear(*pw, dx.get(), a.get(), 5, ws, s);
    if (bits == 4)
      cuda::w4a16_linear(std::get<cuda::W4A16Weight>(pw->w), dx.get(), b.get(), 5, ws, s);
    else
      cuda::gemv_linear(std::get<cuda::GemvWeight>(pw->w), dx.get(), b.get(), 5, ws, s);
    std::vector<uint16_t> ha(5 * 96), hb(5 * 96);
    cuda::download(reinterpret_cast<bf16*>(ha.data()), a.get(), ha.size(), s);
    cuda::download(reinterpret_cast<bf16*>(hb.data()), b.get(), hb.size(), s);
    EXPECT_EQ(ha, hb);
  }
}

TEST(GemvLowbit, RejectsBadArguments) {
  REQUIRE_GPU();
  std::mt19937 rng(6);
  const cudaStream_t s = gemv_ctx().stream();
  const QuantizedLinear q = random_w4_linear(32, 256, 64, 3, W4Order::Plain, W4Scales::Bf16, rng);
  const pack::GemvPacked p = pack::pack_gemv(q, "test");
  const cuda::GemvWeight w = pack::upload_gemv_packed(p, "test", s);
  cuda::W4A16Workspace ws;
  DeviceBuffer<bf16> dx(256 * 2), dc(32 * 2);
  EXPECT_THROW(cuda::gemv_linear(w, dx.get(), dc.get(), 1, ws, s, 100), Error);     // lda < K
  EXPECT_THROW(cuda::gemv_linear(w, dx.get(), dc.get(), 1, ws, s, 0, 10), Error);   // ldc < N
  const cuda::GemvWeight empty;
  EXPECT_THROW(cuda::gemv_linear(empty, dx.get(), dc.get(), 1, ws, s), Error);
  std::vector<uint32_t> short_codes(p.codes.begin(), p.codes.end() - 4);
  try {
    cuda::upload_gemv(p.n, p.k, p.bits, false, p.group_size, short_codes, p.scales, p.codebook, "blk.0.mlp.up_proj",
                      s);
    FAIL() << "no error for a short code array";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.mlp.up_proj"), std::string::npos) << e.what();
  }
  EXPECT_THROW(cuda::upload_gemv(p.n, p.k, 5, false, p.group_size, p.codes, p.scales, p.codebook, "t", s), Error);
  EXPECT_THROW(cuda::upload_gemv(p.n, p.k, p.bits, false, 48, p.codes, p.scales, p.codebook, "t", s), Error);
}

// A quantized model with every linear in the GEMV layout, its packed forward against its
// fake-quant bf16 GPU forward. The method's int scales are rounded to bf16 first (the layout's
// precision; NF4's fp32 absmax values are kept as they are), so both forwards hold the same bf16
// weights and differ only in the fp32 summation order of their products and the bf16 roundings
// of activations that order flips: logits within 1% (relative L2; a misplaced code or scale
// moves them by their own size), perplexity within 0.5%.
void expect_gemv_model_matches_fake_quant(const std::string& path, const char* spec, const char* layout) {
  SCOPED_TRACE(path + " " + spec);
  const Checkpoint source = open_checkpoint(path);
  LlamaModel work(source);
  auto method = make_method(spec);
  QuantizedModel qm = quantize_model(work, *method, nullptr, {});
  for (QuantizedBlock& b : qm.blocks)
    for (auto& l : b.linear)
      if (l && l->format == &kIntFormat)
        for (float& sc : l->scales) sc = bf16_to_f32(f32_to_bf16(sc));
  LlamaModel q(quantized_checkpoint_in_memory(source, std::move(qm), {{"path", path}}));
  install_quantized_forward(q);
  const int64_t V = q.config().vocab_size;
  std::mt19937 g(78);
  std::vector<int32_t> ids(40);
  for (auto& x : ids) x = int32_t(g() % uint32_t(std::min<int64_t>(V, 512)));
  std::vector<std::vector<int32_t>> windows(3, std::vector<int32_t>(64));
  for (auto& w : windows)
    for (auto& x : w) x = int32_t(g() % uint32_t(std::min<int64_t>(V, 512)));

  CudaModel dense(q, gemv_ctx());
  CudaModel packed(q, gemv_ctx(), std::nullopt, pack::gpu_packed_linears_of(q, gemv_ctx().stream()));
  ASSERT_TRUE(packed.packed());
  GpuBlockWeights scratch;
  for (int64_t i = 0; i < q.config().num_hidden_layers; ++i) {
    const GpuBlockWeights& b = packed.block(i, scratch);
    for (LinearKind k : kAllLinears) {
      ASSERT_NE(b.packed_linear(k), nullptr) << "block " << i;
      EXPECT_EQ(b.packed_linear(k)->layout(), layout) << "block " << i;
      EXPECT_EQ(b[k], nullptr) << "block " << i;  // no bf16 copy of a packed linear
    }
  }
  const test::PackedForward a = test::run_forward(packed, ids, windows);
  const test::PackedForward b = test::run_forward(dense, ids, windows);
  double num = 0, den = 0;
  for (size_t i = 0; i < a.logits.size(); ++i) {
    ASSERT_TRUE(std::isfinite(a.logits[i])) << i;
    num += (double(a.logits[i]) - b.logits[i]) * (double(a.logits[i]) - b.logits[i]);
    den += double(b.logits[i]) * b.logits[i];
  }
  const double rel = std::sqrt(num / den);
  std::printf("%s %s: packed (%s) vs fake-quant bf16 GPU logits rel. L2 %.2e; ppl %.4f vs %.4f\n", path.c_str(), spec,
              layout, rel, a.ppl, b.ppl);
  EXPECT_LT(rel, 1e-2);
  EXPECT_NEAR(a.ppl, b.ppl, 5e-3 * b.ppl);
}

TEST(CudaModelPackedGemv, Stories260KPerplexityEqualsTheDequantizedModel) {
  REQUIRE_GPU();
  const std::string stories = test::models_dir() + "/stories260K/stories260K.bin";
  LOWBIT_REQUIRE_PATH(stories);
  // H 64, F 172: down_proj's rows end in a group of 12 columns, and no K is a whole unit.
  expect_gemv_model_matches_fake_quant(stories, "rtn:w=2,g=32", "gemv-int2");
  expect_gemv_model_matches_fake_quant(stories, "rtn:w=3,g=32", "gemv-int3");
  expect_gemv_model_matches_fake_quant(stories, "rtn:w=8,g=64", "gemv-int8");
}

TEST(CudaModelPackedGemv, Nf4PerplexityEqualsTheDequantizedModel) {
  REQUIRE_GPU();
  // llama3-mini: H 128, F 448, every row a whole number of NF4 blocks of 64.
  const std::string mini = test::fixtures_dir() + "/models/llama3-mini-bf16";
  expect_gemv_model_matches_fake_quant(mini, "nf4:dq=1,b=64", "gemv-codebook4");
  expect_gemv_model_matches_fake_quant(mini, "nf4:dq=0,b=64", "gemv-codebook4");
  expect_gemv_model_matches_fake_quant(mini, "rtn:w=3,g=64", "gemv-int3");
}

TEST(CudaModelPackedGemv, RefusesWhatNoLayoutHolds) {
  REQUIRE_GPU();
  // stories260K in NF4 blocks of 64: down_proj's rows of 172 columns cut blocks in two, which no
  // GPU layout holds: --packed is refused naming the linear, never run from bf16.
  const std::string stories = test::models_dir() + "/stories260K/stories260K.bin";
  LOWBIT_REQUIRE_PATH(stories);
  const Checkpoint source = open_checkpoint(stories);
  LlamaModel work(source);
  auto method = make_method("nf4:dq=1,b=64");
  LlamaModel q(quantized_checkpoint_in_memory(source, quantize_model(work, *method, nullptr, {}), {{"path", stories}}));
  try {
    CudaModel m(q, gemv_ctx(), std::nullopt, pack::gpu_packed_linears_of(q, gemv_ctx().stream()));
    FAIL() << "no error for NF4 blocks that straddle rows";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("down_proj"), std::string::npos) << msg;
    EXPECT_NE(msg.find("no kernel"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace lowbit
