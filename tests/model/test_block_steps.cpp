// The block written once (model/llama_block.h): the loop runs the steps in table order and stops
// right after a site's hooks; the CPU forward visits the hook sites in that order, each site's
// linears as the tensor table lists them, and stops where the table says; hooks that only
// observe leave every number as it is. tests/cuda/test_cuda_block_steps.cpp checks the GPU
// forward against the same description and against this CPU forward.
#include "backend/ops.h"
#include "core/error.h"
#include "formats/checkpoint.h"
#include "model/llama_block.h"
#include "model/llama_model.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace lowbit {
namespace {

// Records the steps the loop asks for, as "op:site" strings.
class RecordingOps final : public BlockOps {
 public:
  std::vector<std::string> calls;
  void norm(BlockHalf h) override { calls.push_back(h == BlockHalf::Attention ? "norm:attn" : "norm:mlp"); }
  void hooks(InputSite s) override { calls.push_back(std::string("hooks:") + input_site_name(s)); }
  void products(InputSite s) override { calls.push_back(std::string("products:") + input_site_name(s)); }
  void attention() override { calls.push_back("attention"); }
  void swiglu() override { calls.push_back("swiglu"); }
  void residual(BlockHalf h) override { calls.push_back(h == BlockHalf::Attention ? "residual:attn" : "residual:mlp"); }
};

std::vector<std::string> record(std::span<const BlockStep> steps, std::optional<InputSite> stop, bool* stopped) {
  RecordingOps ops;
  *stopped = run_block_steps(ops, steps, stop);
  return ops.calls;
}

std::vector<std::optional<InputSite>> all_stops() {
  std::vector<std::optional<InputSite>> out = {std::nullopt};
  for (InputSite s : kAllInputSites) out.push_back(s);
  return out;
}

// The steps' structure against the tensor table: the sites in the table's order, each site's
// hooks right before its products, a half from its input site's hooks to its output site's
// products, and the loop's stops.
TEST(BlockSteps, SitesInTableOrderAndStopsAfterHooks) {
  bool stopped = false;
  const std::vector<std::string> full = record(block_steps(), std::nullopt, &stopped);
  EXPECT_FALSE(stopped);
  ASSERT_EQ(full.size(), block_steps().size());
  const std::vector<InputSite> sites = visited_sites(block_steps());
  EXPECT_EQ(sites, std::vector<InputSite>(kAllInputSites.begin(), kAllInputSites.end()));
  for (size_t i = 0; i < full.size(); ++i) {
    if (full[i].rfind("hooks:", 0) != 0) continue;
    ASSERT_LT(i + 1, full.size());
    EXPECT_EQ(full[i + 1], "products:" + full[i].substr(6)) << "a site's products follow its hooks";
  }
  for (BlockHalf h : {BlockHalf::Attention, BlockHalf::Mlp}) {
    const auto half = half_steps(h);
    ASSERT_FALSE(half.empty());
    EXPECT_EQ(half.front().op, BlockOp::Hooks);
    EXPECT_EQ(half.back().op, BlockOp::Products);
    for (const BlockStep& st : half) EXPECT_EQ(st.half, h);
    EXPECT_EQ(visited_sites(half).size(), 2u);
  }
  for (auto stop : all_stops()) {
    const std::vector<std::string> got = record(block_steps(), stop, &stopped);
    EXPECT_EQ(stopped, stop.has_value());
    ASSERT_LE(got.size(), full.size());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), full.begin())) << "a stopped run is a prefix of the full one";
    if (stop) {
      EXPECT_EQ(got.back(), std::string("hooks:") + input_site_name(*stop));
      EXPECT_EQ(visited_sites(block_steps(), stop).back(), *stop);
    }
  }
}

struct Visit {
  std::vector<LinearKind> inputs, outputs;
};

// One block of the mini model on an embedded random sequence, with recording hooks.
class CpuBlockVisits : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = test::fixtures_dir() + "/models/llama3-mini-f32";
    LOWBIT_REQUIRE_PATH(dir);
    model_ = std::make_unique<LlamaModel>(open_checkpoint(dir));
    std::mt19937 g(7);
    std::uniform_int_distribution<int32_t> d(0, int32_t(model_->config().vocab_size - 1));
    tokens_.resize(size_t(T_));
    for (auto& t : tokens_) t = d(g);
    hidden0_.resize(size_t(T_ * model_->config().hidden_size));
    model_->embed(tokens_, hidden0_.data());
  }

  std::vector<float> run(int64_t layer, std::optional<InputSite> stop, bool observe, Visit* visit) const {
    std::vector<float> h = hidden0_;
    BlockHooks hooks;
    hooks.stop_after = stop;
    if (observe) {
      hooks.on_input = [&](int64_t l, LinearKind k, float*, int64_t, int64_t cols) {
        EXPECT_EQ(l, layer);
        EXPECT_EQ(cols, linear_in_features(model_->config(), k)) << linear_name(k);
        visit->inputs.push_back(k);
      };
      hooks.on_output = [&](int64_t, LinearKind k, const float*, int64_t, int64_t cols) {
        EXPECT_EQ(cols, linear_out_features(model_->config(), k)) << linear_name(k);
        visit->outputs.push_back(k);
      };
    }
    model_->run_block(layer, h.data(), 1, T_, 0, observe || stop ? &hooks : nullptr);
    return h;
  }

  const int64_t T_ = 24;
  std::unique_ptr<LlamaModel> model_;
  std::vector<int32_t> tokens_;
  std::vector<float> hidden0_;
};

