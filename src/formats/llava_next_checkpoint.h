// The language model inside a Hugging Face LlavaNextForConditionalGeneration checkpoint directory,
// presented as a LlamaForCausalLM checkpoint: its text_config as the LlamaConfig (absent fields at
// transformers' LlamaConfig defaults) and its tensors under LLaMA's names ("model.layers.0...",
// "lm_head.weight"), read from either layout:
//   model.language_model.* and lm_head.weight                   (transformers 4.5x)
//   language_model.model.* and language_model.lm_head.weight    (llava-hf's Hub files, transformers 5)
// open_checkpoint() returns this for a LLaVA-Next directory, so every LLaMA command (ppl, quantize,
// logits, ...) runs on the LLM part; model/llava_next.h adds the vision tower around it.
#pragma once

#include "formats/checkpoint.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace lowbit {

// Whether config.json text describes a LlavaNextForConditionalGeneration (model_type llava_next).
bool is_llava_next_config(const nlohmann::json& config);
// The text_config of a LLaVA-Next config.json, with LlamaConfig's defaults filled in; `path` names
// the file in errors.
LlamaConfig llava_next_text_config(const nlohmann::json& config, const std::string& path);
// The language model's tensors of `all` (a LLaVA-Next checkpoint's) under LLaMA's names. `dir`
// names the checkpoint in errors.
std::shared_ptr<WeightSource> llava_next_language_weights(std::shared_ptr<WeightSource> all, const LlamaConfig& text,
                                                          const std::string& dir);
// The LLM part of the LLaVA-Next checkpoint in `dir` (format "llava-next-language-model"), validated.
Checkpoint open_llava_next_language_model(const std::string& dir);

// Whether `path` is a directory whose config.json describes a LLaVA-Next model.
bool is_llava_next_dir(const std::string& path);
// The names of `all` (a LLaVA-Next checkpoint's tensors) that are not the language model's: the
// vision tower, the projector, image_newline and anything else the checkpoint carries, under
// their names as stored, sorted. The LM head is the language model's under either of its names.
std::vector<std::string> llava_next_non_language_tensors(const WeightSource& all, const std::string& dir);

}  // namespace lowbit
