// SliM-LLM and QuIP against their official code (scripts/slim_quip_reference.py imports
// Aaronhuang-778/SliM-LLM and Cornell-RelaxML/QuIP and runs them on the inputs stored in
// tests/fixtures/quant/slim_quip.safetensors.zst: rows of testbed-44m's layer-0 down_proj and
// synthetic calibration inputs; scripts/slim_partial_reference.py does the same for SliM-LLM at
// widths 576 and 192, whose last group is 64 columns, in slim_partial.safetensors.zst).
#include "calib/block_driver.h"
#include "calib/calib_data.h"
#include "core/error.h"
#include "core/py_random.h"
#include "formats/checkpoint.h"
#include "formats/safetensors.h"
#include "quant/formats/quip_format.h"
#include "quant/formats/slim_format.h"
#include "quant/gptq.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quip.h"
#include "quant/slim.h"
#include "random_calibration.h"
#include "test_util.h"
#include "zst_fixture.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>

namespace lowbit {
namespace {

const SafetensorsFile& fixture() { return test::zst_fixture("quant/slim_quip.safetensors.zst"); }

std::vector<float> f32(const std::string& name, const SafetensorsFile& file = fixture()) {
  Tensor t = file.tensor(name).to_f32();
  return std::vector<float>(t.data_as<float>(), t.data_as<float>() + t.numel());
}
std::vector<double> f64(const std::string& name, const SafetensorsFile& file = fixture()) {
  Tensor t = file.tensor(name);
  EXPECT_EQ(t.dtype(), DType::F64) << name;
  return std::vector<double>(t.data_as<double>(), t.data_as<double>() + t.numel());
}
std::vector<int> i32(const std::string& name, const SafetensorsFile& file = fixture()) {
  return test::tensor_values<int32_t>(file, name);
}
std::vector<uint8_t> u8(const std::string& name, const SafetensorsFile& file = fixture()) {
  return test::tensor_values<uint8_t>(file, name);
}
std::vector<int64_t> shape(const std::string& name) { return fixture().tensor(name).shape(); }

struct Inputs {
  std::vector<float> w, x;  // [rows, cols], [windows, tokens, cols]
  int64_t rows, cols, windows, tokens;
  std::vector<double> h;    // 2 / windows * sum X^T X
};

uint64_t mix32(uint64_t h) {
  h &= 0xFFFFFFFFull;
  h ^= h >> 15;
  h = (h * 0x2C1B3C6Dull) & 0xFFFFFFFFull;
  h ^= h >> 12;
  h = (h * 0x297A2D39ull) & 0xFFFFFFFFull;
  h ^= h >> 15;
  return h;
}

// The script's synthetic_x: exact integer-hash values times powers of two.
std::vector<float> synthetic_x(int64_t n, int64_t cols) {
  std::vector<double> chan(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) {
    const double k = double(mix32(uint64_t(c) * 0x27D4EB2Full + 1) % 5) - 2.0;
    chan[size_t(c)] = std::exp2(k) * (c % 97 == 13 ? 16.0 : 1.0) / (c < 128 ? 16.0 : 1.0);
  }
  std::vector<float> x(size_t(n * cols));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < cols; ++c) {
      const uint64_t h = mix32(uint64_t(t) * 0x9E3779B1ull + uint64_t(c) * 0x85EBCA77ull + 0x165667B1ull);
      x[size_t(t * cols + c)] = float((double(h & 0xFFFF) - 32768.0) / 32768.0 * chan[size_t(c)]);
    }
  return x;
}

const Inputs& inputs() {
  static const Inputs in = [] {
    Inputs r;
    r.w = f32("input.w");
    r.rows = shape("input.w")[0];
    r.cols = shape("input.w")[1];
    const std::vector<int> xs = i32("input.x_shape");
    r.windows = xs[0];
    r.tokens = xs[1];
    EXPECT_EQ(xs[2], r.cols);
    const int64_t n = r.windows * r.tokens, c = r.cols;
    r.x = synthetic_x(n, c);
    const std::vector<float> head = f32("input.x_head");
    EXPECT_TRUE(std::equal(head.begin(), head.end(), r.x.begin())) << "synthetic inputs differ from the script's";
    std::vector<double> xd(r.x.begin(), r.x.end());
    r.h.assign(size_t(c * c), 0.0);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blasint(c), blasint(c), blasint(n), 2.0 / double(r.windows),
                xd.data(), blasint(c), xd.data(), blasint(c), 0.0, r.h.data(), blasint(c));
    return r;
  }();
  return in;
}

// Exact equality of two float vectors, reporting the number of differences and the first one.
void expect_same(const std::vector<float>& got, const std::vector<float>& want, const std::string& key) {
  ASSERT_EQ(got.size(), want.size()) << key;
  size_t n = 0, first = got.size();
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != want[i] && n++ == 0) first = i;
  EXPECT_EQ(n, 0u) << key << ": " << n << " differ, first at " << first << ": "
                   << (first < got.size() ? fmt::format("{:.9g} vs {:.9g}", got[first], want[first]) : "");
}

