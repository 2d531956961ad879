#include "quant/llava_next_quantized.h"

#include "core/error.h"
#include "formats/llava_next_checkpoint.h"
#include "formats/safetensors.h"
#include "quant/lowbit_checkpoint.h"

#include <filesystem>

namespace lowbit {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The files of a Hugging Face LLaVA-Next directory besides its weights: the configs, the
// processor's, the tokenizer's and the chat template.
constexpr const char* kSideFiles[] = {"config.json",           "preprocessor_config.json", "processor_config.json",
                                      "chat_template.json",    "chat_template.jinja",      "generation_config.json",
                                      "tokenizer.json",        "tokenizer.model",          "tokenizer_config.json",
                                      "special_tokens_map.json", "added_tokens.json"};

}  // namespace

std::vector<std::string> check_llava_next_source(const std::string& dir) {
  LB_CHECK(is_llava_next_dir(dir), "'{}' is not a LLaVA-Next model directory (config.json with model_type "
           "llava_next)", dir);
  // Opening the model whole checks the config, the processor and every vision tensor's shape; the
  // tower's weights are read once here, which costs seconds against the quantization's minutes.
  (void)LlavaNextModel::open(dir);
  return llava_next_non_language_tensors(*SafetensorsWeights::open(dir), dir);
}

void write_quantized_llava_next(const std::string& out_dir, const std::string& source_dir,
                                const LlamaModel& language_model, const QuantizedModel& qm, const json& extra,
                                bool overwrite) {
  const std::vector<std::string> kept = check_llava_next_source(source_dir);
  const auto source = SafetensorsWeights::open(source_dir);
  CheckpointAdditions add;
  int64_t kept_bytes = 0;
  for (const std::string& name : kept) {
    Tensor t = source->get(name);  // the stored bytes, mapped
    kept_bytes += t.nbytes();
    add.tensors.emplace_back(name, std::move(t));
  }
  add.side_files = [&](const fs::path& dir) {
    for (const char* f : kSideFiles)
      if (fs::exists(fs::path(source_dir) / f)) fs::copy_file(fs::path(source_dir) / f, dir / f);
  };
  json meta = extra;
  meta["multimodal"] = {{"architecture", "LlavaNextForConditionalGeneration"},
                        {"calibration_input", "text"},
                        {"kept", kept},
                        {"kept_bytes", kept_bytes}};
  write_quantized_checkpoint(out_dir, language_model, qm, meta, overwrite, &add);
}

bool is_quantized_llava_next(const Checkpoint& ck) {
  return ck.quantization.is_object() && ck.quantization.contains("multimodal");
}

std::unique_ptr<LlavaNextModel> llava_next_with_language_model(const std::string& dir, const Checkpoint& language_model) {
  auto m = LlavaNextModel::open(dir, language_model);
  install_quantized_forward(m->language_model());
  return m;
}

std::unique_ptr<LlavaNextModel> load_llava_next(const std::string& dir) {
  LB_CHECK(is_llava_next_dir(dir), "'{}' is not a LLaVA-Next model directory (config.json with model_type "
           "llava_next)", dir);
  // The language model as open_model() sees it: the directory's own, quantized or not.
  return llava_next_with_language_model(dir, open_model(dir));
}

}  // namespace lowbit
