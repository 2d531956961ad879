// lowbit's logits against transformers' (fp32, eager attention) on the random-weight models in
// tests/fixtures/models, written by scripts/make_model_fixtures.py --mini: LLaMA-3-style GQA with
// llama3 RoPE scaling run past its original context (fp32 and bf16 weights), LLaMA-2-style MHA
// with untied embeddings (fp32 and fp16 weights), and linear RoPE scaling.
#include "formats/checkpoint.h"
#include "formats/safetensors.h"
#include "model/llama_model.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

namespace lowbit {
namespace {

class LogitParity : public ::testing::TestWithParam<std::string> {};

TEST_P(LogitParity, MatchesTransformers) {
  const std::string dir = test::fixtures_dir() + "/models/" + GetParam();
  auto ref = SafetensorsFile::open(dir + "/logits.safetensors");
  const Tensor tokens = ref->tensor("tokens");
  const Tensor want = ref->tensor("logits");
  LlamaModel model(open_checkpoint(dir));
  std::vector<int32_t> ids(tokens.data_as<int32_t>(), tokens.data_as<int32_t>() + tokens.numel());
  const Tensor got = model.forward(ids);
  ASSERT_EQ(got.shape(), want.shape());
  const int64_t T = want.dim(0), V = want.dim(1);
  double max_err = 0;
  int64_t top1 = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float* a = got.data_as<float>() + t * V;
    const float* b = want.data_as<float>() + t * V;
    for (int64_t i = 0; i < V; ++i) max_err = std::max(max_err, double(std::fabs(a[i] - b[i])));
    top1 += std::max_element(a, a + V) - a == std::max_element(b, b + V) - b;
  }
  // Both sides compute in fp32 with different summation orders; at logits of magnitude ~20
  // the differences observed are ~5e-5 (also on full-width 1B/3B/7B-shaped models), so 1e-3
  // leaves a 20x margin while catching any real error (a wrong RoPE frequency or a missing
  // norm weight moves logits by O(1)).
  EXPECT_LT(max_err, 1e-3) << GetParam();
  EXPECT_EQ(top1, T) << GetParam() << ": top-1 disagrees at " << (T - top1) << " positions";
  RecordProperty("max_abs_err", std::to_string(max_err));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LogitParity,
                         ::testing::Values("llama3-mini-f32", "llama3-mini-bf16", "llama2-mini-f32", "llama2-mini-f16",
                                           "linear-mini-f32"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace lowbit
