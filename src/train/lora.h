// LoRA adapters over a frozen LLaMA model, as PEFT defines them:
//   y = x W^T + scaling * dropout(x) A^T B^T,   A [r, in], B [out, r], scaling = alpha / r,
// on any subset of a block's seven linears, in every block. W stays whatever the base model
// holds (fp32, or a quantized model's dequantized weights); only A and B train.
//
// Init (PEFT's default, init_lora_weights=True): A ~ kaiming_uniform(a = sqrt(5)), which is
// U(-1/sqrt(in), 1/sqrt(in)); B = 0, so the adapted model starts equal to the base.
#pragma once

#include "formats/llama_config.h"
#include "formats/llama_tensors.h"

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace lowbit::train {

struct LoraConfig {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0;  // probability of zeroing an input feature, in [0, 1)
  std::array<bool, 7> targets{true, true, true, true, true, true, true};  // indexed by LinearKind
  double scaling() const { return alpha / double(r); }
  bool targets_kind(LinearKind k) const { return targets[size_t(k)]; }
};

// One linear's adapter (or its gradient: the same shapes).
struct LoraLinear {
  int64_t r = 0, in = 0, out = 0;
  std::vector<float> a;  // [r, in]
  std::vector<float> b;  // [out, r]
  bool active() const { return r > 0; }
};

// Every adapter of a model: layers[i][kind] (inactive where the kind is not a target).
struct LoraAdapters {
  LoraConfig config;
  std::vector<std::array<LoraLinear, 7>> layers;

  // Zero adapters of the shapes `config` gives on a model of configuration `c`.
  static LoraAdapters zeros(const LlamaConfig& c, const LoraConfig& config);
  // PEFT's init (above) from a seeded generator (mt19937_64; the values are not torch's).
  static LoraAdapters peft_init(const LlamaConfig& c, const LoraConfig& config, uint64_t seed);
  // Same shapes, all zero: a gradient buffer.
  LoraAdapters zeros_like() const;
  void set_zero();
  int64_t num_parameters() const;
  // Calls f(name, values) for every A and B in a fixed order, named by PEFT's state-dict keys
  // ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").
  template <typename F> void for_each(F&& f);
  template <typename F> void for_each(F&& f) const;
};

// PEFT's state-dict key of layer `layer`'s adapter on `kind`, matrix 'A' or 'B'.
std::string peft_key(int64_t layer, LinearKind kind, char matrix);
// "q_proj" -> LinearKind::Q; throws lowbit::Error naming the option for any other name.
LinearKind lora_target_kind(const std::string& name);

template <typename F> void LoraAdapters::for_each(F&& f) {
  for (size_t l = 0; l < layers.size(); ++l)
    for (LinearKind k : kAllLinears) {
      LoraLinear& a = layers[l][size_t(k)];
      if (!a.active()) continue;
      f(peft_key(int64_t(l), k, 'A'), a.a);
      f(peft_key(int64_t(l), k, 'B'), a.b);
    }
}
template <typename F> void LoraAdapters::for_each(F&& f) const {
  for (size_t l = 0; l < layers.size(); ++l)
    for (LinearKind k : kAllLinears) {
      const LoraLinear& a = layers[l][size_t(k)];
      if (!a.active()) continue;
      f(peft_key(int64_t(l), k, 'A'), a.a);
      f(peft_key(int64_t(l), k, 'B'), a.b);
    }
}

}  // namespace lowbit::train
