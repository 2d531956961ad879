// KL-divergence (eval/kl_divergence.h) against PyTorch: tests/fixtures/kld/stories260K-rtn.safetensors
// holds stories260K's and its RTN (w=3, g=32) twin's logits on two windows, as `lowbit logits`
// wrote them, and the statistics torch computed from them (scripts/make_kld_fixture.py).
#include "core/error.h"
#include "eval/kl_divergence.h"
#include "eval/perplexity.h"
#include "formats/checkpoint.h"
#include "formats/safetensors.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>

namespace lowbit {
namespace {

std::string stories() { return test::models_dir() + "/stories260K/stories260K.bin"; }
std::string fixture() { return test::fixtures_dir() + "/kld/stories260K-rtn.safetensors"; }

struct Fixture {
  std::vector<std::vector<int32_t>> windows;
  Tensor base, logits;  // [W, T, V]
  nlohmann::json ref;
};

Fixture load_fixture() {
  auto f = SafetensorsFile::open(fixture());
  Fixture x;
  const Tensor tokens = f->tensor("tokens");
  const int64_t W = tokens.dim(0), T = tokens.dim(1);
  for (int64_t w = 0; w < W; ++w)
    x.windows.emplace_back(tokens.data_as<int32_t>() + w * T, tokens.data_as<int32_t>() + (w + 1) * T);
  x.base = f->tensor("base_logits");
  x.logits = f->tensor("logits");
  x.ref = nlohmann::json::parse(f->metadata().at("reference"));
  return x;
}

// Relative agreement with torch's float64 numbers: both sides compute in float64 from the same
// float32 logits, so only summation order separates them (~1e-15 relative).
void expect_matches(const KlDivergenceStats& s, const nlohmann::json& ref, double rel) {
  auto near = [&](double got, const char* key) {
    const double want = ref[key].get<double>();
    EXPECT_LE(std::fabs(got - want), rel * std::fabs(want)) << key << ": " << got << " vs torch " << want;
  };
  EXPECT_EQ(s.positions, ref["positions"].get<int64_t>());
  near(s.mean, "mean");
  near(s.stderr_, "stderr");
  near(s.median, "median");
  near(s.p99, "p99");
  near(s.max, "max");
  near(s.top1, "top1");
  near(s.top1_stderr, "top1_stderr");
}

TEST(KlDivergence, StatisticsMatchTorchOnTheSameLogits) {
  const Fixture x = load_fixture();
  const int64_t T = x.base.dim(1), V = x.base.dim(2);
  std::vector<double> kld;
  std::vector<uint8_t> agree;
  for (size_t w = 0; w < x.windows.size(); ++w) {
    const size_t first = kld.size();
    kld.resize(first + size_t(T - 1));
    agree.resize(kld.size());
    kld_rows(x.base.data_as<float>() + int64_t(w) * T * V, x.logits.data_as<float>() + int64_t(w) * T * V, T - 1, V,
             kld.data() + first, agree.data() + first);
  }
  expect_matches(summarize_kld(kld, agree), x.ref, 1e-6);
}

// The whole path: both models run window by window, the LM head in row chunks. The models are
// the ones the fixture's logits came from (the RTN model held in memory, as studies hold it).
TEST(KlDivergence, ModelsAgainstTorchReference) {
  LOWBIT_REQUIRE_PATH(stories());
  const Fixture x = load_fixture();
  LlamaModel base(open_model(stories()));
  const Checkpoint source = open_model(stories());
  LlamaModel work(source);
  auto method = make_method(x.ref["spec"].get<std::string>());
  QuantizedModel qm = quantize_model(work, *method, nullptr, {});
  LlamaModel q(quantized_checkpoint_in_memory(source, std::move(qm), {{"path", stories()}}));
  install_quantized_forward(q);
  const KlDivergenceResult r = kl_divergence(base, q, x.windows);
  expect_matches(r.kld, x.ref, 1e-6);
  // The perplexities are those perplexity() computes.
  EXPECT_EQ(r.ppl.ppl, perplexity(q, x.windows).ppl);
  EXPECT_EQ(r.base_ppl.ppl, perplexity(base, x.windows).ppl);
}

TEST(KlDivergence, AModelAgainstItselfIsExactlyZero) {
  LOWBIT_REQUIRE_PATH(stories());
  const Fixture x = load_fixture();
  LlamaModel base(open_model(stories()));
  const KlDivergenceResult r = kl_divergence(base, base, x.windows);
  EXPECT_EQ(r.kld.positions, int64_t(x.windows.size() * (x.windows[0].size() - 1)));
  EXPECT_EQ(r.kld.mean, 0.0);
  EXPECT_EQ(r.kld.max, 0.0);
  EXPECT_EQ(r.kld.p99, 0.0);
  EXPECT_EQ(r.kld.top1, 1.0);
  EXPECT_EQ(r.ppl.ppl, r.base_ppl.ppl);
}

TEST(KlDivergence, OtherVocabularyIsAnError) {
  LOWBIT_REQUIRE_PATH(stories());
  LlamaModel base(open_model(stories()));
  LlamaModel other(open_model(test::fixtures_dir() + "/models/llama3-mini-f32"));
  const std::vector<std::vector<int32_t>> windows = {{1, 2, 3, 4}};
  try {
    kl_divergence(base, other, windows);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the base model has 512 tokens in its vocabulary, the model 1024"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace lowbit
