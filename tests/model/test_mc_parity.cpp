// Item-level parity of multiple-choice scoring with a transformers scorer that builds requests as
// lm-evaluation-harness does (tests/fixtures/mc/testbed-44m.json.zst, written on a GPU machine by
// scripts/make_mc_fixtures.py): the same token split of every request, the same per-choice
// log-likelihoods to fp32 accuracy, the same prediction on every item.
#include "eval/multiple_choice.h"
#include "model/testbed.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <map>

namespace lowbit {
namespace {

TEST(McParity, Testbed44mMatchesTransformers) {
  const std::string fx = test::fixtures_dir() + "/mc/testbed-44m.json.zst";
  LOWBIT_REQUIRE_PATH(fx);
  LOWBIT_REQUIRE_PATH(test::models_dir() + "/testbed-44m");
  LOWBIT_REQUIRE_PATH(test::data_dir() + "/piqa/valid.jsonl");
  const nlohmann::json ref = nlohmann::json::parse(test::read_zst(fx));
  ASSERT_EQ(ref["bos"], "auto");
  // The fixture's items, grouped per task in order, scored by lowbit's engine (prefix reuse on).
  std::map<std::string, McTask> tasks;
  std::map<std::string, std::vector<const nlohmann::json*>> refs;
  for (const auto& it : ref["items"]) {
    const std::string name = it["task"];
    if (!tasks.count(name)) {
      McTask all = load_task(name, name == "hellaswag" ? test::fixtures_dir() + "/mc" : test::data_dir());
      tasks[name] = all;
      tasks[name].items.clear();
      for (const auto& x : all.items)
        if (x.id == it["id"].get<std::string>()) tasks[name].items.push_back(x);
    } else {
      McTask all = load_task(name, name == "hellaswag" ? test::fixtures_dir() + "/mc" : test::data_dir());
      for (const auto& x : all.items)
        if (x.id == it["id"].get<std::string>()) tasks[name].items.push_back(x);
    }
    refs[name].push_back(&it);
  }
  double worst = 0;
  int64_t items = 0, pred_mismatch = 0;
  for (auto& [name, task] : tasks) {
    ASSERT_EQ(task.items.size(), refs[name].size()) << name;
    // Token split of every request.
    for (size_t i = 0; i < task.items.size(); ++i) {
      const McItem& it = task.items[i];
      const auto& reqs = (*refs[name][i])["requests"];
      for (size_t r = 0; r < it.num_requests(); ++r) {
        const McEncoded e = encode_pair(*testbed().tok, it.context(r), it.continuation(r), BosMode::Default);
        EXPECT_EQ(e.context, reqs[r]["context_tokens"].get<std::vector<int32_t>>()) << name << " " << it.id;
        EXPECT_EQ(e.continuation, reqs[r]["continuation_tokens"].get<std::vector<int32_t>>()) << name << " " << it.id;
      }
    }
    const McResult res = evaluate_multiple_choice(*testbed().model, *testbed().tok, task, McOptions{});
    // The batched bookkeeping (whole requests, an item's identical inputs once) on the first
    // items of each task.
    McOptions batched;
    batched.scoring = McScoring::Batched;
    batched.limit = 8;
    const McResult rb = evaluate_multiple_choice(*testbed().model, *testbed().tok, task, batched);
    ASSERT_EQ(rb.items.size(), std::min<size_t>(8, res.items.size()));
    for (size_t i = 0; i < rb.items.size(); ++i) {
      for (size_t r = 0; r < res.items[i].loglik.size(); ++r)
        EXPECT_NEAR(rb.items[i].loglik[r], res.items[i].loglik[r], 1e-3) << name << " " << task.items[i].id;
      EXPECT_EQ(rb.items[i].pred, res.items[i].pred) << name << " " << task.items[i].id;
      EXPECT_EQ(rb.items[i].pred_norm, res.items[i].pred_norm) << name << " " << task.items[i].id;
    }
    double task_worst = 0;
    for (size_t i = 0; i < task.items.size(); ++i) {
      const auto& want = (*refs[name][i])["loglik"];
      for (size_t r = 0; r < want.size(); ++r) {
        const double d = std::fabs(res.items[i].loglik[r] - want[r].get<double>());
        task_worst = std::max(task_worst, d);
        // A sum of a few fp32 log-softmax values over the vocabulary (MMLU: one token after
        // ~1000 of context): fp32 agreement is ~1e-5 per token; 2e-3 allows long continuations.
        EXPECT_LT(d, 2e-3) << name << " " << task.items[i].id << " choice " << r;
      }
      const int pred = (*refs[name][i])["pred"].get<int>();
      pred_mismatch += res.items[i].pred != pred;
      EXPECT_EQ(res.items[i].pred, pred) << name << " " << task.items[i].id;
      ++items;
    }
    std::printf("%-32s %3zu items, max |loglik difference| %.2e\n", name.c_str(), task.items.size(), task_worst);
    worst = std::max(worst, task_worst);
  }
  std::printf("%ld items, max |loglik difference| %.2e, %ld predictions differ\n", long(items), worst,
              long(pred_mismatch));
}

}  // namespace
}  // namespace lowbit
