// DocVQA as lmms-eval's `docvqa_val` task: the question and "Answer the question using a single
// word or phrase.", 32 new tokens; ANLS with threshold 0.5.
#include "eval/vlm/py_text.h"
#include "eval/vlm/vlm_scoring.h"
#include "eval/vlm/vlm_tasks_internal.h"

#include <algorithm>

namespace lowbit::vlm {

int64_t levenshtein_distance(const std::u32string& a, const std::u32string& b) {
  const std::u32string& s1 = a.size() > b.size() ? b : a;
  const std::u32string& s2 = a.size() > b.size() ? a : b;
  std::vector<int64_t> d(s1.size() + 1), next(s1.size() + 1);
  for (size_t i = 0; i <= s1.size(); ++i) d[i] = int64_t(i);
  for (size_t i2 = 0; i2 < s2.size(); ++i2) {
    next[0] = int64_t(i2) + 1;
    for (size_t i1 = 0; i1 < s1.size(); ++i1)
      next[i1 + 1] = s1[i1] == s2[i2] ? d[i1] : 1 + std::min({d[i1], d[i1 + 1], next[i1]});
    std::swap(d, next);
  }
  return d[s1.size()];
}

double anls(const std::vector<std::string>& references, const std::string& prediction, double threshold) {
  auto normalize = [](const std::string& s) {
    std::string out;
    for (const std::string& w : py_split(py_lower(py_strip(s)))) out += (out.empty() ? "" : " ") + w;
    return to_u32(out);
  };
  const std::u32string det = normalize(prediction);
  // len(x.upper()): code points (upper() changes the length only for a few non-ASCII letters).
  const size_t pred_len = to_u32(prediction).size();
  double best = 0;
  bool first = true;
  for (const std::string& answer : references) {
    const int64_t dist = levenshtein_distance(normalize(answer), det);
    const size_t length = std::max(to_u32(answer).size(), pred_len);
    const double v = length == 0 ? 0.0 : double(dist) / double(length);
    best = first ? v : std::min(best, v);
    first = false;
  }
  LB_CHECK(!first, "anls: an item has no reference answers");
  double result = 1 - best;
  if (result < threshold) result = 0;
  return result;
}

namespace {

std::string doc_to_text(const Json& doc) {
  return doc["question"].get<std::string>() + "\nAnswer the question using a single word or phrase.";
}

Json process(const Json& doc, const std::string& prediction) {
  return Json{{"anls", anls(doc["answers"].get<std::vector<std::string>>(), py_strip(prediction))}};
}

Json aggregate(const std::vector<Json>& records) { return Json{{"anls", mean_of(records, "anls")}}; }

}  // namespace

VlmTask docvqa_task() {
  VlmTask t;
  t.name = "docvqa";
  t.lmms_eval_task = "docvqa_val";
  t.split = "validation";
  t.max_new_tokens = 32;
  t.fields = {{"questionId", FieldKind::IntOrString},
              {"question", FieldKind::String},
              {"answers", FieldKind::StringList}};
  t.doc_to_text = doc_to_text;
  t.process = process;
  t.aggregate = aggregate;
  return t;
}

}  // namespace lowbit::vlm
