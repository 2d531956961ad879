#include "formats/llama_config.h"

#include "core/error.h"
#include "core/mapped_file.h"

#include <nlohmann/json.hpp>

#include <algorithm>

namespace lowbit {

using json = nlohmann::json;

namespace {

int64_t get_int(const json& j, const char* key, const std::string& path) {
  LB_CHECK(j.contains(key) && !j[key].is_null(), "{}: missing required field '{}'", path, key);
  LB_CHECK(j[key].is_number_integer() && j[key].get<int64_t>() > 0,
           "{}: field '{}' must be a positive integer, got {}", path, key, j[key].dump());
  return j[key].get<int64_t>();
}

std::optional<int64_t> opt_int(const json& j, const char* key, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  LB_CHECK(j[key].is_number_integer() && j[key].get<int64_t>() >= 0,
           "{}: field '{}' must be a non-negative integer, got {}", path, key, j[key].dump());
  return j[key].get<int64_t>();
}

double get_number(const json& j, const char* key, const std::string& where) {
  LB_CHECK(j.contains(key) && !j[key].is_null(), "{}: missing required field '{}'", where, key);
  LB_CHECK(j[key].is_number(), "{}: field '{}' must be a number, got {}", where, key, j[key].dump());
  return j[key].get<double>();
}

void parse_rope(const json& r, const std::string& where, LlamaConfig& c) {
  LB_CHECK(r.is_object(), "{}: must be an object, got {}", where, r.dump());
  std::string type = "default";
  if (r.contains("rope_type")) type = r["rope_type"].get<std::string>();
  else if (r.contains("type")) type = r["type"].get<std::string>();
  if (r.contains("rope_theta")) c.rope_theta = get_number(r, "rope_theta", where);
  RopeScaling& s = c.rope_scaling;
  if (type == "default") {
    s.type = RopeScaling::Type::None;
  } else if (type == "linear") {
    s.type = RopeScaling::Type::Linear;
    s.factor = get_number(r, "factor", where);
  } else if (type == "llama3") {
    s.type = RopeScaling::Type::Llama3;
    s.factor = get_number(r, "factor", where);
    s.low_freq_factor = get_number(r, "low_freq_factor", where);
    s.high_freq_factor = get_number(r, "high_freq_factor", where);
    double orig = get_number(r, "original_max_position_embeddings", where);
    LB_CHECK(orig > 0, "{}: original_max_position_embeddings must be positive", where);
    s.original_max_position_embeddings = int64_t(orig);
    LB_CHECK(s.high_freq_factor > s.low_freq_factor, "{}: high_freq_factor {} must exceed low_freq_factor {}",
             where, s.high_freq_factor, s.low_freq_factor);
  } else {
    fail("{}: unsupported rope type '{}' (supported: default, linear, llama3)", where, type);
  }
  if (s.type != RopeScaling::Type::None)
    LB_CHECK(s.factor > 0, "{}: factor must be positive, got {}", where, s.factor);
}

}  // namespace

const char* rope_type_name(RopeScaling::Type t) {
  switch (t) {
    case RopeScaling::Type::None: return "default";
    case RopeScaling::Type::Linear: return "linear";
    case RopeScaling::Type::Llama3: return "llama3";
  }
  return "?";
}

int64_t LlamaConfig::parameter_count() const {
  const int64_t h = hidden_size;
  const int64_t per_layer = h * q_dim() + 2 * h * kv_dim() + q_dim() * h + 3 * h * intermediate_size + 2 * h;
  return vocab_size * h * (tie_word_embeddings ? 1 : 2) + num_hidden_layers * per_layer + h;
}

LlamaConfig parse_llama_config(const std::string& text, const std::string& path) {
  json j = json::parse(text, nullptr, false);
  LB_CHECK(!j.is_discarded(), "{}: not valid JSON", path);
  LB_CHECK(j.is_object(), "{}: not a JSON object", path);
  bool is_llama = j.value("model_type", "") == "llama";
  if (j.contains("architectures") && j["architectures"].is_array())
    for (const auto& a : j["architectures"])
      if (a.is_string() && a.get<std::string>() == "LlamaForCausalLM") is_llama = true;
  LB_CHECK(j.value("model_type", "") != "llava_next",
           "{}: a LLaVA-Next model (vision-language): give its directory, whose language model LLaMA commands "
           "read, or run it with lowbit vlm-generate or vlm-logits", path);
  LB_CHECK(is_llama, "{}: not a LLaMA model (model_type '{}', architectures {}); lowbit reads LlamaForCausalLM",
           path, j.value("model_type", ""), j.contains("architectures") ? j["architectures"].dump() : "absent");

  LlamaConfig c;
  c.source = path;
  c.hidden_size = get_int(j, "hidden_size", path);
  c.intermediate_size = get_int(j, "intermediate_size", path);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", path);
  c.num_attention_heads = get_int(j, "num_attention_heads", path);
  c.vocab_size = get_int(j, "vocab_size", path);
  c.num_key_value_heads = opt_int(j, "num_key_value_heads", path).value_or(c.num_attention_heads);
  LB_CHECK(c.num_key_value_heads > 0 && c.num_attention_heads % c.num_key_value_heads == 0,
           "{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", path, c.num_attention_heads,
           c.num_key_value_heads);
  if (auto hd = opt_int(j, "head_dim", path); hd && *hd > 0) {
    c.head_dim = *hd;
  } else {
    LB_CHECK(c.hidden_size % c.num_attention_heads == 0,
             "{}: hidden_size {} is not a multiple of num_attention_heads {} and head_dim is absent", path,
             c.hidden_size, c.num_attention_heads);
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  LB_CHECK(c.head_dim % 2 == 0, "{}: head_dim {} must be even for RoPE", path, c.head_dim);
  c.max_position_embeddings = opt_int(j, "max_position_embeddings", path).value_or(2048);
  if (j.contains("rms_norm_eps")) c.rms_norm_eps = get_number(j, "rms_norm_eps", path);
  LB_CHECK(c.rms_norm_eps > 0, "{}: rms_norm_eps must be positive", path);
  if (j.contains("rope_theta")) c.rope_theta = get_number(j, "rope_theta", path);
  // transformers >= 5 stores RoPE as rope_parameters; older configs as rope_theta + rope_scaling.
  if (j.contains("rope_parameters") && !j["rope_parameters"].is_null())
    parse_rope(j["rope_parameters"], path + ": rope_parameters", c);
  else if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    parse_rope(j["rope_scaling"], path + ": rope_scaling", c);
  LB_CHECK(c.rope_theta > 0, "{}: rope_theta must be positive", path);
  if (j.contains("tie_word_embeddings")) {
    LB_CHECK(j["tie_word_embeddings"].is_boolean(), "{}: tie_word_embeddings must be true or false", path);
    c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  c.bos_token_id = opt_int(j, "bos_token_id", path);
  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    const json& e = j["eos_token_id"];
    if (e.is_array()) {
      for (const auto& x : e) {
        LB_CHECK(x.is_number_integer(), "{}: eos_token_id entries must be integers", path);
        c.eos_token_ids.push_back(x.get<int64_t>());
      }
    } else {
      c.eos_token_ids.push_back(*opt_int(j, "eos_token_id", path));
    }
  }
  for (const char* key : {"torch_dtype", "dtype"})
    if (j.contains(key) && j[key].is_string()) c.torch_dtype = j[key].get<std::string>();
  if (j.contains("hidden_act"))
    LB_CHECK(j["hidden_act"] == "silu", "{}: hidden_act {} is not supported (LLaMA uses silu)", path,
             j["hidden_act"].dump());
  for (const char* key : {"attention_bias", "mlp_bias"})
    LB_CHECK(!j.contains(key) || j[key].is_null() || j[key] == false,
             "{}: {} = true is not supported (LLaMA linears have no bias)", path, key);
  return c;
}

LlamaConfig load_llama_config(const std::string& path) { return parse_llama_config(read_file(path), path); }

std::string llama_config_to_json(const LlamaConfig& c) {
  json j = {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"hidden_size", c.hidden_size},
            {"intermediate_size", c.intermediate_size},
            {"num_hidden_layers", c.num_hidden_layers},
            {"num_attention_heads", c.num_attention_heads},
            {"num_key_value_heads", c.num_key_value_heads},
            {"head_dim", c.head_dim},
            {"vocab_size", c.vocab_size},
            {"max_position_embeddings", c.max_position_embeddings},
            {"rms_norm_eps", c.rms_norm_eps},
            {"rope_theta", c.rope_theta},
            {"tie_word_embeddings", c.tie_word_embeddings},
            {"torch_dtype", c.torch_dtype.empty() ? "float32" : c.torch_dtype}};
  switch (c.rope_scaling.type) {
    case RopeScaling::Type::None: j["rope_scaling"] = nullptr; break;
    case RopeScaling::Type::Linear: j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope_scaling.factor}}; break;
    case RopeScaling::Type::Llama3:
      j["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", c.rope_scaling.factor},
                           {"low_freq_factor", c.rope_scaling.low_freq_factor},
                           {"high_freq_factor", c.rope_scaling.high_freq_factor},
                           {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
      break;
  }
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
  else if (!c.eos_token_ids.empty()) j["eos_token_id"] = c.eos_token_ids;
  return j.dump(2) + "\n";
}

}  // namespace lowbit