double match_rate(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  EXPECT_EQ(a.size(), b.size());
  size_t same = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) same += a[i] == b[i];
  return double(same) / double(a.size());
}

// Compares one slim_quantize result with the reference's scales, zeros and weight under `key`:
// the first group (fitted before any error feedback) exactly, later groups to 1e-4 relative
// (the feedback runs on an fp32 factor computed in fp32 by the reference, in fp64 here), codes
// >= 99.9% identical.
void expect_matches(const SlimResult& r, const std::string& key, const std::vector<int>& bits,
                    const Inputs& in = inputs(), const SafetensorsFile& file = fixture()) {
  const int64_t ng = int64_t(bits.size());
  const auto scales = f32(key + ".scales", file), zeros = f32(key + ".zeros", file);
  const auto ref = u8(key + ".codes", file);
  ASSERT_EQ(r.q.scales.size(), scales.size()) << key;
  for (int64_t row = 0; row < in.rows; ++row) {
    const size_t i = size_t(row * ng);
    if (bits[0] == 1) {  // binary: means, to an ulp or two (see QuantizerFitMatchesReferenceExactly)
      EXPECT_NEAR(r.q.scales[i], scales[i], 3e-7f * scales[i]) << key << " row " << row;
      EXPECT_NEAR(r.q.zeros[i], zeros[i], 3e-7f * scales[i]) << key << " row " << row;
      continue;
    }
    EXPECT_EQ(r.q.scales[i], scales[i]) << key << " row " << row;
    EXPECT_EQ(r.q.zeros[i], zeros[i]) << key << " row " << row;
  }
  int64_t far = 0;
  for (size_t i = 0; i < scales.size(); ++i) {
    far += std::fabs(r.q.scales[i] - scales[i]) > 1e-4f * std::fabs(scales[i]);
    far += std::fabs(r.q.zeros[i] - zeros[i]) > 1e-4f * std::max(1.0f, std::fabs(zeros[i]));
  }
  EXPECT_LE(far, int64_t(scales.size()) / 500) << key << ": scales/zeros off by more than 1e-4";
  const double rate = match_rate(r.q.codes, ref);
  std::printf("%s: codes %.5f identical, loss %.6g\n", key.c_str(), rate, r.loss);
  EXPECT_GE(rate, 0.999) << key;
  // The stored format dequantizes to the reference's weight (fp32 here): the reference's codes,
  // scales and zeros in the same format give the same values to 1e-4.
  QuantizedLinear rq = r.q;
  rq.codes = ref;
  rq.scales = scales;
  rq.zeros = zeros;
  std::vector<float> deq(size_t(in.rows * in.cols)), want(deq.size());
  slim_dequantize(r.q, deq.data());
  slim_dequantize(rq, want.data());
  size_t close = 0;
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < deq.size(); ++i) {
    close += std::fabs(deq[i] - want[i]) <= 1e-4f * (std::fabs(want[i]) + 1e-3f);
    max_diff = std::max(max_diff, double(std::fabs(deq[i] - want[i])));
    max_ref = std::max(max_ref, double(std::fabs(want[i])));
  }
  std::printf("%s: weight max |lowbit - reference| %.3g (max |reference| %.3g)\n", key.c_str(), max_diff, max_ref);
  EXPECT_GE(double(close) / double(deq.size()), 0.999) << key;
}

TEST(Slim, ShrinkCandidatesAreTorchs) {
  EXPECT_EQ(slim_shrink_candidates(), f32("slim.linspace"));
}

// Quantizer.fit on a fixed block: scale and zero per row bit for bit.
TEST(Slim, QuantizerFitMatchesReferenceExactly) {
  const Inputs& in = inputs();
  const int64_t n = 128;
  std::vector<float> w1(size_t(n * in.rows));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t r = 0; r < in.rows; ++r) w1[size_t(j * in.rows + r)] = in.w[size_t(r * in.cols + j)];
  const auto hd = f32("slim.fit.hinv_diag");
  for (int bits = 1; bits <= 5; ++bits)
    for (int sym = 0; sym <= (bits > 1 ? 1 : 0); ++sym) {
      const std::string key = "slim.fit.b" + std::to_string(bits) + ".sym" + std::to_string(sym);
      const SlimGroupFit f = slim_fit_group(w1.data(), in.rows, n, hd.data(), bits, sym, 1.0);
      if (bits == 1) {
        // mu and alpha are means: the reference's float reduction order is its kernel's, so
        // they agree to an ulp or two rather than bit for bit.
        const auto sc = f32(key + ".scale"), ze = f32(key + ".zero");
        for (int64_t r = 0; r < in.rows; ++r) {
          EXPECT_NEAR(f.scale[size_t(r)], sc[size_t(r)], 3e-7f * std::fabs(sc[size_t(r)])) << key << " " << r;
          EXPECT_NEAR(f.zero[size_t(r)], ze[size_t(r)], 3e-7f * sc[size_t(r)]) << key << " " << r;
        }
        continue;
      }
      expect_same(f.scale, f32(key + ".scale"), key + ".scale");
      expect_same(f.zero, f32(key + ".zero"), key + ".zero");
    }
  const SlimGroupFit f = slim_fit_group(w1.data(), in.rows, n, hd.data(), 3, false, 4.0);
  expect_same(f.scale, f32("slim.fit.b3.lambda4.scale"), "lambda4.scale");
  expect_same(f.zero, f32("slim.fit.b3.lambda4.zero"), "lambda4.zero");
}

