// The host side of CUDA-graph decode (model/decode_graph_rules.h): LOWBIT_CUDA_GRAPHS's values,
// the reasons a model keeps the eager decode, and the greedy step every Decoder has by default
// (the argmax of its logits, first index on ties: what the GPU's argmax kernel must match).
#include "core/error.h"
#include "eval/eval_session.h"
#include "model/decode_graph_rules.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <limits>
#include <vector>

namespace lowbit {
namespace {

TEST(DecodeGraphRules, VariableValues) {
  EXPECT_TRUE(cuda_graphs_allowed(nullptr));
  EXPECT_TRUE(cuda_graphs_allowed("1"));
  EXPECT_TRUE(cuda_graphs_allowed("on"));
  EXPECT_FALSE(cuda_graphs_allowed("0"));
  EXPECT_FALSE(cuda_graphs_allowed("off"));
  for (const char* bad : {"", "yes", "2", "OFF"})
    EXPECT_NE(test::error_text([&] { cuda_graphs_allowed(bad); }).find(std::string("LOWBIT_CUDA_GRAPHS='") + bad + "'"),
              std::string::npos)
        << bad;
  ::setenv("LOWBIT_CUDA_GRAPHS", "0", 1);
  EXPECT_FALSE(cuda_graphs_allowed());
  ::unsetenv("LOWBIT_CUDA_GRAPHS");
  EXPECT_TRUE(cuda_graphs_allowed());
}

TEST(DecodeGraphRules, Refusals) {
  EXPECT_EQ(graph_decode_refusal({}), "");
  GraphDecodeConditions c;
  c.activation_quantized = true;
  EXPECT_EQ(graph_decode_refusal(c), "activation quantization");
  c.profiled = true;
  EXPECT_EQ(graph_decode_refusal(c), "per-op profile");
  c.resident = false;
  EXPECT_EQ(graph_decode_refusal(c), "blocks streamed from the host");
  c.graphs_allowed = false;  // the variable is named first: it overrides every other reason
  EXPECT_EQ(graph_decode_refusal(c), "LOWBIT_CUDA_GRAPHS=0");
}

// A decoder whose step returns fixed logits.
class FixedDecoder final : public Decoder {
 public:
  explicit FixedDecoder(std::vector<float> logits) : logits_(std::move(logits)) {}
  std::span<const float> step(std::span<const int32_t>) override { return logits_; }

 private:
  std::vector<float> logits_;
};

TEST(DecodeGraphRules, DefaultGreedyStepIsTheFirstLargestLogit) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int32_t t = 7;
  EXPECT_EQ(FixedDecoder({0.5f, 2.0f, -1.0f, 2.0f}).next_greedy({&t, 1}), 1);
  EXPECT_EQ(FixedDecoder({0.5f, nan, 3.0f}).next_greedy({&t, 1}), 2);
  EXPECT_EQ(FixedDecoder({nan, 1.0f, 3.0f}).next_greedy({&t, 1}), 0);
  EXPECT_EQ(FixedDecoder({1.0f}).next_greedy({&t, 1}), 0);
  EXPECT_EQ(FixedDecoder({1.0f}).decode_path(), "");
}

}  // namespace
}  // namespace lowbit
