// LlamaForCausalLM hyper-parameters, from a Hugging Face config.json or a llama2.c header.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lowbit {

struct RopeScaling {
  enum class Type { None, Linear, Llama3 } type = Type::None;
  double factor = 1.0;
  // llama3 only
  double low_freq_factor = 1.0;
  double high_freq_factor = 1.0;
  int64_t original_max_position_embeddings = 0;
};

struct LlamaConfig {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // LLaMA-3.1+ lists several
  std::string torch_dtype;             // "bfloat16", "float16", "float32" or "" when absent
  std::string source;                  // "config.json" path or "llama2.c header"

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  // Parameters of the model (embeddings, blocks, final norm, LM head when untied).
  int64_t parameter_count() const;
};

// Parses config.json text. Throws lowbit::Error naming the file and the missing or bad field.
LlamaConfig parse_llama_config(const std::string& json_text, const std::string& path);
LlamaConfig load_llama_config(const std::string& path);

const char* rope_type_name(RopeScaling::Type t);

// A Hugging Face config.json (LlamaForCausalLM) describing c, for checkpoints lowbit writes from
// sources that have none (llama2.c).
std::string llama_config_to_json(const LlamaConfig& c);

}  // namespace lowbit