// SBA: the salience, the KL error curves per window, the chosen count and allocation, then GPTQ.
TEST(Slim, BitAllocationSearchAndGptqMatchReference) {
  const Inputs& in = inputs();
  for (int bits : {2, 3, 4}) {
    const std::string key = "slim.w" + std::to_string(bits) + ".sba";
    std::vector<double> h = in.h;
    slim_salience_hessian_edit(h, in.cols);
    double used = -1;
    const std::vector<float> u = gptq_inverse_factor(h, in.cols, 0.0, &used);
    EXPECT_EQ(used, 0.0);
    const auto sal = slim_group_salience(in.w.data(), in.rows, in.cols, u.data(), 128, DType::F32);
    const auto ref_sal = f64(key + ".salience");
    ASSERT_EQ(sal.size(), ref_sal.size());
    for (size_t i = 0; i < sal.size(); ++i) EXPECT_NEAR(sal[i], ref_sal[i], 1e-3 * ref_sal[i]) << key << " group " << i;

    SlimSearch search(in.w.data(), in.rows, in.cols, 128, bits, sal);
    const auto ref_err = f64(key + ".errors");
    ASSERT_EQ(int64_t(ref_err.size()), in.windows * search.candidates());
    std::vector<std::vector<double>> errs;
    for (int64_t s = 0; s < in.windows; ++s) {
      errs.push_back(search.errors(in.x.data() + s * in.tokens * in.cols, in.tokens));
      for (int64_t i = 0; i < search.candidates(); ++i) {
        const double ref = ref_err[size_t(s * search.candidates() + i)];
        EXPECT_NEAR(errs.back()[size_t(i)], ref, 1e-3 * ref) << key << " window " << s << " count " << i + 1;
      }
    }
    const int64_t count = slim_pick_count(errs);
    SlimOptions opt;
    opt.bits = bits;
    SlimResult r = slim_quantize(in.w.data(), in.rows, in.cols, h, opt, {}, count, DType::F32);
    EXPECT_EQ(r.group_bits, i32(key + ".bits")) << key;
    expect_matches(r, key, r.group_bits);
    // #W = N exactly.
    double sum = 0;
    for (int b : r.group_bits) sum += b;
    EXPECT_EQ(sum / double(r.group_bits.size()), double(bits));
  }
}

// The reference's allocation injected (its precomputed-file path) and a fixed count with the
// stale `sym` flag: the first group is the least salient, so at w=3 and w=4 it is fitted with
// zero = (maxq + 1) / 2.
TEST(Slim, InjectedAllocationAndSymQuirkMatchReference) {
  const Inputs& in = inputs();
  for (int bits : {2, 3, 4}) {
    SlimOptions opt;
    opt.bits = bits;
    const std::string key = "slim.w" + std::to_string(bits);
    const std::vector<int> alloc = i32(key + ".sba.bits");
    SlimResult a = slim_quantize(in.w.data(), in.rows, in.cols, in.h, opt, alloc, 0, DType::F32);
    expect_matches(a, key + ".alloc", alloc);

    SlimResult c = slim_quantize(in.w.data(), in.rows, in.cols, in.h, opt, {}, 3, DType::F32);
    EXPECT_EQ(c.group_bits, i32(key + ".count3.bits"));
    expect_matches(c, key + ".count3", c.group_bits);
    if (bits >= 3) {
      ASSERT_EQ(c.group_bits[0], bits - 1);
      EXPECT_EQ(c.q.zeros[0], float(1 << (bits - 2)));
    }
  }
}

TEST(Slim, FormatRoundTripAndAccounting) {
  const Inputs& in = inputs();
  SlimOptions opt;
  opt.bits = 2;
  SlimResult r = slim_quantize(in.w.data(), in.rows, in.cols, in.h, opt, {}, 3, DType::BF16);
  r.q.validate("w2");
  EXPECT_STREQ(r.q.format_name(), "slim");
  EXPECT_EQ(slim_group_bits(r.q), r.group_bits);
  const double code_bits = 2.0, overhead = slim_bits_per_weight(r.q) - code_bits;
  EXPECT_GT(overhead, 0.0);
  EXPECT_LT(overhead, 0.4);
  // QuantizedLinear::dequantize rounds the format's fp32 values to the model's dtype.
  std::vector<float> raw(size_t(in.rows * in.cols)), deq(raw.size());
  slim_dequantize(r.q, raw.data());
  r.q.dequantize(deq.data());
  for (size_t i = 0; i < raw.size(); ++i) EXPECT_EQ(deq[i], round_to_dtype(raw[i], DType::BF16));
  QuantizedLinear bad = r.q;
  bad.codes[0] = 7;
  EXPECT_THROW(slim_validate(bad, "bad"), Error);
  bad = r.q;
  slim_set_group_bits(bad, {2, 2});
  EXPECT_THROW(slim_validate(bad, "bad"), Error);
}

