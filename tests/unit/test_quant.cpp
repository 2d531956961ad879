// Quantization methods against independent PyTorch implementations written from their
// definitions (tests/fixtures/quant, scripts/quant_reference.py), on real weights and a Hessian
// from real activations; spec parsing; code packing.
#include "core/error.h"
#include "formats/safetensors.h"
#include "quant/gptq.h"
#include "quant/method.h"
#include "quant/nf4.h"
#include "quant/quant_spec.h"
#include "quant/rtn.h"
#include "test_util.h"
#include "zst_fixture.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

namespace lowbit {
namespace {

// The fixture, decompressed once into a temporary file and mapped.
const SafetensorsFile& fixture() { return test::zst_fixture("quant/layer0.safetensors.zst"); }

template <typename T>
std::vector<T> values(const std::string& name) {
  return test::tensor_values<T>(fixture(), name);
}

std::vector<double> fixture_hessian() {
  const std::vector<float> h = values<float>("input.hessian");
  return std::vector<double>(h.begin(), h.end());
}

struct Weight {
  std::vector<float> w;
  int64_t rows, cols;
};
Weight fixture_weight(const std::string& name) {
  Tensor t = fixture().tensor("input." + name);
  return {values<float>("input." + name), t.dim(0), t.dim(1)};
}

// Index and values of the first difference, for failure messages.
template <typename T>
std::string first_diff(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return "sizes " + std::to_string(a.size()) + " vs " + std::to_string(b.size());
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0)
      return "at " + std::to_string(i) + ": " + std::to_string(double(a[i])) + " vs " + std::to_string(double(b[i]));
  return "";
}

TEST(QuantSpec, ParsesAndResolves) {
  auto m = make_method("gptq:w=3,g=-1,act_order=1");
  EXPECT_EQ(m->spec().text(), "gptq:w=3,g=-1,act_order=1");
  EXPECT_EQ(m->spec().resolved(), "gptq:w=3,g=-1,sym=0,act_order=1,static_groups=0,damp=0.01,block=128,true_seq=1");
  EXPECT_EQ(make_method("rtn")->spec().resolved(), "rtn:w=4,g=128,sym=0,a=16,act=per_token");
  EXPECT_EQ(make_method("nf4:dq=1")->spec().resolved(), "nf4:dq=1,b=64");
}

TEST(QuantSpec, BadSpecsNameTheProblem) {
  auto err = [](const std::string& spec) {
    try {
      make_method(spec);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(err("gptx:w=4").find("unknown method 'gptx'"), std::string::npos) << err("gptx:w=4");
  EXPECT_NE(err("gptq:w=9").find("w=9 is out of range [2, 8]"), std::string::npos) << err("gptq:w=9");
  EXPECT_NE(err("rtn:w=1").find("out of range"), std::string::npos);
  EXPECT_NE(err("gptq:bits=4").find("unknown option 'bits'"), std::string::npos) << err("gptq:bits=4");
  EXPECT_NE(err("gptq:w=4,w=3").find("given twice"), std::string::npos);
  EXPECT_NE(err("gptq:w").find("not of the form key=value"), std::string::npos);
  EXPECT_NE(err("gptq:w=four").find("not an integer"), std::string::npos);
  EXPECT_NE(err("gptq:damp=x").find("not a number"), std::string::npos);
  EXPECT_NE(err("rtn:g=0").find("g=0 is not a group size"), std::string::npos);
  EXPECT_NE(err("gptq:act_order=2").find("not a boolean"), std::string::npos);
}

// RTN, GPTQ and AWQ take the integer grid's w, g and sym through the shared helpers: one range,
// one help line and one g=0 refusal (naming the method) each.
TEST(QuantSpec, IntegerGridOptionsAreShared) {
  std::vector<std::string> w_help, g_help;
  for (const char* name : {"rtn", "gptq", "awq"}) {
    SCOPED_TRACE(name);
    try {
      make_method(std::string(name) + ":g=0");
      ADD_FAILURE() << "g=0 accepted";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(std::string(name) + ": option g=0 is not a group size", 0), 0u) << e.what();
    }
    EXPECT_THROW(make_method(std::string(name) + ":w=9"), Error);
    EXPECT_THROW(make_method(std::string(name) + ":g=-2"), Error);
    for (const std::string& line : method_help(name)) {
      if (line.find("w (") != std::string::npos && w_help.size() < 3) w_help.push_back(line);
      if (line.find("g (") != std::string::npos && g_help.size() < 3) g_help.push_back(line);
    }
  }
  ASSERT_EQ(w_help.size(), 3u);
  ASSERT_EQ(g_help.size(), 3u);
  for (size_t i = 1; i < 3; ++i) {
    EXPECT_EQ(w_help[i], w_help[0]);
    EXPECT_EQ(g_help[i], g_help[0]);
  }
  EXPECT_EQ(make_method("gptq:sym=1")->spec().resolved().find("sym=1") != std::string::npos, true);
}

TEST(QuantizedLinear, PackingRoundTrips) {
  std::mt19937 g(1);
  for (int bits = 1; bits <= 8; ++bits)
    for (int64_t cols : {1, 7, 64, 129}) {
      const int64_t rows = 3;
      std::vector<uint8_t> codes(size_t(rows * cols));
      for (auto& c : codes) c = uint8_t(g() % (1u << bits));
      const auto packed = pack_codes(codes, rows, cols, bits);
      EXPECT_EQ(int64_t(packed.size()), rows * ((cols * bits + 7) / 8));
      EXPECT_EQ(unpack_codes(packed.data(), rows, cols, bits), codes) << bits << " bits, " << cols << " cols";
    }
}

// RTN: codes, scales and zero-points equal the reference bit for bit.
TEST(QuantParity, RtnMatchesReferenceExactly) {
  for (const std::string name : {"q_proj", "down_proj"}) {
    const Weight w = fixture_weight(name);
    for (int bits : {2, 3, 4, 8})
      for (int64_t g : {int64_t(-1), int64_t(128)})
        for (int sym : {0, 1}) {
          const std::string key =
              "rtn." + name + ".w" + std::to_string(bits) + ".g" + std::to_string(g) + ".sym" + std::to_string(sym);
          QuantizedLinear q = rtn_quantize(w.w.data(), w.rows, w.cols, bits, g, sym, DType::F32);
          const auto codes = values<uint8_t>(key + ".codes");
          const auto scales = values<float>(key + ".scales");
          const auto zeros = values<float>(key + ".zeros");
          EXPECT_EQ(q.codes, codes) << key << " codes differ " << first_diff(q.codes, codes);
          EXPECT_EQ(q.scales, scales) << key << " scales differ " << first_diff(q.scales, scales);
          EXPECT_EQ(q.zeros, zeros) << key << " zeros differ " << first_diff(q.zeros, zeros);
        }
  }
}

// NF4 with and without double quantization: codes bit for bit, (effective) absmax bit for bit
// without double quantization and to fp32 rounding with it.
TEST(QuantParity, Nf4MatchesReferenceExactly) {
  for (const std::string name : {"q_proj", "down_proj"}) {
    const Weight w = fixture_weight(name);
    for (int dq : {0, 1}) {
      const std::string key = "nf4." + name + ".dq" + std::to_string(dq);
      QuantizedLinear q = nf4_quantize(w.w.data(), w.rows, w.cols, 64, dq, DType::F32);
      const auto codes = values<uint8_t>(key + ".codes");
      const auto scales = values<float>(key + ".scales");
      EXPECT_EQ(q.codes, codes) << key << " codes differ " << first_diff(q.codes, codes);
      if (dq) {
        // The reference builds the 8-bit dynamic map in fp64; lowbit reproduces bitsandbytes' fp32
        // construction (72 of its 256 entries differ in the last bit; test_icq compares it with
        // bitsandbytes itself), so the decoded absmax agree to fp32 rounding, the codes exactly.
        ASSERT_EQ(q.scales.size(), scales.size()) << key;
        for (size_t i = 0; i < scales.size(); ++i)
          EXPECT_NEAR(q.scales[i], scales[i], 2e-7 * std::abs(scales[i])) << key << " absmax " << i;
      } else {
        EXPECT_EQ(q.scales, scales) << key << " absmax differ " << first_diff(q.scales, scales);
      }
      if (dq) {
        auto as_vec = [](const Tensor& t, auto tag) {
          using T = decltype(tag);
          return std::vector<T>(t.data_as<T>(), t.data_as<T>() + t.numel());
        };
        EXPECT_EQ(as_vec(q.extras.at("absmax_codes"), uint8_t{}), values<uint8_t>(key + ".absmax_codes")) << key;
        EXPECT_EQ(as_vec(q.extras.at("absmax_scales"), float{}), values<float>(key + ".absmax_scales")) << key;
        EXPECT_EQ(as_vec(q.extras.at("absmax_offset"), float{}), values<float>(key + ".absmax_offset")) << key;
      }
    }
  }
}

TEST(QuantParity, Nf4DequantizesThroughTheCodebook) {
  const Weight w = fixture_weight("q_proj");
  QuantizedLinear q = nf4_quantize(w.w.data(), w.rows, w.cols, 64, false, DType::F32);
  const Tensor d = q.dequantize_f32();
  for (int64_t i = 0; i < w.rows * w.cols; i += 97)
    EXPECT_EQ(d.data_as<float>()[i], nf4_values()[q.codes[size_t(i)]] * q.scales[size_t(i / 64)]);
}

// GPTQ: the same integer codes as the reference except where the two land on different sides
// of a rounding boundary because their GEMMs sum in different orders (the lazy batch update);
// grids, losses and the act_order permutation agree.
TEST(QuantParity, GptqMatchesReference) {
  const Weight w = fixture_weight("q_proj");
  const std::vector<double> h = fixture_hessian();
  struct Config {
    int bits;
    int64_t g;
    bool sym, act, stat;
  };
  for (const Config c : {Config{4, 128, 0, 0, 0}, Config{3, 128, 0, 0, 0}, Config{2, 128, 0, 0, 0},
                         Config{4, -1, 0, 0, 0}, Config{3, -1, 1, 0, 0}, Config{4, 128, 0, 1, 0},
                         Config{4, 128, 0, 1, 1}, Config{4, 64, 0, 0, 0}, Config{3, 128, 1, 1, 0}}) {
    const std::string key = "gptq.w" + std::to_string(c.bits) + ".g" + std::to_string(c.g) + ".sym" +
                            std::to_string(int(c.sym)) + ".act" + std::to_string(int(c.act)) + ".static" +
                            std::to_string(int(c.stat));
    GptqOptions o;
    o.bits = c.bits;
    o.group_size = c.g;
    o.sym = c.sym;
    o.act_order = c.act;
    o.static_groups = c.stat;
    GptqResult r = gptq_quantize(w.w.data(), w.rows, w.cols, h, o, DType::F32);
    const auto codes = values<uint8_t>(key + ".codes");
    ASSERT_EQ(r.q.codes.size(), codes.size()) << key;
    int64_t mismatch = 0, far = 0;
    for (size_t i = 0; i < codes.size(); ++i) {
      mismatch += r.q.codes[i] != codes[i];
      far += std::abs(int(r.q.codes[i]) - int(codes[i])) > 1;
    }
    const double rate = double(mismatch) / double(codes.size());
    std::printf("%-34s codes differing: %ld of %zu (%.2e); loss %.6g vs reference %.6g\n", key.c_str(), long(mismatch),
                codes.size(), rate, r.loss, values<double>(key + ".loss")[0]);
    // Rounding-boundary flips are rare and move a code by one step.
    EXPECT_LT(rate, 2e-3) << key;
    EXPECT_EQ(far, 0) << key;
    EXPECT_NEAR(r.loss, values<double>(key + ".loss")[0], 2e-3 * values<double>(key + ".loss")[0]) << key;
    const auto scales = values<float>(key + ".scales");
    for (size_t i = 0; i < scales.size(); ++i) EXPECT_NEAR(r.q.scales[i], scales[i], 1e-4f * scales[i]) << key << " " << i;
    if (fixture().find(key + ".g_idx") != nullptr) {
      EXPECT_EQ(r.q.g_idx, values<int32_t>(key + ".g_idx")) << key;
    } else {
      EXPECT_TRUE(r.q.g_idx.empty()) << key;
    }
  }
}

// GPTQ's error compensation must beat plain rounding on the output error it minimizes.
TEST(QuantParity, GptqBeatsRtnOnTheProxyLoss) {
  const Weight w = fixture_weight("q_proj");
  const std::vector<double> h = fixture_hessian();
  for (int bits : {2, 3, 4}) {
    GptqOptions o;
    o.bits = bits;
    const Tensor g = gptq_quantize(w.w.data(), w.rows, w.cols, h, o, DType::F32).q.dequantize_f32();
    const Tensor r = rtn_quantize(w.w.data(), w.rows, w.cols, bits, 128, false, DType::F32).dequantize_f32();
    const double eg = relative_output_error(w.w.data(), g.data_as<float>(), w.rows, w.cols, h);
    const double er = relative_output_error(w.w.data(), r.data_as<float>(), w.rows, w.cols, h);
    std::printf("w%d g128: output error gptq %.5f, rtn %.5f\n", bits, eg, er);
    EXPECT_LT(eg, er) << bits;
  }
}

TEST(QuantParity, GptqEscalatesDampingOnASingularHessian) {
  // Rank-deficient H (fewer samples than columns) with zero damping: the Cholesky fails and
  // the damping is raised until it succeeds.
  const int64_t rows = 8, cols = 32;
  std::mt19937 g(3);
  std::normal_distribution<float> nd;
  std::vector<float> w(size_t(rows * cols)), x(size_t(4 * cols));
  for (auto& v : w) v = nd(g);
  for (auto& v : x) v = nd(g);
  std::vector<double> h(size_t(cols * cols), 0.0);
  for (int64_t n = 0; n < 4; ++n)
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < cols; ++j) h[size_t(i * cols + j)] += double(x[size_t(n * cols + i)]) * x[size_t(n * cols + j)];
  GptqOptions o;
  o.damp = 0.0;
  o.group_size = -1;
  GptqResult r = gptq_quantize(w.data(), rows, cols, h, o, DType::F32);
  EXPECT_GT(r.damp, 0.0);
  // A dead input column is zeroed and counted.
  for (int64_t j = 0; j < cols; ++j) h[size_t(5 * cols + j)] = h[size_t(j * cols + 5)] = 0.0;
  o.damp = 0.01;
  r = gptq_quantize(w.data(), rows, cols, h, o, DType::F32);
  EXPECT_EQ(r.dead_columns, 1);
  const Tensor d = r.q.dequantize_f32();
  for (int64_t rr = 0; rr < rows; ++rr) EXPECT_EQ(d.data_as<float>()[rr * cols + 5], 0.0f);
}

}  // namespace
}  // namespace lowbit
