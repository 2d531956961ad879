#include "train/lora.h"

#include "core/error.h"

#include <cmath>
#include <random>

namespace lowbit::train {

void check_lora_config(const LlamaConfig& c, const LoraConfig& config) {
  LB_CHECK(config.r > 0, "LoRA rank r must be positive, got {}", config.r);
  LB_CHECK(config.dropout >= 0 && config.dropout < 1, "LoRA dropout must be in [0, 1), got {}", config.dropout);
  if (!config.iec) return;
  for (LinearKind k : kAllLinears) {
    if (!config.targets_kind(k)) continue;
    const int64_t in = linear_in_features(c, k), out = linear_out_features(c, k);
    LB_CHECK(in % config.r == 0 && out % config.r == 0,
             "IR-QLoRA's elastic connection needs the rank to divide every adapted linear: r = {} does not divide "
             "{}'s input ({}) and output ({}) sizes",
             config.r, linear_name(k), in, out);
  }
}

LoraAdapters LoraAdapters::zeros(const LlamaConfig& c, const LoraConfig& config) {
  check_lora_config(c, config);
  LoraAdapters ad;
  ad.config = config;
  ad.layers.resize(size_t(c.num_hidden_layers));
  for (auto& layer : ad.layers)
    for (LinearKind k : kAllLinears) {
      if (!config.targets_kind(k)) continue;
      LoraLinear& a = layer[size_t(k)];
      a.r = config.r;
      a.in = linear_in_features(c, k);
      a.out = linear_out_features(c, k);
      a.a.assign(size_t(a.r * a.in), 0.0f);
      a.b.assign(size_t(a.out * a.r), 0.0f);
      if (config.iec) {
        a.a_scale.assign(1, 0.0f);
        a.b_scale.assign(1, 0.0f);
      }
    }
  return ad;
}

LoraAdapters LoraAdapters::peft_init(const LlamaConfig& c, const LoraConfig& config, uint64_t seed) {
  LoraAdapters ad = zeros(c, config);
  std::mt19937_64 gen(seed);
  for (auto& layer : ad.layers)
    for (LoraLinear& a : layer) {
      if (!a.active()) continue;
      // kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in)
      // = 1 / sqrt(fan_in); fan_in of A [r, in] is in.
      const float bound = float(1.0 / std::sqrt(double(a.in)));
      std::uniform_real_distribution<float> u(-bound, bound);
      for (float& v : a.a) v = u(gen);
    }
  return ad;
}

LoraAdapters LoraAdapters::zeros_like() const {
  LoraAdapters z;
  z.config = config;
  z.layers = layers;
  z.set_zero();
  return z;
}

void LoraAdapters::set_zero() {
  for (auto& layer : layers)
    for (LoraLinear& a : layer) {
      std::fill(a.a.begin(), a.a.end(), 0.0f);
      std::fill(a.b.begin(), a.b.end(), 0.0f);
      std::fill(a.a_scale.begin(), a.a_scale.end(), 0.0f);
      std::fill(a.b_scale.begin(), a.b_scale.end(), 0.0f);
    }
}

int64_t LoraAdapters::num_parameters() const {
  int64_t n = 0;
  for (const auto& layer : layers)
    for (const LoraLinear& a : layer) n += int64_t(a.a.size() + a.b.size() + a.a_scale.size() + a.b_scale.size());
  return n;
}

std::string peft_key(int64_t layer, LinearKind kind, char matrix) {
  const bool attn = kind == LinearKind::Q || kind == LinearKind::K || kind == LinearKind::V || kind == LinearKind::O;
  return "base_model.model.model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") +
         linear_name(kind) + ".lora_" + matrix + ".weight";
}

std::string iec_key(int64_t layer, LinearKind kind, char which) {
  const std::string k = peft_key(layer, kind, which);
  // "...q_proj.lora_A.weight" -> "...q_proj.lora_default_A_scale"
  return k.substr(0, k.size() - std::string("lora_A.weight").size()) + "lora_default_" + which + "_scale";
}

LinearKind lora_target_kind(const std::string& name) {
  for (LinearKind k : kAllLinears)
    if (name == linear_name(k)) return k;
  LB_CHECK(false, "unknown LoRA target '{}' (known: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
           name);
  return LinearKind::Q;
}

}  // namespace lowbit::train