// An allocation file drives the whole model: every linear gets the file's widths (the method
// contract tests check that the written and in-memory checkpoints hold the format's weights).
TEST(Slim, AllocationFileQuantizesTheMiniModel) {
  const std::string mini = test::fixtures_dir() + "/models/llama3-mini-bf16";
  LOWBIT_REQUIRE_PATH(mini);
  LlamaModel model(open_checkpoint(mini));
  const LlamaConfig& c = model.config();
  test::TempDir dir;
  nlohmann::json j;
  std::map<std::string, std::vector<int>> want;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (LinearKind k : kAllLinears) {
      const std::string n = linear_weight_name(l, k);
      const int64_t ng = (linear_in_features(c, k) + 31) / 32;
      std::vector<int> bits(size_t(ng), 2);
      bits[size_t(l) % size_t(ng)] = 1;
      bits[size_t(ng) - 1 - size_t(l) % size_t(ng)] = 3;
      j[n.substr(0, n.size() - 7)] = bits;
      want[n] = bits;
    }
  const std::string path = dir / "alloc.json";
  std::ofstream(path) << j.dump();
  auto method = make_method("slim:w=2,g=32,alloc=" + path);
  ASSERT_NO_THROW(method->check_shapes(c));
  Calibration calib;
  calib.nsamples = 2;
  calib.seqlen = 16;
  PyRandom rng(0);
  for (int i = 0; i < 2; ++i) {
    std::vector<int32_t> w(16);
    for (auto& t : w) t = int32_t(rng.randint(0, c.vocab_size - 1));
    calib.windows.push_back(w);
  }
  QuantizedModel qm = quantize_model(model, *method, &calib, {});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (LinearKind k : kAllLinears) {
      const QuantizedLinear& q = *qm.blocks[size_t(l)].linear[size_t(k)];
      EXPECT_STREQ(q.format_name(), "slim");
      EXPECT_EQ(slim_group_bits(q), want[linear_weight_name(l, k)]);
      EXPECT_NO_THROW(q.validate("mini"));
    }
}

// With fewer than 4 groups the search has no candidate: every group stays at N bits.
TEST(Slim, SearchWithoutCandidatesKeepsNBits) {
  const Inputs& in = inputs();
  std::vector<double> sal = {3.0, 1.0, 2.0};
  SlimSearch search(in.w.data(), in.rows, 384, 128, 3, sal);
  EXPECT_EQ(search.candidates(), 0);
  EXPECT_EQ(slim_allocate(sal, 0, 3), (std::vector<int>{3, 3, 3}));
  EXPECT_EQ(slim_allocate({3.0, 1.0, 2.0, 0.5}, 1, 3), (std::vector<int>{4, 3, 3, 2}));
}

// ---- widths that are not a multiple of the group size ----------------------------------------
// tests/fixtures/quant/slim_partial.safetensors.zst (scripts/slim_partial_reference.py): the
// first 576 and 192 columns of the same rows, calibrated by synthetic_x at that width. The
// reference's last group is then the remaining 64 columns, everything else unchanged.

const SafetensorsFile& partial_fixture() { return test::zst_fixture("quant/slim_partial.safetensors.zst"); }

const Inputs& partial_inputs(int64_t cols) {
  static std::map<int64_t, Inputs> cache;
  auto it = cache.find(cols);
  if (it != cache.end()) return it->second;
  const SafetensorsFile& file = partial_fixture();
  const std::string pre = "c" + std::to_string(cols) + ".input.";
  Inputs r;
  r.w = f32(pre + "w", file);
  r.rows = file.tensor(pre + "w").shape()[0];
  r.cols = file.tensor(pre + "w").shape()[1];
  EXPECT_EQ(r.cols, cols);
  const std::vector<int> xs = i32(pre + "x_shape", file);
  r.windows = xs[0];
  r.tokens = xs[1];
  EXPECT_EQ(xs[2], cols);
  const int64_t n = r.windows * r.tokens;
  r.x = synthetic_x(n, cols);
  const std::vector<float> head = f32(pre + "x_head", file);
  EXPECT_TRUE(std::equal(head.begin(), head.end(), r.x.begin())) << "synthetic inputs differ from the script's";
  std::vector<double> xd(r.x.begin(), r.x.end());
  r.h.assign(size_t(cols * cols), 0.0);
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blasint(cols), blasint(cols), blasint(n),
              2.0 / double(r.windows), xd.data(), blasint(cols), xd.data(), blasint(cols), 0.0, r.h.data(),
              blasint(cols));
  return cache.emplace(cols, std::move(r)).first->second;
}

