// Zero-shot and few-shot multiple-choice tasks with lm-evaluation-harness semantics
// (PROTOCOL.md; harness 0.4.x task YAMLs):
//
//   task           split (file under the data directory)                    context / continuations
//   piqa           validation (piqa/valid.jsonl + valid-labels.lst)         "Question: {goal}\nAnswer:" / " {sol1|sol2}"
//   arc_easy       test (arc/ARC-V1-Feb2018/ARC-Easy/ARC-Easy-Test.jsonl)   "Question: {stem}\nAnswer:" / " {choice}"
//   arc_challenge  test (.../ARC-Challenge/ARC-Challenge-Test.jsonl)         as arc_easy
//   hellaswag      validation (hellaswag/hellaswag_val.jsonl)                preprocess("{activity_label}: {ctx_a} {ctx_b.capitalize()}")
//                                                                            / " " + preprocess(ending)
//   hellaswag_derived  validation, all 10,042 tasks (hellaswag/hellaswag_val_full.txt: llama.cpp's
//                  6-lines-per-task text, derived from hellaswag_val.jsonl) "{line 1}" / " {ending line}"
//                  NOT the harness's preprocessing: line 1 is preprocess'(activity_label + ": " + ctx)
//                  with ctx_b not capitalized and llama.cpp's tag removal (drops [header], [step],
//                  [substeps]; " [title]" -> ". "), so some contexts and endings differ from hellaswag's;
//                  items, order and gold labels are the official ones. For when the jsonl is absent;
//                  reported under its own name, never as hellaswag.
//   winogrande     winogrande_xl validation (winogrande/winogrande_1.1/dev.jsonl)
//                                                                            contexts sentence[:_] + option, shared
//                                                                            continuation " " + sentence[_+1:].strip()
//   mmlu           test, 5-shot from dev (mmlu/{test,dev}/SUBJECT_{test,dev}.csv)
//                  "The following are multiple choice questions (with answers) about {subject}.\n\n"
//                  + 5 x "{q}\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer: {X}\n\n" + the question, "Answer:" /
//                  " A", " B", " C", " D"
//
// Every line of every file is parsed; a malformed one is an error naming the file and line.
#pragma once

#include "formats/data_files.h"

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

// One item: either one context with N continuations, or (Winogrande) N contexts sharing one
// continuation. choices are the doc_to_choice strings whose lengths normalize acc_norm.
struct McItem {
  std::string id;
  std::vector<std::string> contexts;       // 1 or N
  std::vector<std::string> continuations;  // N or 1
  std::vector<std::string> choices;        // N
  int gold = 0;
  std::string subject;  // MMLU subject ("" otherwise)
  size_t num_requests() const { return std::max(contexts.size(), continuations.size()); }
  const std::string& context(size_t i) const { return contexts.size() == 1 ? contexts[0] : contexts[i]; }
  const std::string& continuation(size_t i) const { return continuations.size() == 1 ? continuations[0] : continuations[i]; }
};

struct McTask {
  std::string name, split, convention;
  bool has_acc_norm = true;
  int num_fewshot = 0;
  std::vector<DatasetFile> files;
  std::vector<McItem> items;
};

// The task names lowbit knows, in the order the study's tables list them.
const std::vector<std::string>& task_names();
// Also "mmlu_SUBJECT": one MMLU subject (as the harness names them).
// Throws for unknown names, missing files (naming them and where they come from) and malformed
// rows (file and line). mmlu_shots: few-shot examples for MMLU (0-5; 5 is the study's).
McTask load_task(const std::string& name, const std::string& data_dir, int mmlu_shots = 5);

// The harness's MMLU subject -> category map ("humanities", "stem", "social_sciences", "other").
const std::string& mmlu_category(const std::string& subject);
const std::vector<std::string>& mmlu_subjects();

// The harness's HellaSwag text preprocessing.
std::string hellaswag_preprocess(std::string text);
// Python's str.capitalize() (first character upper-cased, the rest lower-cased; ASCII and the
// common Latin-1 letters).
std::string py_capitalize(const std::string& s);

}  // namespace lowbit
