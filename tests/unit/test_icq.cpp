// NF4 (bitsandbytes' quantize_4bit with double quantization) and IR-QLoRA's ICQ against the
// reference code itself: scripts/icq_reference.py runs bitsandbytes and htqin/IR-QLoRA's
// utils.search() on three fixed weights (tests/fixtures/quant/icq.safetensors.zst) and records
// every decision; each is compared here exactly.
#include "core/error.h"
#include "formats/safetensors.h"
#include "quant/icq.h"
#include "quant/method.h"
#include "quant/nf4.h"
#include "test_util.h"
#include "zst_fixture.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

namespace lowbit {
namespace {

const SafetensorsFile& fixture() { return test::zst_fixture("quant/icq.safetensors.zst"); }

template <typename T>
std::vector<T> values(const std::string& name) {
  return test::tensor_values<T>(fixture(), name);
}

// Bitwise equality of two float vectors, naming the first differences.
template <typename T>
void expect_identical(const std::vector<T>& got, const std::vector<T>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0 && bad++ < 5)
      ADD_FAILURE() << what << " [" << i << "]: " << +got[i] << " vs reference " << +want[i];
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " differ";
}

const char* const kWeights[] = {"a", "b", "c"};

// The message of the lowbit::Error that f throws ("" when it throws none).
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
#define EXPECT_ERROR_HAS(expr, text) \
  EXPECT_NE(error_of([&] { (void)(expr); }).find(text), std::string::npos) << error_of([&] { (void)(expr); })

TEST(Nf4, DynamicMapIsBitsandbytes) {
  const auto& m = dynamic_map_signed();
  expect_identical(std::vector<float>(m.begin(), m.end()), values<float>("dynamic_map"), "dynamic map");
}

// The 4-bit codes and the double quantization's map and rounding are bitsandbytes' exactly. Its
// offset, mean(absmax), is torch's fp32 mean (a vectorized cascade sum); lowbit sums in fp64 and
// rounds once, which can differ in the last bit: the second-level absmax then moves by ~1e-7
// relative and an 8-bit absmax code whose value sits within that distance of a rounding
// boundary moves by one step (a few per thousand blocks here).
void expect_double_quant_close(const QuantizedLinear& q, const std::string& p, const std::string& what) {
  const float off = q.extras.at("absmax_offset").data_as<float>()[0], want_off = values<float>(p + ".offset")[0];
  EXPECT_NEAR(off, want_off, 2 * std::abs(std::nextafter(want_off, 1.0f) - want_off)) << what << " offset";
  const Tensor& ac = q.extras.at("absmax_codes");
  const std::vector<uint8_t> want_codes = values<uint8_t>(p + ".absmax_codes");
  ASSERT_EQ(ac.numel(), int64_t(want_codes.size())) << what;
  int64_t moved = 0;
  for (int64_t i = 0; i < ac.numel(); ++i) {
    const int d = int(ac.data_as<uint8_t>()[i]) - int(want_codes[size_t(i)]);
    EXPECT_LE(std::abs(d), 1) << what << " absmax code " << i;
    moved += d != 0;
  }
  EXPECT_LE(moved, ac.numel() / 100) << what << ": absmax codes one step off";
  const Tensor& as = q.extras.at("absmax_scales");
  const std::vector<float> want_as = values<float>(p + ".absmax_scales");
  for (int64_t i = 0; i < as.numel(); ++i)
    EXPECT_NEAR(as.data_as<float>()[i], want_as[size_t(i)], 1e-6 * want_as[size_t(i)]) << what;
}

TEST(Nf4, DoubleQuantizedMatchesBitsandbytes) {
  for (const char* name : kWeights) {
    const std::string p = name;
    Tensor w = fixture().tensor(p + ".w");
    const QuantizedLinear q = nf4_quantize(w.data_as<float>(), w.dim(0), w.dim(1), 64, true, DType::F32);
    expect_identical(q.codes, values<uint8_t>(p + ".nf4.codes"), p + " codes");
    expect_double_quant_close(q, p + ".nf4", p);
    // Dequantized: equal to ~1e-6 except in the blocks whose absmax code moved.
    std::vector<float> deq(size_t(w.numel()));
    q.dequantize(deq.data());
    const std::vector<float> want = values<float>(p + ".nf4.dequant");
    const std::vector<uint8_t> want_codes = values<uint8_t>(p + ".nf4.absmax_codes");
    int64_t far = 0;
    for (int64_t i = 0; i < w.numel(); ++i)
      if (q.extras.at("absmax_codes").data_as<uint8_t>()[i / 64] == want_codes[size_t(i / 64)])
        far += std::abs(deq[size_t(i)] - want[size_t(i)]) > 1e-6 * std::abs(want[size_t(i)]) + 1e-12;
    EXPECT_EQ(far, 0) << p;
  }
}

TEST(Icq, CandidatesMatchTheReference) {
  EXPECT_EQ(icq_sigma(), values<double>("sigma")[0]);
  expect_identical(icq_candidates(0.1, 100), values<double>("factors"), "candidates");
}

TEST(Icq, EveryDecisionMatchesTheReferenceSearch) {
  for (const char* name : kWeights) {
    const std::string p = name;
    Tensor w = fixture().tensor(p + ".w");
    const IcqResult r = icq_quantize(w.data_as<float>(), w.dim(0), w.dim(1), IcqOptions{}, DType::F32);
    expect_identical(r.tau0, values<float>(p + ".icq.tau0"), p + " tau0");
    expect_identical(r.absmax, values<float>(p + ".icq.absmax"), p + " absmax");
    expect_identical(r.choice, values<int32_t>(p + ".icq.factor_index"), p + " chosen candidate");
    expect_identical(r.tau, values<float>(p + ".icq.tau"), p + " tau");
    expect_identical(r.q.codes, values<uint8_t>(p + ".icq.codes"), p + " codes");
    expect_double_quant_close(r.q, p + ".icq", p + " icq");
    const Tensor& tq = r.q.extras.at("icq.tau_q");
    expect_identical(std::vector<uint8_t>(tq.data_as<uint8_t>(), tq.data_as<uint8_t>() + tq.numel()),
                     values<uint8_t>(p + ".icq.tau_q"), p + " tau_q");
    const Tensor& ta = r.q.extras.at("icq.tau_absmax");
    expect_identical(std::vector<float>(ta.data_as<float>(), ta.data_as<float>() + ta.numel()),
                     values<float>(p + ".icq.tau_absmax"), p + " tau_absmax");
    int64_t moved = 0;
    for (int32_t c : r.choice) moved += c != 100;
    EXPECT_GT(moved, int64_t(r.choice.size()) / 2) << p << ": the search should move most blocks";
  }
}

// The format: dequantization is the NF4 value plus the stored tau, the storage cost is NF4's plus
// 8 bits per block and a float per 256 blocks, and damaged extras are errors naming them.
TEST(Icq, FormatDequantizesAndValidates) {
  Tensor w = fixture().tensor("a.w");
  const IcqResult r = icq_quantize(w.data_as<float>(), w.dim(0), w.dim(1), IcqOptions{}, DType::F32);
  std::vector<float> deq(size_t(w.numel()));
  r.q.dequantize(deq.data());
  const auto& map = dynamic_map_signed();
  const uint8_t* tq = r.q.extras.at("icq.tau_q").data_as<uint8_t>();
  const float* ta = r.q.extras.at("icq.tau_absmax").data_as<float>();
  for (int64_t i = 0; i < w.numel(); i += 37) {
    const int64_t b = i / 64;
    // Each product rounded on its own (volatile: no fused multiply-add), as the format computes it.
    volatile float nf4 = r.q.codebook[r.q.codes[size_t(i)]] * r.q.scales[size_t(b)];
    volatile float tau = map[tq[b]] * ta[b / 256];
    const float want = nf4 + tau;
    ASSERT_EQ(deq[size_t(i)], want) << i;
  }
  double err = 0, norm = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    err += std::pow(double(deq[size_t(i)]) - double(w.data_as<float>()[i]), 2);
    norm += std::pow(double(w.data_as<float>()[i]), 2);
  }
  EXPECT_LT(std::sqrt(err / norm), 0.15);
  EXPECT_NEAR(r.q.bits_per_weight(), 4.0 + (8.0 + 32.0 / 256) / 64 + 8.0 / 64 + 32.0 / 16384, 1e-9);
  QuantizedLinear bad = r.q;
  bad.extras.erase("icq.tau_q");
  EXPECT_ERROR_HAS(bad.validate("x"), "format icq lacks extra 'icq.tau_q'");
  bad = r.q;
  bad.extras["icq.tau_absmax"] = Tensor::empty(DType::F32, {3});
  EXPECT_ERROR_HAS(bad.validate("x"), "extra icq.tau_absmax holds 3 F32 values for 512 blocks in groups of 256");
  EXPECT_ERROR_HAS(icq_quantize(w.data_as<float>(), 3, 7, IcqOptions{}, DType::F32),
                   "icq: a [3, 7] weight has 21 elements, not a multiple of the block size 64");
  EXPECT_ERROR_HAS(make_method("icq:tau_n=-1"), "tau_n");
}

}  // namespace
}  // namespace lowbit