// The search, the allocation and GPTQ with a last group of 64 columns, held to the same criteria
// as the full-group cases. At 192 columns (two groups) the reference's search has no candidate
// and its fasterquant fails on the empty error list; lowbit keeps every group at N bits there.
TEST(Slim, PartialLastGroupSearchAndGptqMatchReference) {
  const SafetensorsFile& file = partial_fixture();
  for (int64_t cols : {576, 192})
    for (int bits : {2, 3}) {
      const Inputs& in = partial_inputs(cols);
      const int64_t ng = (cols + 127) / 128;
      const std::string key = "c" + std::to_string(cols) + ".w" + std::to_string(bits) + ".sba";
      std::vector<double> h = in.h;
      slim_salience_hessian_edit(h, cols);
      double used = -1;
      const std::vector<float> u = gptq_inverse_factor(h, cols, 0.0, &used);
      EXPECT_EQ(used, 0.0);
      const auto sal = slim_group_salience(in.w.data(), in.rows, cols, u.data(), 128, DType::F32);
      const auto ref_sal = f64(key + ".salience", file);
      ASSERT_EQ(int64_t(sal.size()), ng) << key;
      ASSERT_EQ(sal.size(), ref_sal.size()) << key;
      for (size_t i = 0; i < sal.size(); ++i) EXPECT_NEAR(sal[i], ref_sal[i], 1e-3 * ref_sal[i]) << key << " group " << i;

      SlimSearch search(in.w.data(), in.rows, cols, 128, bits, sal);
      EXPECT_EQ(search.candidates(), ng / 2 - 1) << key;
      SlimOptions opt;
      opt.bits = bits;
      if (file.find(key + ".fails")) {
        EXPECT_EQ(search.candidates(), 0) << key;
        SlimResult r = slim_quantize(in.w.data(), in.rows, cols, h, opt, {}, 0, DType::F32);
        EXPECT_EQ(r.group_bits, std::vector<int>(size_t(ng), bits)) << key;
        continue;
      }
      const auto ref_err = f64(key + ".errors", file);
      ASSERT_EQ(int64_t(ref_err.size()), in.windows * search.candidates()) << key;
      std::vector<std::vector<double>> errs;
      for (int64_t s = 0; s < in.windows; ++s) {
        errs.push_back(search.errors(in.x.data() + s * in.tokens * cols, in.tokens));
        for (int64_t i = 0; i < search.candidates(); ++i) {
          const double ref = ref_err[size_t(s * search.candidates() + i)];
          EXPECT_NEAR(errs.back()[size_t(i)], ref, 1e-3 * ref) << key << " window " << s << " count " << i + 1;
        }
      }
      const int64_t count = slim_pick_count(errs);
      SlimResult r = slim_quantize(in.w.data(), in.rows, cols, h, opt, {}, count, DType::F32);
      EXPECT_EQ(r.group_bits, i32(key + ".bits", file)) << key;
      expect_matches(r, key, r.group_bits, in, file);
    }
}

// A fixed count of one (the labels path with the stale `sym` flag) and injected allocations
// whose partial last group is at N-1 bits (binarized at N = 2) or N+1 bits.
TEST(Slim, PartialLastGroupCountAndAllocationMatchReference) {
  const SafetensorsFile& file = partial_fixture();
  for (int64_t cols : {576, 192})
    for (int bits : {2, 3}) {
      const Inputs& in = partial_inputs(cols);
      const std::string pre = "c" + std::to_string(cols) + ".w" + std::to_string(bits);
      SlimOptions opt;
      opt.bits = bits;
      SlimResult c = slim_quantize(in.w.data(), in.rows, cols, in.h, opt, {}, 1, DType::F32);
      EXPECT_EQ(c.group_bits, i32(pre + ".count1.bits", file)) << pre;
      expect_matches(c, pre + ".count1", c.group_bits, in, file);
      for (const char* name : {".alloc_lo", ".alloc_hi"}) {
        const std::vector<int> alloc = i32(pre + name + ".bits", file);
        EXPECT_EQ(alloc.back(), std::string(name) == ".alloc_lo" ? bits - 1 : bits + 1);
        SlimResult a = slim_quantize(in.w.data(), in.rows, cols, in.h, opt, alloc, 0, DType::F32);
        expect_matches(a, pre + name, alloc, in, file);
      }
    }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

LlamaConfig small_config() {
  LlamaConfig c;
  c.hidden_size = 512;
  c.intermediate_size = 1792;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 64;
  return c;
}

TEST(Slim, BadInputIsRefusedBeforeWork) {
  EXPECT_NE(error_of([] { make_method("slim:w=1"); }).find("w=1 is out of range [2, 8]"), std::string::npos);
  EXPECT_NE(error_of([] { make_method("slim:w=9"); }).find("out of range"), std::string::npos);
  EXPECT_NE(error_of([] { make_method("slim:alloc=/nonexistent.json"); }).find("cannot open the allocation file"),
            std::string::npos);
  const LlamaConfig c = small_config();
  EXPECT_NO_THROW(make_method("slim:w=3")->check_shapes(c));

  test::TempDir dir;
  auto write_alloc = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      for (LinearKind k : kAllLinears) {
        const std::string n = linear_weight_name(l, k);
        const int64_t ng = linear_in_features(c, k) / 128;
        std::vector<int> bits(size_t(ng), 2);
        bits[0] = 1;
        bits[1] = 3;
        j[n.substr(0, n.size() - 7)] = bits;
      }
    edit(j);
    const std::string path = dir / "alloc.json";
    std::ofstream(path) << j.dump();
    return "slim:w=2,alloc=" + path;
  };
  EXPECT_NO_THROW(make_method(write_alloc([](nlohmann::json&) {}))->check_shapes(c));
  EXPECT_NE(error_of([&] {
              make_method(write_alloc([](nlohmann::json& j) { j.erase("model.layers.1.mlp.down_proj"); }))->check_shapes(c);
            }).find("no entry for model.layers.1.mlp.down_proj"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              make_method(write_alloc([](nlohmann::json& j) { j["model.layers.0.self_attn.q_proj"].push_back(2); }))
                  ->check_shapes(c);
            }).find("has 5 widths, expected 4"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              make_method(write_alloc([](nlohmann::json& j) { j["model.layers.0.mlp.up_proj"][2] = 4; }))->check_shapes(c);
            }).find("4-bit group"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              make_method(write_alloc([](nlohmann::json& j) { j["model.layers.0.mlp.up_proj"][2] = 3; }))->check_shapes(c);
            }).find("average 2.25 bits, not w=2"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              make_method(write_alloc([](nlohmann::json& j) { j["model.layers.7.mlp.up_proj"] = {2, 2, 2, 2}; }))
                  ->check_shapes(c);
            }).find("not a linear of this model"),
            std::string::npos);
}

