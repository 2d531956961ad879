// The identity of a result (PROTOCOL.md, "What every result records"): one builder per part,
// used by `lowbit ppl`, `lowbit eval` and the study runner alike, so that the CLI's JSON and the
// identity a study stores are the same object.
//
// A result's identity is one JSON object:
//   "model"        model_identity(): name, path, format, weights_sha256, dtype, parameters,
//                  tokenizer {path, kind, spm}
//   "method"       method_part(): the quantization method ({"spec", "name", "resolved",
//   "calibration"  "weight_bits", ...}; the 16-bit model is {"spec": "fp16", ...}), the
//   "activation"   calibration set's identity, the activation scheme, and the model it was
//   "source_model" quantized from (null for a 16-bit model)
//   "evaluation"   perplexity_identity() / multiple_choice_identity() / kl_divergence_identity():
//                  the dataset or task, its files' SHA-256, every setting that changes the numbers
//   runtime        runtime_part(): seconds, peak_rss_bytes and peak_rss_scope (core/process.h),
//                  device, cpu, threads, compute_dtype, peak_gpu_bytes (GPU runs), lowbit
//                  {version, commit}
// A study adds "study", "cell", "quantize_seconds", "quantize_device" and "run".
#pragma once

#include "core/process.h"
#include "eval/datasets.h"
#include "eval/kl_divergence.h"
#include "eval/multiple_choice.h"
#include "eval/perplexity.h"
#include "eval/tasks.h"
#include "formats/checkpoint.h"
#include "formats/tokenizer.h"

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

namespace lowbit {

// The 16-bit model's method: {"spec": "fp16", "name": "fp16", "resolved": "fp16",
// "weight_bits": 16, "activation_bits": 16, "group_size": -1}.
nlohmann::json fp16_method();

// `ck` is the checkpoint the model was opened from (for a quantized model held in memory, its
// source); `name` is the model's name in a study, or its file or directory name in the CLI.
nlohmann::json model_identity(const Checkpoint& ck, const std::string& name, const std::string& path,
                              const std::string& weights_sha256, const Tokenizer& tok, const std::string& spm);

// {"method", "calibration", "activation", "source_model"} from a checkpoint's quantization
// metadata (Checkpoint::quantization); fp16_method() and nulls for a 16-bit checkpoint.
nlohmann::json method_part(const Checkpoint& ck);

// The data files as results record them: [{"path", "sha256"}, ...].
nlohmann::json files_json(const std::vector<DatasetFile>& files);

// An evaluation's key: the dataset or task and every setting that changes its numbers, as a
// study's store keys results ("wikitext2:seqlen=2048,limit=0,bos=auto"; ",spm=X" when the
// SentencePiece convention is not "auto"; MMLU adds ",shots=N").
std::string perplexity_key(const std::string& set, int64_t seqlen, int64_t limit, const std::string& bos,
                           const std::string& spm);
std::string multiple_choice_key(const std::string& task, int64_t limit, const std::string& bos, int64_t max_length,
                                int mmlu_shots, const std::string& spm);

// Settings of a perplexity evaluation (GPTQ's windows).
struct PerplexitySettings {
  std::string key;              // the study's evaluation key; the CLI's equivalent
  int64_t seqlen = 2048;
  int64_t limit = 0;            // first N windows (0: all)
  int64_t windows_available = 0;
  std::string bos = "auto";
};
nlohmann::json perplexity_identity(const TextSet& set, const PerplexitySettings& s, const PerplexityResult& r);

// A KL-divergence evaluation on perplexity windows (eval/kl_divergence.h): the perplexity
// settings, the base model's identity (model_identity() and method_part() of the base, in one
// object), the statistics' definitions, the positions, and both models' mean NLL. The key is
// "kld:" + the perplexity key.
std::string kl_divergence_key(const std::string& set, int64_t seqlen, int64_t limit, const std::string& bos,
                              const std::string& spm);
nlohmann::json kl_divergence_identity(const TextSet& set, const PerplexitySettings& s, const KlDivergenceResult& r,
                                      const nlohmann::json& base);

// Settings of a multiple-choice evaluation.
struct MultipleChoiceSettings {
  std::string key;
  int64_t limit = 0;            // first N items (0: all)
  std::string bos = "auto";
  int64_t max_length = 0;       // context tokens used (resolved: never 0)
  bool limit_per_subject = false;  // the limit counts each MMLU subject's items (a study's MMLU)
};
nlohmann::json multiple_choice_identity(const McTask& t, const MultipleChoiceSettings& s, const McResult& r);

// The compute dtype sentence of the CPU and the GPU forwards.
const char* compute_dtype(bool gpu);

struct RuntimeFacts {
  double seconds = 0;           // the evaluation's seconds
  PeakRss peak;
  std::string device = "cpu";   // "cpu" or the GPU's name
  bool gpu = false;
  int threads = 0;
  std::optional<double> peak_gpu_bytes;
};
nlohmann::json runtime_part(const RuntimeFacts& f);

// {"model": model, method..., "evaluation": evaluation, runtime...}: the parts in one object.
nlohmann::json result_identity(const nlohmann::json& model, const nlohmann::json& method,
                               const nlohmann::json& evaluation, const nlohmann::json& runtime);

// A name for a model path as a study's spec would default it: the file or directory name.
std::string model_display_name(const std::string& path);

}  // namespace lowbit
