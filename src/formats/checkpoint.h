// Opening a model checkpoint, whatever its format:
//   - a Hugging Face LlamaForCausalLM directory: config.json + model.safetensors or sharded
//     model.safetensors.index.json (+ tokenizer.json or tokenizer.model),
//   - a llama2.c legacy (v0) .bin checkpoint (+ tokenizer.bin / tok512.bin beside it),
//   - a GGUF file of a llama model (formats/gguf_llama.h; its tokenizer is in the same file),
//   - a Hugging Face LlavaNextForConditionalGeneration directory: its language model
//     (formats/llava_next_checkpoint.h).
// Tensors are presented under Hugging Face names and shapes whatever the source (the tensor
// table, llama_tensors.h).
// q/k rows follow transformers' RoPE layout (the two halves of each head rotate together).
#pragma once

#include "formats/llama_config.h"
#include "formats/llama_tensors.h"
#include "formats/weights.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace lowbit {

struct Checkpoint {
  std::string path;
  std::string format;  // "hf-safetensors", "llama2c-v0", "gguf" or "llava-next-language-model"
  LlamaConfig config;
  std::shared_ptr<WeightSource> weights;
  std::string tokenizer_path;  // empty when none was found
  // For a quantized checkpoint (quant/quantize.h): its "lowbit.quantization" metadata; null
  // for a 16-bit one.
  nlohmann::json quantization;
};

// Opens and validates (every expected tensor present with the shape the config implies).
// "random:DIR" opens a synthetic checkpoint (formats/random_weights.h).
Checkpoint open_checkpoint(const std::string& path);

void validate_llama_weights(const LlamaConfig& c, const WeightSource& w, const std::string& what);

// llama2.c legacy checkpoint: 7 x i32 header {dim, hidden_dim, n_layers, n_heads, n_kv_heads,
// vocab_size (negative: separate classifier), seq_len}, then fp32 tensors in run.c's order.
std::shared_ptr<WeightSource> open_llama2c_checkpoint(const std::string& path, LlamaConfig& config);

}  // namespace lowbit
