// AWQ and SmoothQuant against independent PyTorch implementations
// (tests/fixtures/quant/awq_sq_*.safetensors, scripts/awq_smoothquant_reference.py) on block 0
// of the fixture models, and the folding check: scales folded in leave the 16-bit model's
// function unchanged.
#include "calib/block_driver.h"
#include "formats/checkpoint.h"
#include "formats/safetensors.h"
#include "core/error.h"
#include "quant/activation_quant.h"
#include "quant/awq.h"
#include "quant/smoothquant.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

namespace lowbit {
namespace {

using K = LinearKind;

std::vector<float> floats(const Tensor& t) { return std::vector<float>(t.data_as<float>(), t.data_as<float>() + t.numel()); }

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    m = std::max(m, std::fabs(double(a[i]) - double(b[i])) / std::max(1e-12, std::fabs(double(b[i]))));
  return m;
}

struct Case {
  const char* model;
  const char* fixture;
  int bits;
  int64_t group;
};

class AwqSmoothQuantParity : public ::testing::TestWithParam<Case> {};

// Block 0's inputs: the embeddings of the fixture's windows.
std::vector<float> block_inputs(const LlamaModel& m, const Tensor& ids) {
  const int64_t n = ids.dim(0), T = ids.dim(1), H = m.config().hidden_size;
  std::vector<float> x(size_t(n * T * H));
  for (int64_t s = 0; s < n; ++s)
    m.embed(std::span<const int32_t>(ids.data_as<int32_t>() + s * T, size_t(T)), x.data() + s * T * H);
  return x;
}

TEST_P(AwqSmoothQuantParity, ChoicesMatchTheReference) {
  const Case c = GetParam();
  auto ref = SafetensorsFile::open(test::fixtures_dir() + "/quant/" + c.fixture);
  LlamaModel model(open_checkpoint(test::fixtures_dir() + "/models/" + c.model));
  const Tensor ids = ref->tensor("input.ids");
  std::vector<float> x = block_inputs(model, ids);

  BlockWeights w = clone_block_weights(*model.block_weights(0));
  CpuBlockContext ctx(model, 0, w, x.data(), ids.dim(0), ids.dim(1), nullptr, nullptr);
  AwqOptions opt;
  opt.bits = c.bits;
  opt.group_size = c.group;
  const AwqBlockChoices ch = awq_scale_and_clip(ctx, opt);
  const std::map<std::string, std::string> names = {{"qkv", "qkv"}, {"v->o", "v_o"}, {"gate,up", "gate_up"},
                                                    {"up->down", "up_down"}};
  const bool mha = model.config().num_key_value_heads == model.config().num_attention_heads;
  EXPECT_EQ(ch.groups.size(), mha ? 4u : 3u);
  for (const auto& g : ch.groups) {
    const std::string key = "awq." + names.at(g.name);
    ASSERT_NE(ref->find(key + ".ratio"), nullptr) << key;
    EXPECT_EQ(g.ratio, ref->tensor(key + ".ratio").data_as<double>()[0]) << key;
    const double ds = max_rel_diff(g.scales, floats(ref->tensor(key + ".scales")));
    const Tensor rl = ref->tensor(key + ".losses");
    std::vector<float> losses(g.losses.begin(), g.losses.end()), want(size_t(rl.numel()));
    for (int64_t i = 0; i < rl.numel(); ++i) want[size_t(i)] = float(rl.data_as<double>()[i]);
    const double dl = max_rel_diff(losses, want);
    std::printf("%s %-8s ratio %.2f: scales max rel diff %.2e, grid losses max rel diff %.2e\n", c.model,
                g.name.c_str(), g.ratio, ds, dl);
    // Scales are x_mean^r / sqrt(max * min): equal up to the order of the mean's sum.
    EXPECT_LT(ds, 1e-5) << key;
    // Losses are means of squared output differences after fp32 block forwards.
    EXPECT_LT(dl, 1e-3) << key;
  }
  for (K k : {K::V, K::O, K::Gate, K::Up, K::Down}) {
    const std::vector<float> want = floats(ref->tensor(std::string("awq.clip.") + (k == K::V ? "v" : k == K::O ? "o"
                                                                                   : k == K::Gate ? "gate"
                                                                                   : k == K::Up ? "up" : "down")));
    const std::vector<float>& got = ch.clip_max.at(k);
    ASSERT_EQ(got.size(), want.size()) << linear_name(k);
    int64_t differ = 0;
    // Values a few ulps apart are the same choice (the scaled weights they derive from differ in
    // the last bit: the two sums of mean|x| run in different orders); choices are >= 5% apart.
    // Different choices come from AWQ's own knife edge: once a group is clipped on both sides,
    // min/scale is -(2^w - 1)/2 up to rounding, so its zero-point rounds either way on last-bit
    // differences, and the two implementations' weights differ in the last bit. Exact agreement
    // on identical inputs is checked by AwqClipSearch below.
    for (size_t i = 0; i < got.size(); ++i) differ += std::fabs(got[i] - want[i]) > 1e-5f * want[i];
    std::printf("%s clip %-9s %ld of %zu values differ\n", c.model, linear_name(k), long(differ), got.size());
    EXPECT_LE(double(differ), 0.05 * double(got.size())) << linear_name(k);
  }

  BlockWeights w2 = clone_block_weights(*model.block_weights(0));
  CpuBlockContext ctx2(model, 0, w2, x.data(), ids.dim(0), ids.dim(1), nullptr, nullptr);
  const SmoothingResult sm = smoothquant_smooth_block(ctx2, 0.5);
  const double dq = max_rel_diff(sm.qkv, floats(ref->tensor("sq.qkv")));
  const double dg = max_rel_diff(sm.gate_up, floats(ref->tensor("sq.gate_up")));
  std::printf("%s smoothquant factors max rel diff: q/k/v %.2e, gate/up %.2e\n", c.model, dq, dg);
  EXPECT_LT(dq, 1e-5);
  EXPECT_LT(dg, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, AwqSmoothQuantParity,
                         ::testing::Values(Case{"llama2-mini-f32", "awq_sq_llama2_mini.safetensors", 3, -1},
                                           Case{"llama3-mini-f32", "awq_sq_llama3_mini.safetensors", 4, 64}));

// SmoothQuant's activation fake quantization, from its definition: symmetric, scale =
// max(max|x|, 1e-5) / (2^(b-1) - 1) per token (row) or per tensor.
TEST(ActivationQuant, MatchesTheDefinition) {
  std::vector<float> x = {1.0f, -2.0f, 0.5f, 0.3f, 0.0f, 0.0f, 0.0f, 0.0f, 10.0f, 0.01f, -3.3f, 7.7f};
  std::vector<float> tok = x, ten = x;
  fake_quantize_per_token(tok.data(), 3, 4, 4);
  fake_quantize_per_tensor(ten.data(), 12, 4);
  for (int r = 0; r < 3; ++r) {
    double m = 0;
    for (int c = 0; c < 4; ++c) m = std::max(m, std::fabs(double(x[size_t(r * 4 + c)])));
    const float s = float(std::max(m, 1e-5)) / 7.0f;
    for (int c = 0; c < 4; ++c)
      EXPECT_EQ(tok[size_t(r * 4 + c)], std::nearbyint(x[size_t(r * 4 + c)] / s) * s) << r << "," << c;
  }
  const float s = 10.0f / 7.0f;
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(ten[i], std::nearbyint(x[i] / s) * s) << i;
  EXPECT_EQ(tok[4], 0.0f);  // an all-zero token stays zero
  EXPECT_EQ(activation_quant_hooks(nullptr), nullptr);
  EXPECT_THROW(activation_quant_hooks({{"bits", 8}, {"granularity", "per_row"}}), Error);
}

// The clipping search alone, on bit-identical inputs: the same choice everywhere.
TEST(AwqClipSearch, MatchesTheReferenceExactly) {
  auto ref = SafetensorsFile::open(test::fixtures_dir() + "/quant/awq_clip.safetensors");
  const Tensor w = ref->tensor("input.w");
  const std::vector<float> x = floats(ref->tensor("input.x"));
  for (auto [bits, group] : std::vector<std::pair<int, int64_t>>{{3, -1}, {4, 32}, {2, 64}}) {
    AwqOptions opt;
    opt.bits = bits;
    opt.group_size = group;
    const std::vector<float> got = awq_search_clip(w, x, opt);
    const std::vector<float> want = floats(ref->tensor("clip.w" + std::to_string(bits) + ".g" + std::to_string(group)));
    EXPECT_EQ(got, want) << bits << " bits, group " << group;
  }
}

// Scales folded into the norms and linears (no quantization) leave the logits unchanged.
TEST(AwqSmoothQuantFolding, LogitsAreUnchanged) {
  for (const char* name : {"llama2-mini-f32", "llama3-mini-f32"}) {
    const std::string path = test::fixtures_dir() + "/models/" + name;
    LlamaModel model(open_checkpoint(path));
    std::vector<std::vector<int32_t>> windows;
    for (int s = 0; s < 4; ++s) {
      std::vector<int32_t> ids(64);
      for (int t = 0; t < 64; ++t) ids[size_t(t)] = int32_t((s * 131 + t * 17) % model.config().vocab_size);
      windows.push_back(ids);
    }
    std::vector<int32_t> probe(96);
    for (int t = 0; t < 96; ++t) probe[size_t(t)] = int32_t((t * 37 + 5) % model.config().vocab_size);
    const Tensor base = model.forward(probe);
    for (const std::string method : {"awq", "smoothquant"}) {
      LlamaModel m(open_checkpoint(path));
      std::vector<std::shared_ptr<BlockWeights>> folded;
      DriverPlan plan;
      plan.windows = &windows;
      plan.propagate_quantized = false;
      plan.quantize_block = [&](BlockContext& ctx) {
        if (method == "awq") {
          AwqOptions opt;
          opt.group_size = -1;
          opt.clip = false;
          awq_scale_and_clip(ctx, opt);
        } else {
          smoothquant_smooth_block(ctx, 0.5);
        }
        folded.push_back(std::make_shared<BlockWeights>(clone_block_weights(ctx.weights())));
      };
      run_block_by_block(m, plan, {});
      LlamaModel check(open_checkpoint(path));
      for (size_t i = 0; i < folded.size(); ++i) check.set_block_weights(int64_t(i), folded[i]);
      const Tensor got = check.forward(probe);
      double max_diff = 0, max_abs = 0;
      for (int64_t i = 0; i < got.numel(); ++i) {
        max_diff = std::max(max_diff, double(std::fabs(got.data_as<float>()[i] - base.data_as<float>()[i])));
        max_abs = std::max(max_abs, double(std::fabs(base.data_as<float>()[i])));
      }
      std::printf("%s %s folded: max |logit difference| %.3g (logits up to %.3g)\n", name, method.c_str(), max_diff,
                  max_abs);
      // fp32 rounding of the rescaled weights: a few ulps of the logits' magnitude.
      EXPECT_LT(max_diff, 1e-4 * max_abs) << name << " " << method;
      EXPECT_GT(max_diff, 0.0) << "the folding changed nothing";
    }
  }
}

}  // namespace
}  // namespace lowbit
