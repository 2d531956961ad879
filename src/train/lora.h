// LoRA adapters over a frozen LLaMA model, as PEFT defines them:
//   y = x W^T + scaling * dropout(x) A^T B^T,   A [r, in], B [out, r], scaling = alpha / r,
// on any subset of a block's seven linears, in every block. W stays whatever the base model
// holds (fp32, or a quantized model's dequantized weights); only A and B train.
//
// Init (PEFT's default, init_lora_weights=True): A ~ kaiming_uniform(a = sqrt(5)), which is
// U(-1/sqrt(in), 1/sqrt(in)); B = 0, so the adapted model starts equal to the base.
//
// With `iec` (IR-QLoRA's Information Elastic Connection, iec.h) each adapted linear also holds two
// trainable scalars a_s and b_s, both initialized to 0, that add the input's group means to the
// path; r must then divide every adapted linear's in and out features.
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
  bool iec = false;    // IR-QLoRA's elastic connection: the scalars a_s, b_s per linear
  double scaling() const { return alpha / double(r); }
  bool targets_kind(LinearKind k) const { return targets[size_t(k)]; }
};

// One linear's adapter (or its gradient: the same shapes).
struct LoraLinear {
  int64_t r = 0, in = 0, out = 0;
  std::vector<float> a;  // [r, in]
  std::vector<float> b;  // [out, r]
  std::vector<float> a_scale, b_scale;  // IEC's scalars: [1] each with LoraConfig::iec, else empty
  bool active() const { return r > 0; }
  bool has_iec() const { return !a_scale.empty(); }
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
  // Calls f(name, values) for every trainable tensor in a fixed order (per linear: A, B, then
  // IEC's a_s and b_s), named by PEFT's state-dict keys
  // ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", IR-QLoRA's
  // "...q_proj.lora_default_A_scale").
  template <typename F> void for_each(F&& f);
  template <typename F> void for_each(F&& f) const;
};

// Throws lowbit::Error for a rank or dropout out of range, or, with IEC, a rank that does not
// divide an adapted linear's in or out features of a model of configuration `c` (naming both).
void check_lora_config(const LlamaConfig& c, const LoraConfig& config);

// PEFT's state-dict key of layer `layer`'s adapter on `kind`, matrix 'A' or 'B'.
std::string peft_key(int64_t layer, LinearKind kind, char matrix);
// IR-QLoRA's key of the IEC scalar 'A' (a_s) or 'B' (b_s): the parameter names of its
// IRQLoraLinear4bit as PEFT's save_pretrained writes them
// ("base_model.model.model.layers.0.self_attn.q_proj.lora_default_A_scale", shape [1]).
std::string iec_key(int64_t layer, LinearKind kind, char which);
// "q_proj" -> LinearKind::Q; throws lowbit::Error naming the option for any other name.
LinearKind lora_target_kind(const std::string& name);

template <typename F> void LoraAdapters::for_each(F&& f) {
  for (size_t l = 0; l < layers.size(); ++l)
    for (LinearKind k : kAllLinears) {
      LoraLinear& a = layers[l][size_t(k)];
      if (!a.active()) continue;
      f(peft_key(int64_t(l), k, 'A'), a.a);
      f(peft_key(int64_t(l), k, 'B'), a.b);
      if (!a.has_iec()) continue;
      f(iec_key(int64_t(l), k, 'A'), a.a_scale);
      f(iec_key(int64_t(l), k, 'B'), a.b_scale);
    }
}
template <typename F> void LoraAdapters::for_each(F&& f) const {
  for (size_t l = 0; l < layers.size(); ++l)
    for (LinearKind k : kAllLinears) {
      const LoraLinear& a = layers[l][size_t(k)];
      if (!a.active()) continue;
      f(peft_key(int64_t(l), k, 'A'), a.a);
      f(peft_key(int64_t(l), k, 'B'), a.b);
      if (!a.has_iec()) continue;
      f(iec_key(int64_t(l), k, 'A'), a.a_scale);
      f(iec_key(int64_t(l), k, 'B'), a.b_scale);
    }
}

}  // namespace lowbit::train
