// Full-length perplexity runs (minutes on 2 cores; CTest label slow).
#include "eval/datasets.h"
#include "eval/perplexity.h"
#include "model/testbed.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <cmath>

namespace lowbit {
namespace {

// Full WikiText2 / PTB perplexity of testbed-44m equals transformers' to 4 significant digits.
TEST(PerplexityFull, Testbed44mMatchesTransformers) {
  LOWBIT_REQUIRE_PATH(test::models_dir() + "/testbed-44m");
  for (const char* name : {"wikitext2", "ptb", "ptb-new"}) {
    const TextSet set = resolve_eval_set(name, test::data_dir());
    const auto windows = eval_windows(set, *testbed().tok, 2048, BosMode::Default);
    const PerplexityResult r = perplexity(*testbed().model, windows);
    const double want = reference()[name]["ppl"].get<double>();
    EXPECT_LT(std::fabs(r.ppl - want) / want, 5e-5) << name << ": lowbit " << r.ppl << ", transformers " << want;
  }
}

}  // namespace
}  // namespace lowbit
