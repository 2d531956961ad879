// The vision-language benchmarks of the study's multimodal track (Table 8), with the conventions
// of lmms-eval (EvolvingLMMs-Lab/lmms-eval, lmms_eval/tasks/*): its prompts (doc_to_text with the
// `default` lmms_eval_specific_kwargs), generation lengths, answer extraction, per-item scoring
// (process_results / filters and metrics) and aggregation.
//
//   task        lmms-eval task            split       max_new_tokens   metrics
//   ai2d        ai2d                      test        16               exact_match (0-1)
//   chartqa     chartqa                   test        16               relaxed_overall, relaxed_human_split,
//                                                                      relaxed_augmented_split (0-1)
//   docvqa      docvqa_val                validation  32               anls (0-1)
//   mmbench_en  mmbench_en_dev_static     dev         1024             gpt_eval_score (0-100; the
//                                                                      circular evaluation with lmms-eval's
//                                                                      static answer matching, no GPT judge)
//   mme         mme                       test        16               mme_perception_score,
//                                                                      mme_cognition_score (0-2000 / 0-800)
//
// Items are jsonl lines (one object per line, the HF dataset's columns with the image as a path
// relative to the jsonl file; scripts/vlm_parquet_to_jsonl.py writes them from the HF parquet files):
//   every task  "image": "images/000123.png"
//   ai2d        "question": str, "options": [str], "answer": int or decimal str (option index)
//   chartqa     "question": str, "answer": str, "type": str ("human_test" / "augmented_test")
//   docvqa      "questionId": int or str, "question": str, "answers": [str]
//   mmbench_en  "index": int, "question": str, "hint": str or null, "A".."D" (and "E"): str or null,
//               "answer": str, "category": str, "L2-category": str, "source": str, "split": str
//   mme         "question_id": str, "question": str, "answer": "Yes"/"No", "category": str
// (null stands for the NaN pandas reads from a missing value; the string "nan" is kept as the
// string, as lmms-eval's code sees it.)
//
// Adding a benchmark: one file here defining its VlmTask (fields, doc_to_text, process, aggregate)
// and its scoring functions (declared in vlm_scoring.h), and one line in vlm_task.cpp's table.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit::vlm {

using Json = nlohmann::ordered_json;

enum class FieldKind {
  String,        // a JSON string
  StringOrNull,  // a string or null
  StringList,    // an array of strings
  Int,           // an integer
  IndexLike,     // an integer or a string of decimal digits
  IntOrString,   // an integer or a string (identifiers)
};

struct FieldSpec {
  const char* name;
  FieldKind kind;
  bool required = true;  // optional fields are read as null when absent
};

struct VlmTask {
  std::string name;           // lowbit's task name
  std::string lmms_eval_task; // the lmms-eval task whose conventions it follows
  std::string split;
  int64_t max_new_tokens = 16;
  std::vector<FieldSpec> fields;  // besides "image"
  // The question text lmms-eval's doc_to_text gives the model (before the chat template).
  std::string (*doc_to_text)(const Json& doc) = nullptr;
  // One item's record from its doc and the model's decoded answer, as lmms-eval's pipeline
  // makes it: the task's filter (AI2D) on the raw answer, then the answer stripped
  // (ConfigurableTask.process_results strips every generated answer), then the task's
  // process_results or metric: {metric name: value}.
  Json (*process)(const Json& doc, const std::string& prediction) = nullptr;
  // The metrics from every item's record, in item order, as lmms-eval's aggregations compute
  // them: {metric name: value (null where no item contributes)}. Throws lowbit::Error naming
  // the item for records lmms-eval would reject (an MME question without its pair).
  Json (*aggregate)(const std::vector<Json>& records) = nullptr;
};

const std::vector<std::string>& vlm_task_names();
// Throws for an unknown name, listing the known ones.
const VlmTask& vlm_task(const std::string& name);

struct VlmItem {
  std::string where;  // "FILE:LINE", for messages
  std::string image;  // the image's path, resolved against the jsonl's folder
  Json doc;           // the line's fields, checked against the task's FieldSpecs
};

// The jsonl a --data path names: the file itself, or DIR/TASK.jsonl for a directory. Throws when
// it does not exist.
std::string vlm_data_file(const VlmTask& task, const std::string& path);
// Reads a task's items from a jsonl file, or from DIR/TASK.jsonl for a directory. Every line is
// parsed and checked before any is returned: a malformed line, a missing or mistyped field, or a
// missing image file is a lowbit::Error naming the file, line and field. limit > 0 keeps the
// first `limit` items.
std::vector<VlmItem> load_vlm_items(const VlmTask& task, const std::string& path, int64_t limit = 0);
// Checks one doc's fields (what load_vlm_items does per line); `where` names it in errors.
void check_vlm_doc(const VlmTask& task, const Json& doc, const std::string& where);

}  // namespace lowbit::vlm
