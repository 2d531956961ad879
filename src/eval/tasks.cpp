#include "eval/tasks.h"

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/utf8.h"
#include "formats/text_datasets.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <map>
#include <regex>

namespace lowbit {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Python's str.strip() (ASCII whitespace: what these datasets contain).
std::string py_strip(std::string_view s) {
  auto space = [](unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); };
  size_t b = 0, e = s.size();
  while (b < e && space(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && space(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

// One JSON object per non-empty line; errors name file and line.
template <typename F>
void for_each_jsonl(const std::string& path, F&& f) {
  const std::string text = read_file(path);
  size_t pos = 0, line = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    ++line;
    std::string_view row(text.data() + pos, nl - pos);
    pos = nl + 1;
    if (py_strip(row).empty()) continue;
    json j = json::parse(row, nullptr, false);
    LB_CHECK(!j.is_discarded() && j.is_object(), "{}:{}: not a JSON object", path, line);
    f(j, line);
  }
}

const std::string& get_str(const json& j, const char* key, const std::string& path, size_t line) {
  LB_CHECK(j.contains(key) && j[key].is_string(), "{}:{}: missing string field '{}'", path, line, key);
  return j[key].get_ref<const std::string&>();
}

std::vector<std::string> read_lines(const std::string& path) {
  std::vector<std::string> out;
  const std::string text = read_file(path);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    out.push_back(py_strip(std::string_view(text).substr(pos, nl - pos)));
    pos = nl + 1;
  }
  while (!out.empty() && out.back().empty()) out.pop_back();
  return out;
}

McTask piqa(const std::string& dir) {
  McTask t;
  t.name = "piqa";
  t.split = "validation";
  t.convention = "lm-eval piqa: \"Question: {goal}\\nAnswer:\" / \" {sol}\"";
  const DatasetFile data = checked_data_file(dir, "piqa/valid.jsonl", "piqa", "");
  const DatasetFile labels = checked_data_file(dir, "piqa/valid-labels.lst", "piqa", "");
  t.files = {data, labels};
  const std::vector<std::string> gold = read_lines(labels.path);
  for_each_jsonl(data.path, [&](const json& j, size_t line) {
    McItem it;
    it.id = std::to_string(t.items.size());
    const std::string& goal = get_str(j, "goal", data.path, line);
    it.contexts = {"Question: " + goal + "\nAnswer:"};
    it.choices = {get_str(j, "sol1", data.path, line), get_str(j, "sol2", data.path, line)};
    for (const auto& c : it.choices) it.continuations.push_back(" " + c);
    const size_t k = t.items.size();
    LB_CHECK(k < gold.size(), "{}: {} labels for more items", labels.path, gold.size());
    LB_CHECK(gold[k] == "0" || gold[k] == "1", "{}:{}: label '{}' is not 0 or 1", labels.path, k + 1, gold[k]);
    it.gold = gold[k][0] - '0';
    t.items.push_back(std::move(it));
  });
  LB_CHECK(gold.size() == t.items.size(), "{} has {} labels for {} items in {}", labels.path, gold.size(),
           t.items.size(), data.path);
  return t;
}

McTask arc(const std::string& dir, bool challenge) {
  McTask t;
  t.name = challenge ? "arc_challenge" : "arc_easy";
  t.split = "test";
  t.convention = "lm-eval arc: \"Question: {question}\\nAnswer:\" / \" {choice}\"";
  const std::string set = challenge ? "ARC-Challenge" : "ARC-Easy";
  const DatasetFile data = checked_data_file(dir, "arc/ARC-V1-Feb2018/" + set + "/" + set + "-Test.jsonl", t.name, "");
  t.files = {data};
  for_each_jsonl(data.path, [&](const json& j, size_t line) {
    McItem it;
    it.id = get_str(j, "id", data.path, line);
    LB_CHECK(j.contains("question") && j["question"].is_object(), "{}:{}: missing 'question' object", data.path, line);
    const json& q = j["question"];
    it.contexts = {"Question: " + get_str(q, "stem", data.path, line) + "\nAnswer:"};
    LB_CHECK(q.contains("choices") && q["choices"].is_array() && !q["choices"].empty(), "{}:{}: missing choices",
             data.path, line);
    const std::string& key = get_str(j, "answerKey", data.path, line);
    int gold = -1;
    for (const auto& c : q["choices"]) {
      if (get_str(c, "label", data.path, line) == key) gold = int(it.choices.size());
      it.choices.push_back(get_str(c, "text", data.path, line));
      it.continuations.push_back(" " + it.choices.back());
    }
    LB_CHECK(gold >= 0, "{}:{}: answerKey '{}' is not one of the choice labels", data.path, line, key);
    it.gold = gold;
    t.items.push_back(std::move(it));
  });
  return t;
}

McTask hellaswag(const std::string& dir) {
  McTask t;
  t.name = "hellaswag";
  t.split = "validation";
  t.convention = "lm-eval hellaswag: preprocess(\"{activity_label}: {ctx_a} {ctx_b.capitalize()}\") / \" \" + "
                 "preprocess(ending)";
  const DatasetFile data = checked_data_file(
      dir, "hellaswag/hellaswag_val.jsonl", "hellaswag",
      "; it is data/hellaswag_val.jsonl of rowanz/hellaswag (12,246,618 bytes, SHA-256 "
      "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588)");
  t.files = {data};
  for_each_jsonl(data.path, [&](const json& j, size_t line) {
    McItem it;
    it.id = std::to_string(t.items.size());
    const std::string ctx = get_str(j, "ctx_a", data.path, line) + " " + py_capitalize(get_str(j, "ctx_b", data.path, line));
    it.contexts = {hellaswag_preprocess(get_str(j, "activity_label", data.path, line) + ": " + ctx)};
    LB_CHECK(j.contains("endings") && j["endings"].is_array() && j["endings"].size() == 4, "{}:{}: 'endings' is not a "
             "list of 4 strings", data.path, line);
    for (const auto& e : j["endings"]) {
      LB_CHECK(e.is_string(), "{}:{}: an ending is not a string", data.path, line);
      it.choices.push_back(hellaswag_preprocess(e.get<std::string>()));
      it.continuations.push_back(" " + it.choices.back());
    }
    LB_CHECK(j.contains("label") && j["label"].is_number_integer() && j["label"].get<int>() >= 0 &&
                 j["label"].get<int>() < 4,
             "{}:{}: 'label' is not an integer in 0..3", data.path, line);
    it.gold = j["label"].get<int>();
    t.items.push_back(std::move(it));
  });
  return t;
}

// llama.cpp's HellaSwag text (hellaswag_val_full.txt, PROVENANCE.md): 6 lines per task, in the
// original file's order: the preprocessed context, the gold label (0-3), the 4 preprocessed
// endings. The lines are taken as they are: they were preprocessed when the file was made, by
// rules that differ from the harness's (see tasks.h), and the original fields cannot be recovered
// from them, so the harness's preprocessing is not applied again.
McTask hellaswag_derived(const std::string& dir) {
  McTask t;
  t.name = "hellaswag_derived";
  t.split = "validation";
  t.convention = "llama.cpp hellaswag_val_full.txt (derived from hellaswag_val.jsonl, NOT the harness's "
                 "preprocessing: ctx_b not capitalized, other tag removal): \"{line 1}\" / \" {ending line}\"";
  const DatasetFile data = checked_data_file(
      dir, "hellaswag/hellaswag_val_full.txt", "hellaswag_derived",
      "; it is hellaswag_val_full.txt of klosax/hellaswag_text_data (7,770,677 bytes, SHA-256 "
      "d572539320eb2050e858ca34b495bbe2103e3b3f1391a9c3bcdf215b0bb93bd1)");
  t.files = {data};
  const std::string text = read_file(data.path);
  std::vector<std::string_view> lines;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    lines.emplace_back(text.data() + pos, nl - pos);
    pos = nl + 1;
  }
  LB_CHECK(!lines.empty() && lines.size() % 6 == 0,
           "{}: {} lines; a task is 6 lines (context, label, 4 endings), so the count must be a multiple of 6",
           data.path, lines.size());
  for (size_t i = 0; i < lines.size(); i += 6) {
    McItem it;
    it.id = std::to_string(t.items.size());
    it.contexts = {std::string(lines[i])};
    const std::string_view label = lines[i + 1];
    LB_CHECK(label.size() == 1 && label[0] >= '0' && label[0] <= '3', "{}:{}: label '{}' is not an integer in 0..3",
             data.path, i + 2, label);
    it.gold = label[0] - '0';
    for (size_t k = 0; k < 4; ++k) {
      it.choices.emplace_back(lines[i + 2 + k]);
      it.continuations.push_back(" " + it.choices.back());
    }
    t.items.push_back(std::move(it));
  }
  return t;
}

McTask winogrande(const std::string& dir) {
  McTask t;
  t.name = "winogrande";
  t.split = "winogrande_xl validation";
  t.has_acc_norm = false;
  t.convention = "lm-eval winogrande (partial evaluation): contexts sentence[:_] + option / shared \" \" + "
                 "sentence[_+1:].strip()";
  const DatasetFile data = checked_data_file(dir, "winogrande/winogrande_1.1/dev.jsonl", "winogrande", "");
  t.files = {data};
  for_each_jsonl(data.path, [&](const json& j, size_t line) {
    McItem it;
    it.id = get_str(j, "qID", data.path, line);
    const std::string& s = get_str(j, "sentence", data.path, line);
    const size_t idx = s.find('_');
    LB_CHECK(idx != std::string::npos, "{}:{}: sentence has no '_' blank", data.path, line);
    for (const char* k : {"option1", "option2"}) {
      it.contexts.push_back(s.substr(0, idx) + get_str(j, k, data.path, line));
      it.choices.push_back(it.contexts.back());
    }
    it.continuations = {" " + py_strip(std::string_view(s).substr(idx + 1))};
    const std::string& ans = get_str(j, "answer", data.path, line);
    LB_CHECK(ans == "1" || ans == "2", "{}:{}: answer '{}' is not 1 or 2", data.path, line, ans);
    it.gold = ans[0] - '1';
    t.items.push_back(std::move(it));
  });
  return t;
}

std::string mmlu_example(const std::vector<std::string>& row) {
  return py_strip(row[0]) + "\nA. " + row[1] + "\nB. " + row[2] + "\nC. " + row[3] + "\nD. " + row[4] + "\nAnswer:";
}

McTask mmlu(const std::string& dir, int shots, const std::string& only_subject) {
  LB_CHECK(shots >= 0 && shots <= 5, "mmlu: {} few-shot examples (0 to 5 available per subject)", shots);
  McTask t;
  t.name = only_subject.empty() ? "mmlu" : "mmlu_" + only_subject;
  t.split = "test";
  t.num_fewshot = shots;
  t.has_acc_norm = false;  // the harness reports acc only for MMLU
  t.convention = fmt::format("lm-eval mmlu: {}-shot (first dev examples), \"{{question}}\\nA. ..\\nB. ..\\nC. "
                             "..\\nD. ..\\nAnswer:\" / \" A\" .. \" D\"", shots);
  for (const std::string& subject : mmlu_subjects()) {
    if (!only_subject.empty() && subject != only_subject) continue;
    const DatasetFile test = checked_data_file(dir, "mmlu/test/" + subject + "_test.csv", "mmlu", "");
    const DatasetFile dev = checked_data_file(dir, "mmlu/dev/" + subject + "_dev.csv", "mmlu", "");
    t.files.push_back(test);
    t.files.push_back(dev);
    auto read = [](const DatasetFile& f) {
      std::vector<size_t> lines;
      auto rows = parse_csv(read_file(f.path), f.path, &lines);
      std::vector<std::vector<std::string>> out;
      for (size_t r = 0; r < rows.size(); ++r) {
        if (rows[r].empty()) continue;
        LB_CHECK(rows[r].size() == 6, "{}:{}: {} fields, expected 6 (question, A, B, C, D, answer)", f.path,
                 lines[r], rows[r].size());
        LB_CHECK(rows[r][5] == "A" || rows[r][5] == "B" || rows[r][5] == "C" || rows[r][5] == "D",
                 "{}:{}: answer '{}' is not A, B, C or D", f.path, lines[r], rows[r][5]);
        out.push_back(std::move(rows[r]));
      }
      return out;
    };
    const auto dev_rows = read(dev), test_rows = read(test);
    LB_CHECK(int(dev_rows.size()) >= shots, "{}: {} dev examples, fewer than {}", dev.path, dev_rows.size(), shots);
    std::string subject_name = subject;
    std::replace(subject_name.begin(), subject_name.end(), '_', ' ');
    std::string prefix = "The following are multiple choice questions (with answers) about " + subject_name + ".\n\n";
    for (int k = 0; k < shots; ++k) prefix += mmlu_example(dev_rows[size_t(k)]) + " " + dev_rows[size_t(k)][5] + "\n\n";
    for (size_t r = 0; r < test_rows.size(); ++r) {
      McItem it;
      it.id = subject + "/" + std::to_string(r);
      it.subject = subject;
      it.contexts = {prefix + mmlu_example(test_rows[r])};
      it.choices = {"A", "B", "C", "D"};
      it.continuations = {" A", " B", " C", " D"};
      it.gold = test_rows[r][5][0] - 'A';
      t.items.push_back(std::move(it));
    }
  }
  return t;
}

}  // namespace

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> n = {"piqa",       "arc_easy",   "arc_challenge", "hellaswag",
                                             "hellaswag_derived", "winogrande", "mmlu"};
  return n;
}