TEST_F(CpuBlockVisits, HooksFollowTheStepsAndTheTensorTable) {
  for (auto stop : all_stops()) {
    const std::string what = stop ? input_site_name(*stop) : "no stop";
    Visit v;
    (void)run(1, stop, /*observe=*/true, &v);
    // Inputs: every linear of every visited site, in the table's order; outputs: the linears of
    // every site whose products ran (all visited sites but the one stopped after).
    std::vector<LinearKind> want_in, want_out;
    for (InputSite s : visited_sites(block_steps(), stop)) {
      for (LinearKind k : site_linears(s)) {
        want_in.push_back(k);
        if (s != stop) want_out.push_back(k);
      }
    }
    EXPECT_EQ(v.inputs, want_in) << what;
    EXPECT_EQ(v.outputs, want_out) << what;
  }
}

// A run that stops after last_input_site(kinds) has shown every linear of `kinds` its input, for
// every set of linears; the linears of a site share its width.
TEST_F(CpuBlockVisits, LastInputSiteServesEveryLinear) {
  for (InputSite s : kAllInputSites)
    for (LinearKind k : site_linears(s))
      EXPECT_EQ(linear_in_features(model_->config(), k), input_site_features(model_->config(), s)) << linear_name(k);
  for (unsigned mask = 1; mask < (1u << kAllLinears.size()); ++mask) {
    std::vector<LinearKind> kinds;
    for (size_t i = 0; i < kAllLinears.size(); ++i)
      if (mask & (1u << i)) kinds.push_back(kAllLinears[i]);
    Visit v;
    (void)run(0, last_input_site(kinds), /*observe=*/true, &v);
    for (LinearKind k : kinds)
      EXPECT_NE(std::find(v.inputs.begin(), v.inputs.end(), k), v.inputs.end())
          << "mask " << mask << " " << linear_name(k);
    // ...and stopped at the first site that serves them all: one of theirs, the last visited.
    const InputSite last = last_input_site(kinds);
    EXPECT_EQ(input_site(v.inputs.back()), last) << "mask " << mask;
    EXPECT_TRUE(std::any_of(kinds.begin(), kinds.end(), [&](LinearKind k) { return input_site(k) == last; }))
        << "mask " << mask;
  }
}

// Stopping leaves the residual stream as the steps before the stop made it: unchanged within the
// attention half, the attention half's residual added within the MLP half.
TEST_F(CpuBlockVisits, StopLeavesTheStepsBeforeIt) {
  const LlamaConfig& c = model_->config();
  const int64_t H = c.hidden_size, N = T_;
  const auto w = model_->block_weights(1);
  std::vector<float> after_attn = hidden0_, x(size_t(N * H)), y(size_t(N * H));
  ops::rmsnorm(after_attn.data(), w->input_norm.data_as<float>(), x.data(), N, H, float(c.rms_norm_eps));
  ASSERT_FALSE(model_->attention_part(1, *w, x.data(), y.data(), 1, T_));
  for (int64_t i = 0; i < N * H; ++i) after_attn[size_t(i)] += y[size_t(i)];
  Visit unused;
  for (InputSite s : kAllInputSites) {
    const std::vector<float> got = run(1, s, /*observe=*/false, &unused);
    const bool in_attention = s == InputSite::AttnIn || s == InputSite::AttnOut;
    const std::vector<float>& want = in_attention ? hidden0_ : after_attn;
    EXPECT_EQ(0, std::memcmp(got.data(), want.data(), want.size() * sizeof(float))) << input_site_name(s);
  }
}

// Hooks that only observe change nothing: the block's output with them is bit for bit the output
// without them (each linear then reads its own copy of its site's input).
TEST_F(CpuBlockVisits, ObservingChangesNoNumber) {
  Visit v;
  const std::vector<float> plain = run(0, std::nullopt, /*observe=*/false, &v);
  const std::vector<float> observed = run(0, std::nullopt, /*observe=*/true, &v);
  EXPECT_EQ(0, std::memcmp(plain.data(), observed.data(), plain.size() * sizeof(float)));
  EXPECT_NE(0, std::memcmp(plain.data(), hidden0_.data(), plain.size() * sizeof(float))) << "the block ran";
}

// The cache's positions (model/kv_cache.h): a capacity outside the model's context, a forward
// that would overrun the cache and a truncation past its length are refused, naming the numbers.
TEST_F(CpuBlockVisits, KvCacheRefusesWhatDoesNotFit) {
  const int64_t context = model_->config().max_position_embeddings;
  auto message = [](const auto& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] { model_->make_kv_cache(0); }).find("KV cache of 0 positions"), std::string::npos);
  EXPECT_NE(message([&] { model_->make_kv_cache(context + 1); }).find(std::to_string(context)), std::string::npos);
  KvCache cache = model_->make_kv_cache(8);
  std::vector<float> hidden(size_t(8 * model_->config().hidden_size));
  model_->forward_cached(std::span(tokens_).first(6), cache, hidden.data());
  EXPECT_EQ(cache.length, 6);
  EXPECT_NE(message([&] { model_->forward_cached(std::span(tokens_).first(3), cache, hidden.data()); })
                .find("KV cache holds 8 positions; 6 + 3 do not fit"),
            std::string::npos);
  EXPECT_EQ(cache.length, 6) << "a refused forward leaves the cache as it was";
  EXPECT_NE(message([&] { cache.truncate(7); }).find("cannot truncate 6 positions to 7"), std::string::npos);
  cache.truncate(2);
  EXPECT_EQ(cache.length, 2);
}

}  // namespace
}  // namespace lowbit
