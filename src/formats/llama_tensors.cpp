#include "formats/llama_tensors.h"

#include "core/error.h"

#include <fmt/format.h>

#include <charconv>

namespace lowbit {

namespace {

constexpr std::array<TensorSpec, 12> kTable = {{
    {TensorKind::TokenEmbd, false, "model.embed_tokens.weight", "token_embd.weight", std::nullopt},
    {TensorKind::AttnNorm, true, "model.layers.{}.input_layernorm.weight", "blk.{}.attn_norm.weight", std::nullopt},
    {TensorKind::Q, true, "model.layers.{}.self_attn.q_proj.weight", "blk.{}.attn_q.weight", LinearKind::Q},
    {TensorKind::K, true, "model.layers.{}.self_attn.k_proj.weight", "blk.{}.attn_k.weight", LinearKind::K},
    {TensorKind::V, true, "model.layers.{}.self_attn.v_proj.weight", "blk.{}.attn_v.weight", LinearKind::V},
    {TensorKind::O, true, "model.layers.{}.self_attn.o_proj.weight", "blk.{}.attn_output.weight", LinearKind::O},
    {TensorKind::FfnNorm, true, "model.layers.{}.post_attention_layernorm.weight", "blk.{}.ffn_norm.weight",
     std::nullopt},
    {TensorKind::Gate, true, "model.layers.{}.mlp.gate_proj.weight", "blk.{}.ffn_gate.weight", LinearKind::Gate},
    {TensorKind::Up, true, "model.layers.{}.mlp.up_proj.weight", "blk.{}.ffn_up.weight", LinearKind::Up},
    {TensorKind::Down, true, "model.layers.{}.mlp.down_proj.weight", "blk.{}.ffn_down.weight", LinearKind::Down},
    {TensorKind::OutputNorm, false, "model.norm.weight", "output_norm.weight", std::nullopt},
    {TensorKind::Output, false, "lm_head.weight", "output.weight", std::nullopt},
}};

constexpr std::array<LinearKind, 3> kAttnIn = {LinearKind::Q, LinearKind::K, LinearKind::V};
constexpr std::array<LinearKind, 1> kAttnOut = {LinearKind::O};
constexpr std::array<LinearKind, 2> kMlpIn = {LinearKind::Gate, LinearKind::Up};
constexpr std::array<LinearKind, 1> kMlpOut = {LinearKind::Down};

std::string expand(const char* pattern, bool per_layer, int64_t layer) {
  if (!per_layer) return pattern;
  LB_ASSERT(layer >= 0);
  return fmt::format(fmt::runtime(pattern), layer);
}

}  // namespace

const char* linear_name(LinearKind k) {
  switch (k) {
    case LinearKind::Q: return "q_proj";
    case LinearKind::K: return "k_proj";
    case LinearKind::V: return "v_proj";
    case LinearKind::O: return "o_proj";
    case LinearKind::Gate: return "gate_proj";
    case LinearKind::Up: return "up_proj";
    case LinearKind::Down: return "down_proj";
  }
  return "?";
}

std::span<const TensorSpec> llama_tensor_table() { return kTable; }
const TensorSpec& tensor_spec(TensorKind k) { return kTable[size_t(k)]; }

std::string hf_tensor_name(TensorKind k, int64_t layer) {
  const TensorSpec& s = tensor_spec(k);
  return expand(s.hf, s.per_layer, layer);
}

std::string gguf_tensor_name(TensorKind k, int64_t layer) {
  const TensorSpec& s = tensor_spec(k);
  return expand(s.gguf, s.per_layer, layer);
}

namespace {

// The kind and layer of `name` under the naming column `field` (TensorSpec::hf or ::gguf).
std::optional<std::pair<TensorKind, int64_t>> parse_tensor_name(std::string_view name,
                                                                const char* TensorSpec::*field) {
  for (const TensorSpec& s : kTable) {
    const std::string_view pat = s.*field;
    if (!s.per_layer) {
      if (name == pat) return std::pair{s.kind, int64_t(-1)};
      continue;
    }
    const size_t brace = pat.find("{}");
    const std::string_view pre = pat.substr(0, brace), post = pat.substr(brace + 2);
    if (name.size() <= pre.size() + post.size() || name.substr(0, pre.size()) != pre ||
        name.substr(name.size() - post.size()) != post)
      continue;
    const std::string_view digits = name.substr(pre.size(), name.size() - pre.size() - post.size());
    int64_t layer = -1;
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), layer);
    if (ec == std::errc() && p == digits.data() + digits.size() && layer >= 0) return std::pair{s.kind, layer};
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::pair<TensorKind, int64_t>> parse_hf_tensor_name(std::string_view name) {
  return parse_tensor_name(name, &TensorSpec::hf);
}

std::optional<std::pair<TensorKind, int64_t>> parse_gguf_tensor_name(std::string_view name) {
  return parse_tensor_name(name, &TensorSpec::gguf);
}

std::vector<int64_t> tensor_shape(const LlamaConfig& c, TensorKind k) {
  if (auto l = tensor_spec(k).linear) return {linear_out_features(c, *l), linear_in_features(c, *l)};
  switch (k) {
    case TensorKind::TokenEmbd:
    case TensorKind::Output: return {c.vocab_size, c.hidden_size};
    default: return {c.hidden_size};
  }
}

TensorKind tensor_kind(LinearKind k) { return TensorKind(int(TensorKind::Q) + int(k) + (int(k) >= int(LinearKind::Gate) ? 1 : 0)); }

std::string linear_weight_name(int64_t layer, LinearKind k) { return hf_tensor_name(tensor_kind(k), layer); }

std::string linear_base_name(int64_t layer, LinearKind k) {
  std::string name = linear_weight_name(layer, k);
  return name.substr(0, name.size() - std::string_view(".weight").size());
}

int64_t linear_out_features(const LlamaConfig& c, LinearKind k) {
  switch (k) {
    case LinearKind::Q: return c.q_dim();
    case LinearKind::K:
    case LinearKind::V: return c.kv_dim();
    case LinearKind::Gate:
    case LinearKind::Up: return c.intermediate_size;
    default: return c.hidden_size;
  }
}

int64_t linear_in_features(const LlamaConfig& c, LinearKind k) {
  return k == LinearKind::O ? c.q_dim() : k == LinearKind::Down ? c.intermediate_size : c.hidden_size;
}

InputSite input_site(LinearKind k) {
  switch (k) {
    case LinearKind::Q:
    case LinearKind::K:
    case LinearKind::V: return InputSite::AttnIn;
    case LinearKind::O: return InputSite::AttnOut;
    case LinearKind::Gate:
    case LinearKind::Up: return InputSite::MlpIn;
    default: return InputSite::MlpOut;
  }
}

const char* input_site_name(InputSite s) {
  switch (s) {
    case InputSite::AttnIn: return "attn_in";
    case InputSite::AttnOut: return "attn_out";
    case InputSite::MlpIn: return "mlp_in";
    case InputSite::MlpOut: return "mlp_out";
  }
  return "?";
}

int64_t input_site_features(const LlamaConfig& c, InputSite s) {
  return linear_in_features(c, site_linears(s).front());
}

std::span<const LinearKind> site_linears(InputSite s) {
  switch (s) {
    case InputSite::AttnIn: return kAttnIn;
    case InputSite::AttnOut: return kAttnOut;
    case InputSite::MlpIn: return kMlpIn;
    default: return kMlpOut;
  }
}

void for_each_expected_llama_tensor(
    const LlamaConfig& c, const std::function<void(const std::string&, const std::vector<int64_t>&)>& visit) {
  auto one = [&](TensorKind k, int64_t layer) { visit(hf_tensor_name(k, layer), tensor_shape(c, k)); };
  one(TensorKind::TokenEmbd, -1);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    for (const TensorSpec& s : kTable)
      if (s.per_layer) one(s.kind, i);
  one(TensorKind::OutputNorm, -1);
  if (!c.tie_word_embeddings) one(TensorKind::Output, -1);
}

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_llama_tensors(const LlamaConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for_each_expected_llama_tensor(c, [&](const std::string& name, const std::vector<int64_t>& shape) {
    out.emplace_back(name, shape);
  });
  return out;
}

}  // namespace lowbit