McTask load_task(const std::string& name, const std::string& data_dir, int mmlu_shots) {
  if (name == "piqa") return piqa(data_dir);
  if (name == "arc_easy") return arc(data_dir, false);
  if (name == "arc_challenge") return arc(data_dir, true);
  if (name == "hellaswag") return hellaswag(data_dir);
  if (name == "hellaswag_derived") return hellaswag_derived(data_dir);
  if (name == "winogrande") return winogrande(data_dir);
  if (name == "mmlu") return mmlu(data_dir, mmlu_shots, "");
  if (name.starts_with("mmlu_")) {
    const std::string subject = name.substr(5);
    const auto& all = mmlu_subjects();
    LB_CHECK(std::find(all.begin(), all.end(), subject) != all.end(), "unknown task '{}': '{}' is not an MMLU subject",
             name, subject);
    return mmlu(data_dir, mmlu_shots, subject);
  }
  fail("unknown task '{}' (known: {}, and mmlu_SUBJECT for one MMLU subject)", name, fmt::join(task_names(), ", "));
}

std::string hellaswag_preprocess(std::string text) {
  text = py_strip(text);
  // .replace(" [title]", ". ")
  for (size_t p = 0; (p = text.find(" [title]", p)) != std::string::npos; p += 2) text.replace(p, 8, ". ");
  // re.sub("\\[.*?\\]", "", text): shortest bracketed spans, left to right
  std::string out;
  for (size_t i = 0; i < text.size();) {
    if (text[i] == '[') {
      const size_t close = text.find(']', i + 1);
      if (close != std::string::npos) {
        i = close + 1;
        continue;
      }
    }
    out += text[i++];
  }
  // .replace("  ", " "): one pass, non-overlapping
  std::string res;
  for (size_t i = 0; i < out.size();) {
    if (out[i] == ' ' && i + 1 < out.size() && out[i + 1] == ' ') {
      res += ' ';
      i += 2;
    } else {
      res += out[i++];
    }
  }
  return res;
}

