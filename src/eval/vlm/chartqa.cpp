// ChartQA as lmms-eval's `chartqa` task: the question and "Answer the question with a single
// word.", 16 new tokens; relaxed accuracy (5% numeric tolerance) over all items and per split
// (human_test, the rest augmented).
#include "eval/vlm/py_text.h"
#include "eval/vlm/vlm_scoring.h"
#include "eval/vlm/vlm_tasks_internal.h"

#include <cmath>

namespace lowbit::vlm {

namespace {

// _to_float: "12%" -> 0.12 (every trailing '%' dropped, as rstrip does); None where float() fails.
std::optional<double> to_float(const std::string& text) {
  if (!text.empty() && text.back() == '%') {
    const auto v = py_float(py_rstrip_chars(text, "%"));
    if (!v) return std::nullopt;
    return *v / 100.0;
  }
  return py_float(text);
}

}  // namespace

bool chartqa_relaxed_correctness(const std::string& prediction, const std::string& target,
                                 double max_relative_change) {
  const auto p = to_float(prediction);
  const auto t = to_float(target);
  // `if prediction_float is not None and target_float:` -- a zero (or absent) target compares as text;
  // NaN is truthy in Python.
  if (p && t && *t != 0.0) {
    const double relative_change = std::fabs(*p - *t) / std::fabs(*t);
    return relative_change <= max_relative_change;
  }
  return py_lower(prediction) == py_lower(target);
}

namespace {

std::string doc_to_text(const Json& doc) {
  return doc["question"].get<std::string>() + "\nAnswer the question with a single word.";
}

Json process(const Json& doc, const std::string& prediction) {
  const double score = chartqa_relaxed_correctness(py_strip(prediction), doc["answer"].get<std::string>()) ? 1.0 : 0.0;
  Json r{{"relaxed_overall", score}};
  if (doc["type"].get<std::string>() == "human_test")
    r["relaxed_human_split"] = score;
  else
    r["relaxed_augmented_split"] = score;
  return r;
}

Json aggregate(const std::vector<Json>& records) {
  return Json{{"relaxed_overall", mean_of(records, "relaxed_overall")},
              {"relaxed_human_split", mean_of(records, "relaxed_human_split")},
              {"relaxed_augmented_split", mean_of(records, "relaxed_augmented_split")}};
}

}  // namespace

VlmTask chartqa_task() {
  VlmTask t;
  t.name = "chartqa";
  t.lmms_eval_task = "chartqa";
  t.split = "test";
  t.max_new_tokens = 16;
  t.fields = {{"question", FieldKind::String}, {"answer", FieldKind::String}, {"type", FieldKind::String}};
  t.doc_to_text = doc_to_text;
  t.process = process;
  t.aggregate = aggregate;
  return t;
}

}  // namespace lowbit::vlm
