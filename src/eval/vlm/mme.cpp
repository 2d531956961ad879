// MME as lmms-eval's `mme` task: the question with " Please answer yes or no." replaced by
// "\nAnswer the question using a single word or phrase.", 16 new tokens; the answer parsed to
// yes/no/other, and per category the mean over image pairs (two questions share a question_id)
// of acc (percent of the pair right) + acc+ (100 when both are right); perception and cognition
// totals are the sums of their categories' scores.
#include "eval/vlm/py_text.h"
#include "eval/vlm/vlm_scoring.h"
#include "eval/vlm/vlm_tasks_internal.h"

#include <algorithm>
#include <map>

namespace lowbit::vlm {

namespace {

const std::vector<std::string>& perception_categories() {
  static const std::vector<std::string> c = {"existence", "count",     "position", "color",    "posters",
                                             "celebrity", "scene",     "landmark", "artwork",  "OCR"};
  return c;
}

}  // namespace

bool mme_is_perception(const std::string& category) {
  const auto& p = perception_categories();
  return std::find(p.begin(), p.end(), category) != p.end();
}

std::string mme_parse_pred_ans(const std::string& prediction) {
  const std::string p = py_replace(py_strip(py_lower(prediction)), ".", "");
  if (p == "yes" || p == "no") return p;
  if (to_u32(p).size() == 1) {
    if (p == "y") return "yes";
    if (p == "n") return "no";
    return "other";
  }
  // pred_ans[:4]: the first four code points.
  const std::string prefix = to_utf8(to_u32(p).substr(0, 4));
  if (contains(prefix, "yes")) return "yes";
  if (contains(prefix, "no")) return "no";
  return "other";
}

namespace {

std::string doc_to_text(const Json& doc) {
  std::string q = py_strip(doc["question"].get<std::string>());
  q = py_replace(q, " Please answer yes or no.", "");
  return q + "\nAnswer the question using a single word or phrase.";
}

std::string gt_answer(const Json& doc) {
  return py_replace(py_strip(py_lower(doc["answer"].get<std::string>())), ".", "");
}

Json process(const Json& doc, const std::string& prediction) {
  const std::string gt = gt_answer(doc);
  LB_CHECK(gt == "yes" || gt == "no", "mme item '{}': answer '{}' is not Yes or No",
           doc["question_id"].get<std::string>(), doc["answer"].get<std::string>());
  const std::string pred = mme_parse_pred_ans(py_strip(prediction));
  const std::string& category = doc["category"].get_ref<const std::string&>();
  const char* key = mme_is_perception(category) ? "mme_perception_score" : "mme_cognition_score";
  return Json{{key, Json{{"question_id", doc["question_id"]}, {"category", category}, {"score", pred == gt ? 1.0 : 0.0}}}};
}

// mme_aggregate_results over the records of one metric: categories and questions in the order
// first seen (Python dicts), so the sums add in lmms-eval's order.
Json aggregate_one(const std::vector<Json>& records, const char* key, Json& per_category) {
  struct Question {
    std::string id;
    std::vector<double> scores;
  };
  std::vector<std::pair<std::string, std::vector<Question>>> cats;
  for (const Json& r : records) {
    if (!r.contains(key)) continue;
    const Json& v = r[key];
    const std::string cat = v["category"].get<std::string>(), qid = v["question_id"].get<std::string>();
    auto c = std::find_if(cats.begin(), cats.end(), [&](const auto& e) { return e.first == cat; });
    if (c == cats.end()) c = cats.insert(cats.end(), {cat, {}});
    auto q = std::find_if(c->second.begin(), c->second.end(), [&](const Question& e) { return e.id == qid; });
    if (q == c->second.end()) q = c->second.insert(c->second.end(), Question{qid, {}});
    q->scores.push_back(v["score"].get<double>());
  }
  if (cats.empty()) return nullptr;
  double total = 0;
  for (const auto& [cat, questions] : cats) {
    double cat_total = 0;
    for (const Question& q : questions) {
      LB_CHECK(q.scores.size() == 2, "mme: question_id '{}' ({}) has {} questions; MME scores image pairs (2) "
               "(a --limit that splits a pair leaves one)", q.id, cat, q.scores.size());
      const double sum = q.scores[0] + q.scores[1];
      const double acc = sum / 2.0 * 100.0;
      const double acc_plus = (sum == 2 ? 1.0 : 0.0) * 100.0;
      cat_total += acc_plus + acc;
    }
    const double avg = cat_total / double(questions.size());
    per_category[cat] = avg;
    total += avg;
  }
  return total;
}

Json aggregate(const std::vector<Json>& records) {
  Json cats = Json::object();
  Json out;
  out["mme_perception_score"] = aggregate_one(records, "mme_perception_score", cats);
  out["mme_cognition_score"] = aggregate_one(records, "mme_cognition_score", cats);
  out["categories"] = cats;
  return out;
}

}  // namespace

VlmTask mme_task() {
  VlmTask t;
  t.name = "mme";
  t.lmms_eval_task = "mme";
  t.split = "test";
  t.max_new_tokens = 16;
  t.fields = {{"question_id", FieldKind::String},
              {"question", FieldKind::String},
              {"answer", FieldKind::String},
              {"category", FieldKind::String}};
  t.doc_to_text = doc_to_text;
  t.process = process;
  t.aggregate = aggregate;
  return t;
}

}  // namespace lowbit::vlm
