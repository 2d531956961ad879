// The vision-language benchmarks' prompts, answer extraction, per-item scores and aggregates
// against lmms-eval's own task code on hand-made items (tests/fixtures/vlm/scoring.json.zst, written
// by scripts/make_vlm_scoring_fixtures.py from an lmms-eval checkout). Every comparison is exact:
// the scores are the same arithmetic in the same order. Also the prompts' chat templates.
#include "core/error.h"
#include "eval/vlm/vlm_eval.h"
#include "eval/vlm/vlm_scoring.h"
#include "eval/vlm/vlm_task.h"
#include "test_util.h"

#include <gtest/gtest.h>

namespace lowbit::vlm {
namespace {

const Json& fixture() {
  static const Json j = Json::parse(test::read_zst(test::fixtures_dir() + "/vlm/scoring.json.zst"));
  return j;
}

// Compared as unordered JSON (key order is Python's dict order on one side).
nlohmann::json plain(const Json& j) { return nlohmann::json::parse(j.dump()); }

void check_task(const std::string& name) {
  const VlmTask& task = vlm_task(name);
  const Json& f = fixture()[name];
  ASSERT_GT(f["items"].size(), 10u);
  std::vector<Json> records;
  for (const Json& item : f["items"]) {
    const std::string pred = item["prediction"].get<std::string>();
    SCOPED_TRACE(name + " prediction '" + pred + "' doc " + item["doc"].dump());
    check_vlm_doc(task, item["doc"], "fixture");
    EXPECT_EQ(task.doc_to_text(item["doc"]), item["text"].get<std::string>());
    const Json rec = task.process(item["doc"], pred);
    EXPECT_EQ(plain(rec), plain(item["record"]));
    records.push_back(rec);
  }
  const Json agg = task.aggregate(records);
  for (const auto& [k, v] : f["aggregate"].items()) {
    SCOPED_TRACE(name + " aggregate " + k);
    ASSERT_TRUE(agg.contains(k));
    EXPECT_EQ(plain(agg[k]), plain(v)) << agg[k].dump() << " vs " << v.dump();
  }
}

TEST(VlmScoring, Ai2d) { check_task("ai2d"); }
TEST(VlmScoring, ChartQa) { check_task("chartqa"); }
TEST(VlmScoring, DocVqa) { check_task("docvqa"); }
TEST(VlmScoring, Mme) {
  check_task("mme");
  for (const Json& item : fixture()["mme"]["items"])
    EXPECT_EQ(mme_parse_pred_ans(item["prediction"].get<std::string>()), item["parsed"].get<std::string>())
        << item["prediction"];
}
TEST(VlmScoring, MmbenchEn) { check_task("mmbench_en"); }

TEST(VlmScoring, GenerationLengthsAreLmmsEvals) {
  const Json& m = fixture()["max_new_tokens"];
  EXPECT_EQ(vlm_task("ai2d").max_new_tokens, m["ai2d"].get<int64_t>());
  EXPECT_EQ(vlm_task("chartqa").max_new_tokens, m["chartqa"].get<int64_t>());
  EXPECT_EQ(vlm_task("docvqa").max_new_tokens, m["docvqa"].get<int64_t>());
  EXPECT_EQ(vlm_task("mme").max_new_tokens, m["mme"].get<int64_t>());
  EXPECT_EQ(vlm_task("mmbench_en").max_new_tokens, m["mmbench"].get<int64_t>());
}

TEST(VlmScoring, ChartQaRelaxedCorrectness) {
  for (const Json& c : fixture()["chartqa_relaxed_correctness"])
    EXPECT_EQ(chartqa_relaxed_correctness(c[0].get<std::string>(), c[1].get<std::string>()), c[2].get<bool>())
        << c[0] << " vs " << c[1];
}

TEST(VlmScoring, Anls) {
  for (const Json& c : fixture()["anls"])
    EXPECT_EQ(anls(c[0].get<std::vector<std::string>>(), c[1].get<std::string>()), c[2].get<double>())
        << c[0] << " vs " << c[1];
}

TEST(VlmScoring, MmbenchCanInferOption) {
  for (const Json& c : fixture()["mmbench_can_infer_option"])
    EXPECT_EQ(mmbench_can_infer_option(c[0].get<std::string>()), c[1].get<std::string>()) << c[0];
}

TEST(VlmScoring, MmbenchCanInferText) {
  const Json& f = fixture()["mmbench_can_infer_text"];
  for (const Json& c : f["cases"])
    EXPECT_EQ(mmbench_can_infer_text(c[0].get<std::string>(), f["doc"]), c[1].get<std::string>()) << c[0];
}

TEST(VlmScoring, ExtractMcqAnswer) {
  for (const Json& c : fixture()["extract_mcq_answer"])
    EXPECT_EQ(extract_mcq_answer(c[0].get<std::string>(), c[1].get<std::vector<std::string>>()),
              c[2].get<std::string>())
        << c[0] << " " << c[1];
}

// The two conversations against Meta-Llama-3's chat template rendered by transformers
// (tests/fixtures/vlm/prompts.json, scripts/make_vlm_eval_fixture.py).
TEST(VlmScoring, ConversationsAreLlama3ChatTemplate) {
  const Json cases = Json::parse(test::slurp(test::fixtures_dir() + "/vlm/prompts.json"));
  ASSERT_GE(cases.size(), 5u);
  for (const Json& c : cases) {
    const std::string q = c["question"].get<std::string>();
    EXPECT_EQ(vlm_prompt(q, VlmConversation::Llava), c["llava"].get<std::string>()) << q;
    EXPECT_EQ(vlm_prompt(q, VlmConversation::LlavaHf), c["llava_hf"].get<std::string>()) << q;
  }
  EXPECT_EQ(parse_vlm_conversation("llava_hf"), VlmConversation::LlavaHf);
  EXPECT_THROW(parse_vlm_conversation("vicuna"), Error);
}

TEST(VlmScoring, UnknownTaskIsNamed) {
  try {
    vlm_task("mmbench_cn");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown vision-language task 'mmbench_cn'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("ai2d, chartqa, docvqa, mmbench_en, mme"), std::string::npos) << e.what();
  }
}

TEST(VlmScoring, MmeUnpairedQuestionIsRefused) {
  const VlmTask& t = vlm_task("mme");
  const Json doc = {{"question_id", "count/1.png"}, {"question", "Two?"}, {"answer", "Yes"}, {"category", "count"}};
  const std::vector<Json> recs = {t.process(doc, "Yes")};
  try {
    t.aggregate(recs);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("question_id 'count/1.png' (count) has 1 questions"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace lowbit::vlm