// ---- QuIP ----------------------------------------------------------------------------------------


Butterfly fixture_butterfly(const std::string& which, int64_t n) {
  Butterfly b;
  b.n = n;
  const auto [p0, p1] = quip_butterfly_factors(n);
  b.p = {p0, p1};
  b.blocks[0] = f32("quip." + which + ".blocks0");
  b.blocks[1] = f32("quip." + which + ".blocks1");
  const auto pin = i32("quip." + which + ".perm_in"), pout = i32("quip." + which + ".perm_out");
  b.perm_in.assign(pin.begin(), pin.end());
  b.perm_out.assign(pout.begin(), pout.end());
  return b;
}

// Fraction of equal values.
double same_rate(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  size_t n = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) n += a[i] == b[i];
  return double(n) / double(a.size());
}

TEST(Quip, ButterflyFactorsAndDenseOperatorMatchReference) {
  const auto f = i32("quip.factors");
  for (size_t i = 0; i < f.size(); i += 3) {
    const auto [p0, p1] = quip_butterfly_factors(f[i]);
    EXPECT_EQ(p0, f[i + 1]) << f[i];
    EXPECT_EQ(p1, f[i + 2]) << f[i];
  }
  const Inputs& in = inputs();
  for (const auto& [which, n] : {std::pair{std::string("u"), in.rows}, std::pair{std::string("v"), in.cols}}) {
    const Butterfly b = fixture_butterfly(which, n);
    quip_check_butterfly(b, n, which);
    const std::vector<float> dense = quip_butterfly_dense(b), head = f32("quip." + which + ".dense_head");
    EXPECT_EQ(std::vector<float>(dense.begin(), dense.begin() + int64_t(head.size())), head) << which;
  }
}

TEST(Quip, SeededButterfliesAreOrthogonalAndReproducible) {
  for (int64_t n : {64, 512, 896}) {
    const Butterfly b = quip_random_butterfly(n, 7);
    const std::vector<float> u = quip_butterfly_dense(b);
    std::vector<double> ud(u.begin(), u.end()), g(size_t(n * n));
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blasint(n), blasint(n), blasint(n), 1.0, ud.data(), blasint(n),
                ud.data(), blasint(n), 0.0, g.data(), blasint(n));
    double err = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) err += (g[size_t(i * n + j)] - (i == j)) * (g[size_t(i * n + j)] - (i == j));
    EXPECT_LT(std::sqrt(err), 1e-5) << n;
    EXPECT_EQ(quip_butterfly_dense(quip_random_butterfly(n, 7)), u) << n;
    EXPECT_NE(quip_butterfly_dense(quip_random_butterfly(n, 8)), u) << n;
  }
}

// The dense operator built entry by entry is the factor-by-factor product applied to the
// identity, bit for bit (also with a factor of 1 and uneven factors).
TEST(Quip, DenseButterflyIsTheAppliedButterfly) {
  for (int64_t n : {int64_t(2), int64_t(6), int64_t(64), int64_t(320), int64_t(896), int64_t(1000)}) {
    const Butterfly b = quip_random_butterfly(n, 3);
    std::vector<float> eye(static_cast<size_t>(n * n), 0.0f), applied(static_cast<size_t>(n * n));
    for (int64_t i = 0; i < n; ++i) eye[size_t(i * n + i)] = 1.0f;
    quip_butterfly_apply(b, eye.data(), n, applied.data());
    EXPECT_EQ(quip_butterfly_dense(b), applied) << n << " (" << b.p[0] << " x " << b.p[1] << ")";
  }
}

