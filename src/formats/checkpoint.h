// Opening a model checkpoint, whatever its format:
//   - a Hugging Face LlamaForCausalLM directory: config.json + model.safetensors or sharded
//     model.safetensors.index.json (+ tokenizer.json or tokenizer.model),
//   - a llama2.c legacy (v0) .bin checkpoint (+ tokenizer.bin / tok512.bin beside it),
//   - a GGUF file of a llama model (formats/gguf_llama.h; its tokenizer is in the same file).
// Tensors are presented under Hugging Face names and conventions whatever the source:
//   model.embed_tokens.weight                    [vocab, hidden]
//   model.layers.{i}.input_layernorm.weight      [hidden]
//   model.layers.{i}.self_attn.q_proj.weight     [heads*head_dim, hidden]
//   model.layers.{i}.self_attn.k_proj.weight     [kv_heads*head_dim, hidden]
//   model.layers.{i}.self_attn.v_proj.weight     [kv_heads*head_dim, hidden]
//   model.layers.{i}.self_attn.o_proj.weight     [hidden, heads*head_dim]
//   model.layers.{i}.post_attention_layernorm.weight [hidden]
//   model.layers.{i}.mlp.gate_proj.weight        [intermediate, hidden]
//   model.layers.{i}.mlp.up_proj.weight          [intermediate, hidden]
//   model.layers.{i}.mlp.down_proj.weight        [hidden, intermediate]
//   model.norm.weight                            [hidden]
//   lm_head.weight                               [vocab, hidden] (absent when tied)
// q/k rows follow transformers' RoPE layout (the two halves of each head rotate together).
#pragma once

#include "formats/llama_config.h"
#include "formats/weights.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace lowbit {

struct Checkpoint {
  std::string path;
  std::string format;  // "hf-safetensors", "llama2c-v0" or "gguf"
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

// The tensors a LlamaForCausalLM with this config has, with their shapes.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_llama_tensors(const LlamaConfig& c);
void validate_llama_weights(const LlamaConfig& c, const WeightSource& w, const std::string& what);

// llama2.c legacy checkpoint: 7 x i32 header {dim, hidden_dim, n_layers, n_heads, n_kv_heads,
// vocab_size (negative: separate classifier), seq_len}, then fp32 tensors in run.c's order.
std::shared_ptr<WeightSource> open_llama2c_checkpoint(const std::string& path, LlamaConfig& config);

}  // namespace lowbit
