// MMBench (English, dev) as lmms-eval's `mmbench_en_dev_static` task: "{hint} {question} There
// are several options:\nA. ..." and "\n\nAnswer with the option's letter from the given choices
// directly.", up to 1024 new tokens; the response stripped, then MMBench's circular evaluation
// (a question counts only if every rotated copy, index + k * 1e6, is answered right) with the
// answer matched by MMBench_Evaluator's can_infer and, where that finds nothing, by
// extract_mcq_answer (the static path; no GPT judge).
#include "eval/vlm/py_text.h"
#include "eval/vlm/vlm_scoring.h"
#include "eval/vlm/vlm_tasks_internal.h"

#include <algorithm>
#include <array>

namespace lowbit::vlm {

namespace {

// pd.isna: null (NaN after pandas reads the column) or absent.
bool is_na(const Json& doc, const char* key) { return !doc.contains(key) || doc[key].is_null(); }

// build_choices: A-D that are not NaN (the string "nan" is a choice, as in lmms-eval).
std::vector<std::pair<std::string, std::string>> build_choices(const Json& doc) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const char* ch : {"A", "B", "C", "D"})
    if (!is_na(doc, ch)) out.emplace_back(ch, doc[ch].get<std::string>());
  return out;
}

}  // namespace

std::string mmbench_options_prompt(const Json& doc) {
  // create_options_prompt: the candidates A-E present and truthy, sorted, skipping NaN and "nan".
  std::string s = "There are several options:\n";
  for (const char* ch : {"A", "B", "C", "D", "E"}) {
    if (is_na(doc, ch)) continue;
    const std::string& item = doc[ch].get_ref<const std::string&>();
    if (item.empty() || item == "nan") continue;
    s += std::string(ch) + ". " + item + "\n";
  }
  return py_rstrip_chars(s, "\n");
}

std::string mmbench_can_infer_option(const std::string& answer) {
  static const std::string choices = "ABCDE";
  if (contains(answer, "Failed to obtain answer via API")) return "";
  std::vector<std::string> splits;
  for (const std::string& x : py_split(answer)) splits.push_back(py_strip(x));
  auto has = [&](const std::string& s) { return std::find(splits.begin(), splits.end(), s) != splits.end(); };
  // count(splits, choices): over the five candidates.
  auto count = [&](const std::string& prefix, const std::string& suffix) {
    int n = 0;
    for (char c : choices) n += has(prefix + c + suffix);
    return n;
  };
  if (count("", "") == 1) {
    for (char ch : choices) {
      if (has("A") && splits.size() > 3) break;  // "A" may be an article
      if (has(std::string(1, ch))) return std::string(1, ch);
    }
  }
  static const std::array<std::pair<const char*, const char*>, 12> tups = {{{"", "."},
                                                                            {"", ","},
                                                                            {"", ":"},
                                                                            {"", ")"},
                                                                            {"", ")."},
                                                                            {"(", ")"},
                                                                            {"(", ")."},
                                                                            {":", ""},
                                                                            {":", ","},
                                                                            {":", "."},
                                                                            {":", ")"},
                                                                            {":", ")."}}};
  for (const auto& [pre, suf] : tups) {
    if (count(pre, suf) == 1)
      for (char ch : choices)
        if (has(pre + std::string(1, ch) + suf)) return std::string(1, ch);
  }
  return "";
}

std::string mmbench_can_infer_text(const std::string& answer, const Json& doc) {
  const std::string a = py_lower(answer);
  std::vector<std::string> cands;
  for (const auto& [k, v] : build_choices(doc))
    if (contains(a, py_lower(v))) cands.push_back(k);
  return cands.size() == 1 ? cands[0] : "";
}