// The whole per-linear pipeline with the reference's butterflies injected: rescaling, rotated W
// and H, the fp16 grid coordinates, LDLQ codes (and greedy passes), the proxy loss and the final
// un-rotated fp16 weight.
TEST(Quip, LdlqWithIncoherenceMatchesReference) {
  const Inputs& in = inputs();
  std::vector<double> h = in.h;
  for (double& x : h) x *= 0.5;  // sum x x^T / N
  const Butterfly u = fixture_butterfly("u", in.rows), v = fixture_butterfly("v", in.cols);
  for (const auto& [bits, npasses] : {std::pair{2, 0}, std::pair{3, 0}, std::pair{4, 0}, std::pair{2, 2}}) {
    const std::string key = "quip.w" + std::to_string(bits) + ".p" + std::to_string(npasses);
    QuipOptions opt;
    opt.bits = bits;
    opt.npasses = npasses;
    QuipResult r = quip_quantize(in.w.data(), in.rows, in.cols, h, opt, &u, &v, DType::F16);
    if (bits == 2 && npasses == 0) {
      const auto s = f32("quip.s");
      for (int64_t c = 0; c < in.cols; ++c) EXPECT_NEAR(r.s[size_t(c)], s[size_t(c)], 1e-6f * s[size_t(c)]) << c;
      // fp16 roundings of fp32 products summed in another order: rare one-ulp differences.
      const auto wr = f32("quip.w_rot");
      EXPECT_GE(same_rate(r.w_rot, wr), 0.99);
      for (size_t i = 0; i < wr.size(); ++i) EXPECT_LE(std::fabs(r.w_rot[i] - wr[i]), 1e-3f * std::fabs(wr[i]) + 6e-8f) << i;  // 6e-8: the subnormal spacing
      const auto hd = f32("quip.h_rot_diag"), h0 = f32("quip.h_rot_row0");
      for (int64_t c = 0; c < in.cols; ++c) {
        EXPECT_NEAR(r.h_rot[size_t(c * in.cols + c)], hd[size_t(c)], 1e-4f * hd[size_t(c)]) << c;
        EXPECT_NEAR(r.h_rot[size_t(c)], h0[size_t(c)], 1e-4f * hd[0]) << c;
      }
    }
    // The grid coordinates LDLQ starts from (fp16 arithmetic) and the codes.
    std::vector<float> wt(r.w_rot.size());
    const float maxq = float((1 << bits) - 1);
    for (size_t i = 0; i < wt.size(); ++i)
      wt[i] = std::clamp(f16_to_f32(f32_to_f16(
                             f16_to_f32(f32_to_f16(f16_to_f32(f32_to_f16(f16_to_f32(f32_to_f16(r.w_rot[i] / r.scale)) + 1.0f)) * 0.5f)) * maxq)),
                         0.0f, maxq);
    const double wt_rate = same_rate(wt, f32(key + ".wt"));
    const double code_rate = match_rate(r.q.codes, u8(key + ".codes"));
    const double proxy = f64(key + ".proxy")[0];
    // The format dequantizes the reference's codes to its final weight (a single different code
    // moves every weight through the rotations, so the reference's codes are used here).
    QuantizedLinear rq = r.q;
    rq.codes = u8(key + ".codes");
    std::vector<float> deq(size_t(in.rows * in.cols));
    quip_dequantize(rq, deq.data());
    const auto fin = f32(key + ".final");
    size_t close = 0;
    float maxdiff = 0, maxabs = 0;
    for (size_t i = 0; i < deq.size(); ++i) {
      close += std::fabs(deq[i] - fin[i]) <= 2e-3f * std::fabs(fin[i]) + 1.2e-7f;
      maxdiff = std::max(maxdiff, std::fabs(deq[i] - fin[i]));
      maxabs = std::max(maxabs, std::fabs(fin[i]));
    }
    EXPECT_GE(same_rate(deq, fin), 0.99) << key;
    // Sums that cancel to near zero keep the absolute error of their terms.
    EXPECT_LE(maxdiff, 1e-3f * maxabs) << key;
    std::printf("%s: grid coordinates %.5f, codes %.5f identical, proxy %.6g vs %.6g, final weight %.5f within 2 fp16 ulps\n",
                key.c_str(), wt_rate, code_rate, r.proxy_loss, proxy, double(close) / double(deq.size()));
    EXPECT_GE(wt_rate, 0.999) << key;
    EXPECT_GE(code_rate, 0.999) << key;
    EXPECT_NEAR(r.proxy_loss, proxy, 1e-3 * proxy) << key;
    EXPECT_GE(double(close) / double(deq.size()), 0.999) << key;
  }
}