std::string py_capitalize(const std::string& s) {
  std::string out;
  size_t i = 0;
  bool first = true;
  while (i < s.size()) {
    uint32_t cp = utf8_next(s, i);
    auto latin_upper = [](uint32_t c) { return (c >= 0xe0 && c <= 0xfe && c != 0xf7) ? c - 0x20 : c; };
    auto latin_lower = [](uint32_t c) { return (c >= 0xc0 && c <= 0xde && c != 0xd7) ? c + 0x20 : c; };
    if (first) cp = (cp >= 'a' && cp <= 'z') ? cp - 32 : latin_upper(cp);
    else cp = (cp >= 'A' && cp <= 'Z') ? cp + 32 : latin_lower(cp);
    first = false;
    utf8_append(out, cp);
  }
  return out;
}

const std::vector<std::string>& mmlu_subjects() {
  static const std::vector<std::string> v = [] {
    std::vector<std::string> out;
    out.reserve(57);
    for (const char* s :
         {"abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
          "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine",
          "college_physics", "computer_security", "conceptual_physics", "econometrics", "electrical_engineering",
          "elementary_mathematics", "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry",
          "high_school_computer_science", "high_school_european_history", "high_school_geography",
          "high_school_government_and_politics", "high_school_macroeconomics", "high_school_mathematics",
          "high_school_microeconomics", "high_school_physics", "high_school_psychology", "high_school_statistics",
          "high_school_us_history", "high_school_world_history", "human_aging", "human_sexuality",
          "international_law", "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
          "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition", "philosophy",
          "prehistory", "professional_accounting", "professional_law", "professional_medicine",
          "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy",
          "virology", "world_religions"})
      out.emplace_back(s);
    return out;
  }();
  return v;
}