std::string extract_mcq_answer(const std::string& response, const std::vector<std::string>& choices_in) {
  if (py_strip(response).empty()) return "";
  static const std::vector<std::string> kDefault = {"A", "B", "C", "D", "E", "F", "G", "H"};
  const std::vector<std::string>& choices = choices_in.empty() ? kDefault : choices_in;
  std::string text = py_strip(response);
  for (const char* c : {",", ".", "!", "?", ";", ":", "'", "\""}) text = py_strip_chars(text, c);
  text = " " + text + " ";

  // The phrase list of mcq_extract.py (English, Korean, Chinese, Japanese), in its order.
  static const std::vector<std::string> kPhrases = {
      "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
      "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
      "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
      "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选",
      "答えは"};
  enum Fmt { Fallback = 0, Space = 2, RightParen = 3, Colon = 4, Period = 5, Paren = 6, Phrase = 7, End = 9, Start = 10 };
  struct Cand {
    std::string ch;
    int64_t pos;
    int prio;
  };
  std::vector<Cand> cands;
  auto rfind_all = [&](const std::string& pat, int prio, const std::string& ch) {
    const size_t p = text.rfind(pat);
    if (p != std::string::npos) cands.push_back({ch, int64_t(p), prio});
  };
  for (const auto& ch : choices) rfind_all("(" + ch + ")", Paren, ch);
  for (const auto& ch : choices) rfind_all(ch + ".", Period, ch);
  for (const auto& ch : choices) rfind_all(ch + ":", Colon, ch);
  for (const auto& ch : choices) rfind_all(ch + ")", RightParen, ch);
  for (const auto& ch : choices) rfind_all(ch + " ", Space, ch);
  const std::string text_lower = py_lower(text);  // every capital py_lower maps keeps its UTF-8 length
  for (const std::string& phrase : kPhrases) {
    const size_t idx = text_lower.find(phrase);
    if (idx == std::string::npos) continue;
    const size_t after = idx + phrase.size();
    for (const auto& ch : choices) {
      const size_t p = text.find(ch, after);
      if (p != std::string::npos) cands.push_back({ch, int64_t(p), Phrase});
    }
  }
  const std::string stripped = py_strip(text);
  const std::u32string su = to_u32(stripped);
  for (const auto& ch : choices) {
    const std::u32string cu = to_u32(ch);
    if (su.size() >= cu.size() && su.compare(0, cu.size(), cu) == 0 && (su.size() == 1 || !py_isalpha(su[1])))
      cands.push_back({ch, 0, Start});
  }
  const int64_t text_len = int64_t(text.size());  // positions are byte offsets throughout; only their order matters
  for (const auto& ch : choices) {
    const std::u32string cu = to_u32(ch);
    if (su.size() >= cu.size() && su.compare(su.size() - cu.size(), cu.size(), cu) == 0 &&
        (su.size() == 1 || !py_isalpha(su[su.size() - 2])))
      cands.push_back({ch, text_len - 1, End});
  }
  if (cands.empty())
    for (const auto& ch : choices) rfind_all(ch, Fallback, ch);
  if (cands.empty()) return "";
  // sorted(key=(priority, position), reverse=True)[0]: the highest key; Python's stable sort with
  // reverse keeps the first-added of equal keys first.
  const Cand* best = &cands[0];
  for (const Cand& c : cands)
    if (c.prio > best->prio || (c.prio == best->prio && c.pos > best->pos)) best = &c;
  return best->ch;
}

