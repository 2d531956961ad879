// pbllm and billm against their official code (hahnyuan/PB-LLM LowHighGPT.fasterquant,
// Aaronhuang-778/BiLLM BRAGPTQ.fasterquant), run by scripts/pbllm_billm_reference.py on a fixed
// weight and Hessian (tests/fixtures/quant/binarize.safetensors.zst), and their storage formats.
//
// Each method runs twice: on the reference's own inverse-Hessian factor (fp32 from torch), which
// pins every discrete decision, and from the Hessian through lowbit's factorization (fp64), where
// only ties within rounding may move.
#include "backend/ops.h"
#include "core/error.h"
#include "formats/llama_config.h"
#include "formats/safetensors.h"
#include "quant/billm.h"
#include "quant/formats/billm_format.h"
#include "quant/formats/pbllm_format.h"
#include "quant/method.h"
#include "quant/obs_hinv.h"
#include "quant/pbllm.h"
#include "quant/reference_numerics.h"
#include "test_util.h"
#include "zst_fixture.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>

namespace lowbit {
namespace {

const SafetensorsFile& fixture() { return test::zst_fixture("quant/binarize.safetensors.zst"); }

template <typename T>
std::vector<T> values(const std::string& name) {
  return test::tensor_values<T>(fixture(), name);
}

struct Inputs {
  std::vector<float> w;
  int64_t rows, cols;
  std::vector<double> h;
};

const Inputs& inputs() {
  static const Inputs in = [] {
    Inputs i;
    Tensor w = fixture().tensor("input.w");
    i.rows = w.dim(0);
    i.cols = w.dim(1);
    i.w = values<float>("input.w");
    const std::vector<float> h = values<float>("input.hessian");
    i.h.assign(h.begin(), h.end());
    return i;
  }();
  return in;
}

// The reference's factor, with the dead columns read off the Hessian as both references do.
ObsHinv reference_hinv() {
  const Inputs& in = inputs();
  ObsHinv r;
  r.u = values<float>("input.hinv");
  r.dead.assign(size_t(in.cols), 0);
  for (int64_t c = 0; c < in.cols; ++c)
    if (in.h[size_t(c * in.cols + c)] == 0.0) {
      r.dead[size_t(c)] = 1;
      ++r.dead_columns;
    }
  r.damp = 0.01;
  return r;
}

int64_t count_identical(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  int64_t n = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(float)) == 0;
  return n;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rel, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = rel * std::max(std::fabs(double(want[i])), std::fabs(double(got[i]))) + 1e-30;
    if (std::fabs(double(got[i]) - double(want[i])) > tol && bad++ < 5)
      ADD_FAILURE() << what << " [" << i << "]: " << got[i] << " vs reference " << want[i];
  }
  EXPECT_EQ(bad, 0) << what;
}

// The format's row dequantizes to the method's fp32 result bit for bit, and a bf16 linear of it
// to that result's rounding.
template <typename Deq>
void expect_format_exact(QuantizedLinear q, const std::vector<float>& w, Deq deq) {
  std::vector<float> out(w.size());
  deq(q, out.data());
  EXPECT_EQ(count_identical(out, w), int64_t(w.size()));
  q.dequant_dtype = DType::F32;
  q.dequantize(out.data());
  EXPECT_EQ(count_identical(out, w), int64_t(w.size()));
  q.dequant_dtype = DType::BF16;
  q.dequantize(out.data());
  int64_t same = 0;
  for (size_t i = 0; i < w.size(); ++i) same += out[i] == round_to_dtype(w[i], DType::BF16);
  EXPECT_EQ(same, int64_t(w.size()));
}

TEST(ReferenceNumerics, LinspaceMatchesTorch) {
  const std::vector<float> want = values<float>("torch_linspace");
  EXPECT_EQ(count_identical(torch_linspace_f32(0.10f, 0.90f, 81), want), 81);
}

