// The answer extraction and scoring functions of the benchmarks, each the counterpart of one
// function in lmms-eval (named beside it) and checked against it on hand-made items
// (tests/unit/test_vlm_scoring.cpp, fixtures from scripts/make_vlm_scoring_fixtures.py).
#pragma once

#include "eval/vlm/vlm_task.h"

#include <optional>
#include <string>
#include <vector>

namespace lowbit::vlm {

// --- AI2D (tasks/ai2d) ---
// MultiChoiceRegexFilter.apply: the letter of `^\s*([A-Z])\.` at the start, else the response.
std::string ai2d_filter(const std::string& response);
// api/metrics.py exact_match_hf_evaluate for one pair, with ignore_case and ignore_punctuation
// (string.punctuation removed) as ai2d.yaml sets them.
bool exact_match_ignore_case_punct(const std::string& prediction, const std::string& reference);

// --- ChartQA (tasks/chartqa) ---
// relaxed_correctness: numbers (a trailing "%" divides by 100) within 5% of a non-zero target,
// else case-insensitive string equality.
bool chartqa_relaxed_correctness(const std::string& prediction, const std::string& target,
                                 double max_relative_change = 0.05);

// --- DocVQA (api/metrics.py anls) ---
int64_t levenshtein_distance(const std::u32string& a, const std::u32string& b);
// 1 - the smallest normalized edit distance to any reference (lower-cased, whitespace collapsed),
// 0 below the threshold.
double anls(const std::vector<std::string>& references, const std::string& prediction, double threshold = 0.5);

// --- MME (tasks/mme) ---
// parse_pred_ans: "yes", "no" or "other".
std::string mme_parse_pred_ans(const std::string& prediction);
bool mme_is_perception(const std::string& category);  // eval_type_dict["Perception"]

// --- MMBench (tasks/mmbench/mmbench_evals.py MMBench_Evaluator, tasks/_task_utils/mcq_extract.py) ---
// can_infer_option (num_choice 5): the letter, or "" for False.
std::string mmbench_can_infer_option(const std::string& answer);
// can_infer_text over the doc's A-D choices (build_choices): the letter, or "".
std::string mmbench_can_infer_text(const std::string& answer, const Json& doc);
// extract_mcq_answer(response, choices): the letter, or "".
std::string extract_mcq_answer(const std::string& response, const std::vector<std::string>& choices);
// create_options_prompt with "There are several options:": the options block.
std::string mmbench_options_prompt(const Json& doc);

}  // namespace lowbit::vlm
