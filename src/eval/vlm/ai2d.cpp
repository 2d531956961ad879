// AI2D as lmms-eval's `ai2d` task: the question and lettered options, "Answer with the option's
// letter from the given choices directly.", 16 new tokens; the response filtered to a leading
// "X." letter and compared to the gold letter ignoring case and punctuation.
#include "eval/vlm/py_text.h"
#include "eval/vlm/vlm_scoring.h"
#include "eval/vlm/vlm_tasks_internal.h"

namespace lowbit::vlm {

std::string ai2d_filter(const std::string& response) {
  // ^\s*([A-Z])\.  (Python's \s: the str.isspace() set)
  const std::u32string u = to_u32(response);
  size_t i = 0;
  while (i < u.size() && py_isspace(u[i])) ++i;
  if (i + 1 < u.size() && u[i] >= 'A' && u[i] <= 'Z' && u[i + 1] == '.') return std::string(1, char(u[i]));
  return response;
}

bool exact_match_ignore_case_punct(const std::string& prediction, const std::string& reference) {
  static const std::string punct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
  auto norm = [&](const std::string& s) {
    std::string out;
    for (char c : py_lower(s))
      if (punct.find(c) == std::string::npos) out.push_back(c);
    return out;
  };
  return norm(prediction) == norm(reference);
}

namespace {

std::string letter(size_t i) { return std::string(1, char('A' + i)); }

std::string doc_to_text(const Json& doc) {
  std::string text = doc["question"].get<std::string>() + "\n";
  const Json& options = doc["options"];
  for (size_t i = 0; i < options.size(); ++i)
    text += (i ? "\n" : "") + letter(i) + ". " + options[i].get<std::string>();
  return text + "\nAnswer with the option's letter from the given choices directly.";
}

Json process(const Json& doc, const std::string& prediction) {
  const int64_t answer = index_value(doc["answer"]);
  const size_t n = doc["options"].size();
  LB_CHECK(answer >= 0 && size_t(answer) < n, "ai2d item: answer {} is not an index of its {} options", answer, n);
  const std::string filtered = py_strip(ai2d_filter(prediction));
  const std::string target = letter(size_t(answer));
  return Json{{"exact_match", exact_match_ignore_case_punct(filtered, target) ? 1.0 : 0.0},
              {"filtered", filtered},
              {"target", target}};
}

Json aggregate(const std::vector<Json>& records) { return Json{{"exact_match", mean_of(records, "exact_match")}}; }

}  // namespace

VlmTask ai2d_task() {
  VlmTask t;
  t.name = "ai2d";
  t.lmms_eval_task = "ai2d";
  t.split = "test";
  t.max_new_tokens = 16;
  t.fields = {{"question", FieldKind::String}, {"options", FieldKind::StringList}, {"answer", FieldKind::IndexLike}};
  t.doc_to_text = doc_to_text;
  t.process = process;
  t.aggregate = aggregate;
  return t;
}

}  // namespace lowbit::vlm