const std::string& mmlu_category(const std::string& subject) {
  // lm-evaluation-harness, tasks/mmlu/_generate_configs.py.
  static const std::map<std::string, std::string> m = {
      {"abstract_algebra", "stem"}, {"anatomy", "stem"}, {"astronomy", "stem"}, {"business_ethics", "other"},
      {"clinical_knowledge", "other"}, {"college_biology", "stem"}, {"college_chemistry", "stem"},
      {"college_computer_science", "stem"}, {"college_mathematics", "stem"}, {"college_medicine", "other"},
      {"college_physics", "stem"}, {"computer_security", "stem"}, {"conceptual_physics", "stem"},
      {"econometrics", "social_sciences"}, {"electrical_engineering", "stem"}, {"elementary_mathematics", "stem"},
      {"formal_logic", "humanities"}, {"global_facts", "other"}, {"high_school_biology", "stem"},
      {"high_school_chemistry", "stem"}, {"high_school_computer_science", "stem"},
      {"high_school_european_history", "humanities"}, {"high_school_geography", "social_sciences"},
      {"high_school_government_and_politics", "social_sciences"}, {"high_school_macroeconomics", "social_sciences"},
      {"high_school_mathematics", "stem"}, {"high_school_microeconomics", "social_sciences"},
      {"high_school_physics", "stem"}, {"high_school_psychology", "social_sciences"},
      {"high_school_statistics", "stem"}, {"high_school_us_history", "humanities"},
      {"high_school_world_history", "humanities"}, {"human_aging", "other"}, {"human_sexuality", "social_sciences"},
      {"international_law", "humanities"}, {"jurisprudence", "humanities"}, {"logical_fallacies", "humanities"},
      {"machine_learning", "stem"}, {"management", "other"}, {"marketing", "other"}, {"medical_genetics", "other"},
      {"miscellaneous", "other"}, {"moral_disputes", "humanities"}, {"moral_scenarios", "humanities"},
      {"nutrition", "other"}, {"philosophy", "humanities"}, {"prehistory", "humanities"},
      {"professional_accounting", "other"}, {"professional_law", "humanities"}, {"professional_medicine", "other"},
      {"professional_psychology", "social_sciences"}, {"public_relations", "social_sciences"},
      {"security_studies", "social_sciences"}, {"sociology", "social_sciences"},
      {"us_foreign_policy", "social_sciences"}, {"virology", "other"}, {"world_religions", "humanities"}};
  auto it = m.find(subject);
  LB_CHECK(it != m.end(), "unknown MMLU subject '{}'", subject);
  return it->second;
}

}  // namespace lowbit