TEST(ReferenceNumerics, SumsAreExactForExactData) {
  // Small integers: any order gives the exact sum, so this checks the index bookkeeping.
  std::vector<float> x(1000);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 17) - 8.0f;
  double want = 0;
  for (float v : x) want += v;
  for (int64_t n : {1, 5, 15, 16, 17, 63, 64, 65, 128, 129, 1000}) {
    double w = 0;
    for (int64_t i = 0; i < n; ++i) w += x[size_t(i)];
    EXPECT_EQ(torch_sum_f32(x.data(), n), float(w)) << n;
  }
  std::vector<float> cs(40);
  torch_column_sums_f32(x.data(), 25, 40, cs.data());
  for (int64_t c = 0; c < 40; ++c) {
    double w = 0;
    for (int64_t r = 0; r < 25; ++r) w += x[size_t(r * 40 + c)];
    EXPECT_EQ(cs[size_t(c)], float(w)) << c;
  }
}

TEST(ReferenceNumerics, ChunkedSumsEqualTheWholeSum) {
  // Values spread over 2^-20 .. 2^20 so that every change of order changes the rounding. The
  // whole sum runs torch_sum_f32's cascade (through nansum, which NaN-free data leaves alone, for
  // rows shorter than a chunk, which the plain sum takes through the chunked form); the sizes
  // cross each tail, chunk and carry boundary (16, 256, 4096 chunks) and the level change at 2^24.
  const int64_t big = (int64_t(1) << 24) + 4133;
  std::vector<float> x(static_cast<size_t>(big));
  uint32_t state = 12345;
  for (float& v : x) {
    state = state * 1664525u + 1013904223u;
    v = std::ldexp(float(state >> 8) / 16777216.0f - 0.5f, int(state % 41) - 20);
  }
  int64_t reordered = 0;
  for (int64_t n : {int64_t(1), int64_t(7), int64_t(8), int64_t(64), int64_t(100), int64_t(511), int64_t(512),
                    int64_t(513), int64_t(576 * 64), int64_t(8192 + 72), int64_t(131072 + 4095), int64_t(2097152 + 33),
                    int64_t(3000000), big}) {
    const int64_t chunk = torch_sum_chunk_f32(n), nchunks = n / chunk;
    EXPECT_EQ(chunk, n / 32 > (int64_t(1) << 19) ? 1024 : 512) << n;
    std::vector<float> partials(size_t(nchunks * kTorchSumPartials));
    for (int64_t c = 0; c < nchunks; ++c)
      torch_sum_chunk_partials_f32(x.data() + c * chunk, chunk, partials.data() + c * kTorchSumPartials);
    const float whole = torch_sum_f32(x.data(), n, /*nan_as_zero=*/true);
    const float pieces = torch_sum_from_chunks_f32(partials.data(), x.data() + nchunks * chunk, n);
    const float plain = torch_sum_f32(x.data(), n);
    EXPECT_EQ(std::memcmp(&pieces, &whole, 4), 0) << n << ": " << pieces << " vs " << whole;
    EXPECT_EQ(std::memcmp(&plain, &whole, 4), 0) << n << ": " << plain << " vs " << whole;
    float seq = 0.0f;
    for (int64_t i = 0; i < n; ++i) seq += x[size_t(i)];
    reordered += seq != whole;
  }
  EXPECT_GE(reordered, 8) << "the data should tell summation orders apart";
}

TEST(ReferenceNumerics, LaneSumsEqualRowSums) {
  // 16 rows per vector, each lane summed as torch_sum_f32 sums its row, for every short length.
  typedef float V16 __attribute__((vector_size(16 * sizeof(float))));
  uint32_t state = 777;
  std::vector<V16> t(511);
  std::vector<float> row(511);
  for (V16& v : t)
    for (int i = 0; i < 16; ++i) {
      state = state * 1664525u + 1013904223u;
      v[i] = std::ldexp(float(state >> 8) / 16777216.0f - 0.5f, int(state % 41) - 20);
    }
  int64_t checked = 0;
  for (int64_t n = 1; n < 600; ++n) {
    if (!torch_sum_f32_lanes_fits(n)) continue;
    const V16 s = torch_sum_f32_lanes(t.data(), n);
    for (int i = 0; i < 16; ++i) {
      for (int64_t j = 0; j < n; ++j) row[size_t(j)] = t[size_t(j)][i];
      const float want = torch_sum_f32(row.data(), n), got = s[i];
      checked += std::memcmp(&got, &want, 4) == 0;
    }
  }
  EXPECT_EQ(checked, (511 - 8 + 1) * 16);
}

