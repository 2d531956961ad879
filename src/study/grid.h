// A study's grid: the cells (model x method x calibration) and the evaluations run on each.
//
// A cell is what is quantized once: one model, one method spec, and the calibration when the
// method calibrates. Its key, "MODEL|SPEC|CALIBRATION" (CALIBRATION: CalibrationSpec::key(), or
// "none" for data-free methods and the baseline), identifies it in the results store. A trained
// cell ([[finetune]], [[distill]]) is quantized and trained once; its key adds the training,
// "MODEL|SPEC|CALIBRATION|TRAINING" (TrainSpec::key: every training option, defaults included),
// so that results under other training options are never taken for these. An
// evaluation's key names the dataset or task and every setting that changes its numbers
// ("wikitext2:seqlen=2048,limit=0,bos=auto"), so that results under other settings are never
// taken for these. A result is (cell key, evaluation key, metric).
#pragma once

#include "study/spec.h"

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit::study {

// VisionLanguage: a benchmark of eval/vlm/vlm_task.h on a LLaVA-Next model (the cell's language
// model under the model's vision tower), keyed as `lowbit vlm-eval --store` keys it.
enum class EvalKind { Perplexity, KlDivergence, MultipleChoice, VisionLanguage };

struct Evaluation {
  EvalKind kind = EvalKind::Perplexity;
  std::string name;  // "wikitext2", "piqa", "mmlu", or a text file's path (KlDivergence: the set)
  std::string key;
};

struct Cell {
  size_t model = 0;        // index into StudySpec::models
  std::string model_name;
  std::string method;      // the spec string, verbatim ("fp16" for the baseline)
  std::string method_name; // "gptq", "fp16"
  bool calibrated = false; // whether the method calibrates
  std::string calibration; // CalibrationSpec::key() or "none"
  double w = 16;           // #W, #A, #G as the tables print them (#G -1: per channel)
  int a = 16;
  int64_t g = -1;
  std::string key;
  std::string quantize_device;  // where the cell quantizes ("cpu", "cuda:0"); not part of its key
  TrainSpec train;              // kind None: quantized only
};

struct StudyPlan {
  std::vector<Cell> cells;               // models in the spec's order, each with every method
  std::vector<Evaluation> evaluations;   // PPL datasets first, then KLD sets, then tasks, then vision-language
                                         // tasks, in the spec's order
};

StudyPlan expand_plan(const StudySpec& spec);

std::string cell_key(const std::string& model, const std::string& method, const std::string& calibration,
                     const std::string& training = "");

}  // namespace lowbit::study