TEST(Quip, FormatStoresTheTransform) {
  const Inputs& in = inputs();
  std::vector<double> h = in.h;
  QuipOptions opt;
  opt.bits = 3;
  const Butterfly u = quip_random_butterfly(in.rows, 11), v = quip_random_butterfly(in.cols, 12);
  QuipResult r = quip_quantize(in.w.data(), in.rows, in.cols, h, opt, &u, &v, DType::BF16);
  quip_validate(r.q, "w3");
  EXPECT_EQ(r.q.params.at("u_seed"), 11);
  EXPECT_EQ(r.q.params.at("v_seed"), 12);
  // Codes, the fp16 scale, s (fp32 per column) and the two seeds.
  EXPECT_DOUBLE_EQ(r.q.bits_per_weight(), 3.0 + (16.0 + 32.0 * double(in.cols) + 128.0) / double(in.rows * in.cols));
  // Explicit butterflies dequantize to the same weight as the seeds that made them.
  Butterfly ue = u, ve = v;
  ue.seed.reset();
  ve.seed.reset();
  QuantizedLinear e = r.q;
  e.extras.clear();
  e.params = nlohmann::json::object();
  quip_store_transform(e, &r.s, &ue, &ve);
  quip_validate(e, "explicit");
  std::vector<float> a(size_t(in.rows * in.cols)), b(a.size());
  quip_dequantize(r.q, a.data());
  quip_dequantize(e, b.data());
  EXPECT_EQ(a, b);
  QuantizedLinear bad = r.q;
  bad.codes[3] = 8;
  EXPECT_THROW(quip_validate(bad, "bad"), Error);
  bad = r.q;
  bad.params.erase("v_seed");
  EXPECT_THROW(quip_validate(bad, "bad"), Error);
}

TEST(Quip, BadInputIsRefusedBeforeWork) {
  EXPECT_NE(error_of([] { make_method("quip:w=5"); }).find("out of range [2, 4]"), std::string::npos);
  EXPECT_NE(error_of([] { make_method("quip:w=1"); }).find("out of range"), std::string::npos);
  EXPECT_NE(error_of([] { make_method("quip:qfn=a"); }).find("unknown option 'qfn'"), std::string::npos);
  LlamaConfig c = small_config();
  EXPECT_NO_THROW(make_method("quip:w=2")->check_shapes(c));
  c.intermediate_size = 1031;  // prime
  EXPECT_NE(error_of([&] { make_method("quip")->check_shapes(c); }).find("butterfly factors are 1031 x 1"),
            std::string::npos);
  EXPECT_NO_THROW(make_method("quip:proj=0")->check_shapes(c));
  c.intermediate_size = 2 * 2053;
  EXPECT_NE(error_of([&] { make_method("quip")->check_shapes(c); }).find("at most 1024"), std::string::npos);
}

// The block context's evaluation of the search over every window (what the method calls) is the
// host evaluation above on each window's inputs of the linear, bit for bit, for every linear.
TEST(Slim, ContextSearchErrorsAreTheHostEvaluation) {
  const std::string dir = test::fixtures_dir() + "/models/llama3-mini-f32";
  LOWBIT_REQUIRE_PATH(dir + "/config.json");
  LlamaModel model(open_checkpoint(dir));
  const Calibration calib = test::random_calibration(model.config().vocab_size, 3, 32);
  const int64_t H = model.config().hidden_size, T = calib.seqlen, n = calib.nsamples;
  std::vector<float> x(size_t(n * T * H));
  for (int64_t s = 0; s < n; ++s) model.embed(calib.windows[size_t(s)], x.data() + s * T * H);
  BlockWeights w = clone_block_weights(*model.block_weights(0));
  CpuBlockContext ctx(model, 0, w, x.data(), n, T, nullptr, nullptr);
  std::vector<std::unique_ptr<SlimSearch>> searches;
  std::vector<BlockContext::KlSearchJob> jobs;
  for (LinearKind k : kAllLinears) {
    const Tensor& wk = w[k];
    const int64_t groups = (wk.dim(1) + 15) / 16;
    std::vector<double> sal(static_cast<size_t>(groups));
    for (int64_t g = 0; g < groups; ++g) sal[size_t(g)] = double((g * 7) % groups);
    searches.push_back(std::make_unique<SlimSearch>(wk.data_as<float>(), wk.dim(0), wk.dim(1), 16, 2, sal));
    ASSERT_GT(searches.back()->candidates(), 0) << linear_name(k);
    jobs.push_back({k, &searches.back()->kl_search()});
  }
  const BlockContext::KlErrors got = ctx.kl_errors(jobs);
  const BlockContext::Inputs in = ctx.capture_inputs(kAllLinears);
  ASSERT_EQ(got.size(), jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    const LinearKind k = jobs[j].linear;
    ASSERT_EQ(int64_t(got[j].size()), n) << linear_name(k);
    for (int64_t s = 0; s < n; ++s)
      EXPECT_EQ(got[j][size_t(s)], searches[j]->errors(in.at(k)->data() + s * T * w[k].dim(1), T))
          << linear_name(k) << " window " << s;
  }
}

}  // namespace
}  // namespace lowbit