// ---- PB-LLM ------------------------------------------------------------------------------------

struct PbCase {
  const char* name;
  bool hessian;
};

class PbllmParity : public ::testing::TestWithParam<PbCase> {};

void check_pbllm(const PbCase& c, const PbllmResult& r, bool exact_factor) {
  const std::string p = std::string(c.name) + ".";
  const std::vector<uint8_t> mask = values<uint8_t>(p + "mask");
  EXPECT_EQ(r.mask, mask) << "binarization masks differ";
  const Inputs& in = inputs();
  std::vector<float> scale(size_t(in.rows)), zero(size_t(in.rows));
  expect_close(r.q.scales, values<float>(p + "high_scale"), 0.0, "salient scale");
  expect_close(r.q.zeros, values<float>(p + "high_zero"), 0.0, "salient zero");
  const Tensor& mu = r.q.extras.at("mu");
  const Tensor& alpha = r.q.extras.at("alpha");
  std::vector<float> mu_v(mu.data_as<float>(), mu.data_as<float>() + mu.numel());
  std::vector<float> alpha_v(alpha.data_as<float>(), alpha.data_as<float>() + alpha.numel());
  const std::vector<float> mu_ref = values<float>(p + "mu"), alpha_ref = values<float>(p + "alpha");
  expect_close(mu_v, mu_ref, 1e-6, "mu");
  expect_close(alpha_v, alpha_ref, 1e-6, "alpha");
  // The means are torch's own sums: bit for bit.
  EXPECT_EQ(count_identical(mu_v, mu_ref), int64_t(mu_ref.size()));
  EXPECT_EQ(count_identical(alpha_v, alpha_ref), int64_t(alpha_ref.size()));
  const std::vector<float> want = values<float>(p + "out");
  const int64_t same = count_identical(r.w, want);
  std::printf("%s, %s factor: %lld of %zu weights bit-identical to the reference\n", c.name,
              exact_factor ? "reference" : "lowbit", (long long)same, want.size());
  EXPECT_GE(double(same), 0.999 * double(want.size()))
      << same << " of " << want.size() << " weights identical (" << (exact_factor ? "reference" : "lowbit") << " factor)";
  const double loss_ref = values<double>(p + "loss")[0];
  EXPECT_NEAR(r.loss, loss_ref, 1e-4 * loss_ref);
  r.q.validate(c.name);
  EXPECT_EQ(r.q.format, &kPbllmFormat);
  expect_format_exact(r.q, r.w, pbllm_dequantize);
}

