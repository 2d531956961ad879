// LoRA adapters on disk in PEFT's format, and merging them into a model.
//
// A PEFT adapter directory (what PeftModel.from_pretrained(base, DIR) loads):
//   adapter_config.json         {"peft_type": "LORA", "r", "lora_alpha", "lora_dropout",
//                                "target_modules", "bias": "none", "task_type": "CAUSAL_LM", ...}
//   adapter_model.safetensors   "base_model.model.model.layers.{i}.{self_attn|mlp}.{q_proj|...}
//                                .lora_{A|B}.weight", A [r, in], B [out, r], fp32 (read: any float);
//                               IR-QLoRA's adapters add "...{q_proj|...}.lora_default_{A|B}_scale"
//                               [1] per linear (IEC's a_s, b_s; iec.h), the names its
//                               IRQLoraLinear4bit's parameters get from save_pretrained and under
//                               which its evaluation reloads them
// lowbit adds lowbit_adapter.json beside them: the base model's shape and weights' identity, so
// that an adapter is refused on another base.
#pragma once

#include "model/llama_model.h"
#include "train/lora.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace lowbit::train {

// Writes the PEFT files into `dir` (created if needed; existing files of those names replaced,
// each written to a temporary and renamed). `base_model` is recorded as base_model_name_or_path.
void save_peft_adapter(const std::string& dir, const LoraAdapters& a, const std::string& base_model);
// Writes only the tensors, under the names adapter_model.safetensors gives them (fp32; written to
// a temporary and renamed): also what `finetune --dump-grads` writes a gradient as.
void save_lora_tensors(const std::string& path, const LoraAdapters& a);

// Reads a PEFT LoRA adapter for a model of configuration `c` (IEC on when it holds IEC scalars).
// Refused with a lowbit::Error naming the file and tensor: another PEFT type, bias or
// DoRA/rsLoRA options lowbit does not apply, an unknown target module, a tensor whose shape does
// not fit the model (an adapter for another base), a missing or unexpected tensor.
LoraAdapters load_peft_adapter(const std::string& dir, const LlamaConfig& c);

// Reads a PEFT adapter (as load_peft_adapter) as the starting point of training with `config`:
// its r, lora_alpha and target_modules must be config's (refused naming the field, the file and
// both values). IEC scalars are taken when the adapter holds them; a run with IEC from an adapter
// without them starts them at 0 (IEC's own init); an adapter with them for a run without IEC is
// refused. The dropout is the run's (it is no property of the weights). Returns adapters whose
// config is `config`.
LoraAdapters load_init_adapter(const std::string& dir, const LlamaConfig& c, const LoraConfig& config);

// The base model facts an adapter was trained on, and a check of them against a model.
nlohmann::json base_identity(const LlamaModel& model, const std::string& weights_sha256);
// The quantization method spec the adapter's frozen base had in training (lowbit_adapter.json's
// "base_quantization", e.g. "icq:tau_range=0.1,tau_n=100,dq=1"); empty when none is recorded.
std::string adapter_base_quantization(const std::string& dir);
// Throws when dir/lowbit_adapter.json exists and names another base (shape or weights).
void check_adapter_base(const std::string& dir, const LlamaModel& model, const std::string& weights_sha256);

// Replaces every adapted block's weights by W + scaling * B A (fp32; with IEC the exact merge
// W + scaling * (B + b_s R)(A + a_s M) of iec.h): the merged model, for evaluation with the
// existing forward passes.
void merge_adapters(LlamaModel& model, const LoraAdapters& a);

// A new model: `base` with the adapters merged, both into its block weights (what the CPU forward
// reads, exactly as merge_adapters gives them) and into its checkpoint's weights (what a GPU
// placement uploads): each adapted linear's tensor is the merged fp32 weight, every other tensor
// and the quantization metadata the base's. `base` is left as it is and may go.
std::unique_ptr<LlamaModel> merged_model(const LlamaModel& base, const LoraAdapters& a);

}  // namespace lowbit::train