namespace {

std::string doc_to_text(const Json& doc) {
  const std::string question = doc["question"].get<std::string>();
  const std::string options = mmbench_options_prompt(doc);
  std::string query;
  if (!is_na(doc, "hint") && doc["hint"].get<std::string>() != "nan")
    query = doc["hint"].get<std::string>() + " " + question + " " + options;
  else
    query = question + " " + options;
  // `f"{query_prompt}\n{post_prompt}"` with a post_prompt that starts with "\n" itself: a blank line.
  return query + "\n\nAnswer with the option's letter from the given choices directly.";
}

Json process(const Json& doc, const std::string& prediction) {
  Json r;
  for (const char* k : {"index", "question", "answer"}) r[k] = doc[k];
  r["prediction"] = py_strip(prediction);
  for (const char* k : {"hint", "source", "split", "category", "L2-category"}) r[k] = doc.contains(k) ? doc[k] : Json();
  for (const char* c : {"A", "B", "C", "D", "E"}) r[c] = doc.contains(c) ? doc[c] : Json("nan");
  return Json{{"gpt_eval_score", r}};
}

// prefetch_answer: can_infer_option, else can_infer_text over the record's choices.
std::string prefetch(const Json& item) {
  const std::string& pred = item["prediction"].get_ref<const std::string&>();
  const std::string opt = mmbench_can_infer_option(pred);
  return opt.empty() ? mmbench_can_infer_text(pred, item) : opt;
}

// eval_sub_data with static_only: every rotated copy of a question answered right.
int eval_sub_data(const std::vector<const Json*>& sub, const std::vector<std::pair<int64_t, std::string>>& answers) {
  auto answer_of = [&](int64_t idx) {
    for (const auto& [i, a] : answers)
      if (i == idx) return a;
    return std::string();
  };
  std::vector<std::string> gt, pred;
  for (const Json* item : sub) {
    gt.push_back(answer_of((*item)["index"].get<int64_t>()));
    pred.push_back(prefetch(*item));
    if (!pred.back().empty() && gt.back() != pred.back()) return 0;
  }
  for (size_t i = 0; i < sub.size(); ++i) {
    if (!pred[i].empty()) continue;
    std::vector<std::string> letters;
    for (const auto& [k, v] : build_choices(*sub[i])) letters.push_back(k);
    pred[i] = extract_mcq_answer((*sub[i])["prediction"].get<std::string>(), letters);
    if (pred[i].empty() || pred[i] != gt[i]) return 0;
  }
  return 1;
}

Json aggregate(const std::vector<Json>& records) {
  std::vector<const Json*> data;
  for (const Json& r : records)
    if (r.contains("gpt_eval_score")) data.push_back(&r["gpt_eval_score"]);
  if (data.empty()) return Json{{"gpt_eval_score", nullptr}};
  // data.sort_values(by="index") (quicksort, not stable: equal indices would be ambiguous, and
  // MMBench's are unique).
  std::stable_sort(data.begin(), data.end(), [](const Json* a, const Json* b) {
    return (*a)["index"].get<int64_t>() < (*b)["index"].get<int64_t>();
  });
  std::vector<std::pair<int64_t, std::string>> answers;  // answer_map
  for (const Json* d : data) answers.emplace_back((*d)["index"].get<int64_t>(), (*d)["answer"].get<std::string>());
  constexpr int64_t kRot = 1000000;
  int64_t hit = 0, tot = 0;
  std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>> by_cat;  // category -> (hits, count)
  for (const Json* m : data) {
    const int64_t idx = (*m)["index"].get<int64_t>();
    if (idx >= kRot) continue;
    std::vector<const Json*> sub;
    for (const Json* d : data)
      if ((*d)["index"].get<int64_t>() % kRot == idx) sub.push_back(d);
    const int ret = eval_sub_data(sub, answers);
    hit += ret;
    ++tot;
    const std::string cat = (*m)["category"].is_string() ? (*m)["category"].get<std::string>() : "uncategorized";
    auto c = std::find_if(by_cat.begin(), by_cat.end(), [&](const auto& e) { return e.first == cat; });
    if (c == by_cat.end()) c = by_cat.insert(by_cat.end(), {cat, {0, 0}});
    c->second.first += ret;
    c->second.second += 1;
  }
  Json out;
  out["gpt_eval_score"] = tot == 0 ? Json() : Json(double(hit) / double(tot) * 100.0);
  std::sort(by_cat.begin(), by_cat.end());  // groupby sorts its keys
  Json cats = Json::object();
  for (const auto& [cat, hc] : by_cat) cats[cat] = double(hc.first) / double(hc.second);
  out["category_acc"] = cats;
  return out;
}

}  // namespace

VlmTask mmbench_en_task() {
  VlmTask t;
  t.name = "mmbench_en";
  t.lmms_eval_task = "mmbench_en_dev_static";
  t.split = "dev";
  t.max_new_tokens = 1024;
  t.fields = {{"index", FieldKind::Int},
              {"question", FieldKind::String},
              {"hint", FieldKind::StringOrNull, false},
              {"A", FieldKind::StringOrNull, false},
              {"B", FieldKind::StringOrNull, false},
              {"C", FieldKind::StringOrNull, false},
              {"D", FieldKind::StringOrNull, false},
              {"E", FieldKind::StringOrNull, false},
              {"answer", FieldKind::String},
              {"category", FieldKind::String},
              {"L2-category", FieldKind::StringOrNull, false},
              {"source", FieldKind::StringOrNull, false},
              {"split", FieldKind::StringOrNull, false}};
  t.doc_to_text = doc_to_text;
  t.process = process;
  t.aggregate = aggregate;
  return t;
}

}  // namespace lowbit::vlm