TEST_P(PbllmParity, MatchesTheOfficialCode) {
  const PbCase& c = GetParam();
  const Inputs& in = inputs();
  PbllmOptions opt;
  opt.low_frac = values<double>(std::string(c.name) + ".low_frac")[0];
  opt.hessian_metric = c.hessian;
  {
    SCOPED_TRACE("reference factor");
    check_pbllm(c, pbllm_quantize(in.w.data(), in.rows, in.cols, reference_hinv(), opt, DType::F32), true);
  }
  {
    SCOPED_TRACE("lowbit factor");
    const ObsHinv hinv = obs_hinv(in.h, in.cols, opt.damp);
    EXPECT_EQ(hinv.damp, opt.damp);
    EXPECT_EQ(hinv.dead_columns, 2);
    check_pbllm(c, pbllm_quantize(in.w.data(), in.rows, in.cols, hinv, opt, DType::F32), false);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, PbllmParity,
                         ::testing::Values(PbCase{"pbllm_h90", true}, PbCase{"pbllm_h86", true},
                                           PbCase{"pbllm_m90", false}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- BiLLM -------------------------------------------------------------------------------------

class BillmParity : public ::testing::TestWithParam<PbCase> {};

void check_billm(const PbCase& c, const BillmResult& r, bool exact_factor) {
  const std::string p = std::string(c.name) + ".";
  const std::vector<int32_t> salient = values<int32_t>(p + "salient"), split_index = values<int32_t>(p + "split_index");
  const std::vector<float> split = values<float>(p + "split");
  ASSERT_EQ(r.blocks.size(), salient.size());
  for (size_t b = 0; b < r.blocks.size(); ++b) {
    EXPECT_EQ(r.blocks[b].salient, salient[b]) << "block " << b << ": salient columns";
    EXPECT_EQ(r.blocks[b].split_index, split_index[b]) << "block " << b << ": split quantile";
    if (exact_factor) EXPECT_EQ(r.blocks[b].split, split[b]) << "block " << b << ": split value";
    else EXPECT_NEAR(r.blocks[b].split, split[b], 1e-5 * std::fabs(split[b])) << "block " << b;
  }
  EXPECT_EQ(r.group, values<uint8_t>(p + "group")) << "masks differ";
  const std::vector<float> params_ref = values<float>(p + "params");
  const std::vector<float> want = values<float>(p + "out");
  if (exact_factor) {
    expect_close(r.params, params_ref, 1e-6, "per-row mean and scale");
    const int64_t same = count_identical(r.w, want);
    std::printf("%s, reference factor: %lld of %zu weights bit-identical to the reference\n", c.name, (long long)same,
                want.size());
    EXPECT_GE(double(same), 0.999 * double(want.size())) << same << " of " << want.size() << " weights identical";
  } else {
    // Every binarized value is a mean of the updated weights, so after the first block the
    // factor's rounding reaches all of them: close, not identical. The first block, quantized
    // before any update, is identical.
    auto close = [](const std::vector<float>& a, const std::vector<float>& b) {
      double scale = 0;
      for (float v : b) scale = std::max(scale, std::fabs(double(v)));
      int64_t n = 0;
      for (size_t i = 0; i < a.size(); ++i)
        n += std::fabs(double(a[i]) - double(b[i])) <= 1e-4 * std::fabs(double(b[i])) + 1e-6 * scale;
      return n;
    };
    EXPECT_EQ(close(r.params, params_ref), int64_t(params_ref.size())) << "per-row mean and scale";
    EXPECT_GE(double(close(r.w, want)), 0.999 * double(want.size()));
    const Inputs& in = inputs();
    int64_t same = 0, first = 0;
    for (int64_t row = 0; row < in.rows; ++row)
      for (int64_t col = 0; col < 128; ++col, ++first)
        same += std::memcmp(&r.w[size_t(row * in.cols + col)], &want[size_t(row * in.cols + col)], 4) == 0;
    std::printf("%s, lowbit factor: %lld of %lld first-block weights bit-identical, %lld of %zu all within 1e-4\n",
                c.name, (long long)same, (long long)first, (long long)close(r.w, want), want.size());
    EXPECT_GE(double(same), 0.999 * double(first)) << same << " of " << first << " first-block weights identical";
  }
  const double loss_ref = values<double>(p + "loss")[0];
  EXPECT_NEAR(r.loss, loss_ref, 1e-4 * loss_ref);
  r.q.validate(c.name);
  EXPECT_EQ(r.q.format, &kBillmFormat);
  expect_format_exact(r.q, r.w, billm_dequantize);
}

TEST_P(BillmParity, MatchesTheOfficialCode) {
  const PbCase& c = GetParam();
  const Inputs& in = inputs();
  BillmOptions opt;
  opt.hessian_metric = c.hessian;
  {
    SCOPED_TRACE("reference factor");
    check_billm(c, billm_quantize(in.w.data(), in.rows, in.cols, reference_hinv(), opt, DType::F32), true);
  }
  {
    SCOPED_TRACE("lowbit factor");
    check_billm(c, billm_quantize(in.w.data(), in.rows, in.cols, obs_hinv(in.h, in.cols, opt.damp), opt, DType::F32),
                false);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, BillmParity, ::testing::Values(PbCase{"billm_h", true}, PbCase{"billm_m", false}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- formats -----------------------------------------------------------------------------------

TEST(BinarizedFormats, ExactMeanIsAThirdState) {
  // A row whose binarized weights are all equal sits exactly at its mean: sign(0) keeps mu.
  const int64_t rows = 2, cols = 128;
  std::vector<float> w(size_t(rows * cols));
  for (int64_t c = 0; c < cols; ++c) {
    w[size_t(c)] = 0.25f;
    w[size_t(cols + c)] = float(c % 7) * 0.01f - 0.03f;
  }
  std::vector<double> h(size_t(cols * cols), 0.0);
  for (int64_t c = 0; c < cols; ++c) h[size_t(c * cols + c)] = 1.0 + 0.01 * double(c);
  const ObsHinv hinv = obs_hinv(h, cols, 0.01);
  BillmOptions bo;
  bo.up_lim = 4;
  const BillmResult b = billm_quantize(w.data(), rows, cols, hinv, bo, DType::F32);
  EXPECT_GT(b.q.extras.at("at_mean").data_as<int32_t>()[0], 0);
  billm_validate(b.q, "billm");
  expect_format_exact(b.q, b.w, billm_dequantize);
  PbllmOptions po;
  po.low_frac = 0.5;
  po.hessian_metric = false;
  const PbllmResult p = pbllm_quantize(w.data(), rows, cols, hinv, po, DType::F32);
  pbllm_validate(p.q, "pbllm");
  expect_format_exact(p.q, p.w, pbllm_dequantize);
  EXPECT_GT(pbllm_bits_per_weight(p.q), 1.0);
  EXPECT_GT(billm_bits_per_weight(b.q), 1.0);
}

// BiLLM's result does not depend on the thread count: 1024 rows x 256 columns in blocks of 128
// (131,072 saliencies per block, enough for the split's sort to take several threads), with ties
// and exact zeros, on 1 and on 2 threads: the same weights, masks, parameters and at-mean list.
TEST(BinarizedMethods, BillmIsTheSameOnAnyThreadCount) {
  const int64_t rows = 1024, cols = 256;
  std::vector<float> w(size_t(rows * cols));
  uint32_t x = 12345;
  for (float& v : w) {
    x = x * 1664525u + 1013904223u;
    v = float(int32_t(x >> 8) % 2001 - 1000) * 1e-4f;  // repeated values and zeros
  }
  std::vector<double> h(size_t(cols * cols), 0.0);
  for (int64_t c = 0; c < cols; ++c) {
    h[size_t(c * cols + c)] = 1.0 + 0.05 * double(c % 13);
    if (c + 1 < cols) h[size_t(c * cols + c + 1)] = h[size_t((c + 1) * cols + c)] = 0.2;
  }
  const ObsHinv hinv = obs_hinv(h, cols, 0.01);
  const int threads = num_threads();
  set_num_threads(1);
  const BillmResult one = billm_quantize(w.data(), rows, cols, hinv, BillmOptions{}, DType::F32);
  set_num_threads(2);
  const BillmResult two = billm_quantize(w.data(), rows, cols, hinv, BillmOptions{}, DType::F32);
  set_num_threads(threads);
  ASSERT_EQ(one.blocks.size(), two.blocks.size());
  for (size_t b = 0; b < one.blocks.size(); ++b) {
    EXPECT_EQ(one.blocks[b].salient, two.blocks[b].salient);
    EXPECT_EQ(one.blocks[b].split_index, two.blocks[b].split_index);
  }
  EXPECT_EQ(one.w, two.w);
  EXPECT_EQ(one.group, two.group);
  EXPECT_EQ(one.params, two.params);
  for (const char* e : {"salient", "group", "sign2", "at_mean"}) {
    const Tensor& a = one.q.extras.at(e);
    const Tensor& b = two.q.extras.at(e);
    ASSERT_EQ(a.nbytes(), b.nbytes()) << e;
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), size_t(a.nbytes()))) << e;
  }
  EXPECT_EQ(one.q.codes, two.q.codes);
  std::vector<float> deq(w.size());
  billm_dequantize(two.q, deq.data());
  EXPECT_EQ(deq, two.w);
}

TEST(BinarizedFormats, CorruptExtrasAreRejected) {
  const Inputs& in = inputs();
  PbllmResult p = pbllm_quantize(in.w.data(), in.rows, in.cols, reference_hinv(), PbllmOptions{}, DType::F32);
  QuantizedLinear bad = p.q;
  bad.extras.erase("mu");
  EXPECT_THROW(pbllm_validate(bad, "x"), Error);
  bad = p.q;
  bad.extras["high"] = Tensor::empty(DType::U8, {3});
  EXPECT_THROW(pbllm_validate(bad, "x"), Error);
  BillmResult b = billm_quantize(in.w.data(), in.rows, in.cols, reference_hinv(), BillmOptions{}, DType::F32);
  QuantizedLinear bb = b.q;
  bb.extras["params"] = Tensor::empty(DType::F32, {in.rows, 1, 8});
  EXPECT_THROW(billm_validate(bb, "x"), Error);
  bb = b.q;
  bb.extras["sign2"] = Tensor::empty(DType::U8, {in.rows, 1000});
  EXPECT_THROW(billm_validate(bb, "x"), Error);
}

// ---- options -----------------------------------------------------------------------------------

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(BinarizedMethods, SpecsResolveAndBitsAreNominal) {
  auto pb = make_method("pbllm");
  EXPECT_EQ(pb->spec().resolved(), "pbllm:low_frac=0.9,high_bit=8,metric=hessian,g=128,damp=0.01,block=128");
  EXPECT_NEAR(pb->weight_bits(), 1.7, 1e-12);
  EXPECT_NEAR(make_method("pbllm:low_frac=0.857142857142857")->weight_bits(), 2.0, 1e-12);
  auto bi = make_method("billm");
  EXPECT_EQ(bi->spec().resolved(), "billm:block=128,metric=hessian,damp=0.01,up_lim=50");
  EXPECT_EQ(bi->weight_bits(), 1.1);
}

TEST(BinarizedMethods, BadOptionsAreRefusedBeforeAnyWork) {
  EXPECT_NE(error_of([] { make_method("pbllm:g=100"); }).find("g=100"), std::string::npos);
  EXPECT_NE(error_of([] { make_method("pbllm:low_frac=1"); }).find("low_frac"), std::string::npos);
  EXPECT_NE(error_of([] { make_method("pbllm:low_frac=0"); }).find("low_frac"), std::string::npos);
  EXPECT_NE(error_of([] { make_method("pbllm:metric=random"); }).find("metric"), std::string::npos);
  EXPECT_NE(error_of([] { make_method("billm:up_lim=200"); }).find("up_lim"), std::string::npos);
  LlamaConfig c;
  c.hidden_size = 512;
  c.intermediate_size = 1408;  // 11 * 128: not a multiple of 256
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 64;
  EXPECT_NO_THROW(make_method("pbllm")->check_shapes(c));
  const std::string e = error_of([&] { make_method("pbllm:g=256")->check_shapes(c); });
  EXPECT_NE(e.find("g=256"), std::string::npos) << e;
  EXPECT_NE(e.find("1408"), std::string::npos) << e;
  EXPECT_NO_THROW(make_method("billm")->check_shapes(c));
  EXPECT_NE(error_of([&] { make_method("billm:block=256")->check_shapes(c); }).find("1408"), std::string::npos);
}

}  // namespace
}  // namespace lowbit
