// The models, batches and adapters the GPU training tests share: a random-weight GQA LLaMA written
// as a config for lowbit's random: loader, random micro-batches with masked prompt and padding
// positions, and LoRA adapters with random B (and IEC scalars).
#pragma once

#include "formats/checkpoint.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "test_util.h"
#include "train/finetune.h"
#include "train/llama_backward.h"
#include "train/llama_backward_cuda.h"
#include "train/lora.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace lowbit::test {

// stories260K's llama2.c file in the test models.
inline std::string stories() { return test::models_dir() + "/stories260K/stories260K.bin"; }

// The model at `path` with `spec` applied in memory ("" for the model as loaded).
inline std::unique_ptr<LlamaModel> load_base(const std::string& path, const std::string& spec) {
  Checkpoint source = open_checkpoint(path);
  if (spec.empty()) return std::make_unique<LlamaModel>(std::move(source));
  LlamaModel work(source);
  auto method = make_method(spec);
  QuantizedModel qm = quantize_model(work, *method, nullptr, {});
  return std::make_unique<LlamaModel>(quantized_checkpoint_in_memory(source, std::move(qm), {{"path", path}}));
}

// The short run on stories260K and the Alpaca subset that the GPU fine-tuning tests compare across
// devices, precisions and base residencies: 48 records (8 held out), sources of 64 and targets of
// 32 tokens, batches of 2 in 2 micro-batches, lr 1e-3.
inline train::FinetuneOptions small_alpaca_finetune(const std::string& model, const std::string& data,
                                                    const std::string& method, int64_t steps,
                                                    const std::string& device) {
  train::FinetuneOptions o;
  o.model = model;
  o.method = method;
  o.data = data;
  o.steps = steps;
  o.batch = 2;
  o.grad_accum = 2;
  o.lr = 1e-3;
  o.limit = 48;
  o.eval_size = 8;
  o.source_max = 64;
  o.target_max = 32;
  o.device = device;
  return o;
}

// A random-weight LLaMA with grouped-query attention (8 query heads on 2 key/value heads, head
// dim 32), llama3 RoPE, a tied head and sizes past the kernels' 256-thread blocks.
inline std::string write_random_gqa_config(const test::TempDir& dir) {
  const nlohmann::json cfg = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"hidden_act", "silu"},
      {"hidden_size", 320},
      {"intermediate_size", 864},
      {"num_attention_heads", 8},
      {"num_key_value_heads", 2},
      {"head_dim", 32},
      {"num_hidden_layers", 2},
      {"vocab_size", 1000},
      {"max_position_embeddings", 512},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", 500000.0},
      {"rope_scaling",
       {{"factor", 8.0},
        {"high_freq_factor", 4.0},
        {"low_freq_factor", 1.0},
        {"original_max_position_embeddings", 32},
        {"rope_type", "llama3"}}},
      {"tie_word_embeddings", true},
      {"bos_token_id", 1},
      {"eos_token_id", 2}};
  test::spit(dir / "config.json", cfg.dump());
  return "random:" + dir.path.string();
}

// B = 2 sequences of T = 64 random tokens: targets are the next tokens, except the first 10
// positions of sequence 0 (a prompt), the last 9 of sequence 1 (padding, token 0; when B >= 2)
// and each last position. T >= 2; shorter sequences keep at least one target per sequence.
inline train::Batch random_batch(int64_t V, uint32_t seed, int64_t B = 2, int64_t T = 64) {
  std::mt19937 g(seed);
  train::Batch b;
  b.B = B;
  b.T = T;
  b.tokens.resize(size_t(B * T));
  b.targets.assign(size_t(B * T), -100);
  for (auto& t : b.tokens) t = int32_t(g() % uint32_t(V));
  const int64_t prompt = std::min<int64_t>(10, T - 2), pad = std::min<int64_t>(9, T - 2);
  if (B >= 2)
    for (int64_t t = T - pad; t < T; ++t) b.tokens[size_t(T + t)] = 0;
  for (int64_t s = 0; s < B; ++s)
    for (int64_t t = 0; t + 1 < T; ++t) {
      if (s == 0 && t < prompt) continue;
      if (s == 1 && t + 1 >= T - pad) continue;
      b.targets[size_t(s * T + t)] = b.tokens[size_t(s * T + t + 1)];
    }
  return b;
}

// r 8 on all seven linears: A from PEFT's init, B random (PEFT's zero B would zero A's gradient);
// with IEC, its scalars random too (their init, 0, would skip their terms of the forward).
inline train::LoraAdapters random_lora(const LlamaConfig& c, double dropout, uint64_t seed, bool iec = false) {
  train::LoraConfig cfg;
  cfg.r = 8;
  cfg.alpha = 16;
  cfg.dropout = dropout;
  cfg.iec = iec;
  train::LoraAdapters a = train::LoraAdapters::peft_init(c, cfg, seed);
  std::mt19937 g(uint32_t(seed) + 1);
  std::normal_distribution<float> d(0.0f, 0.02f);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  int scalars = 0;
  a.for_each([&](const std::string& key, std::vector<float>& v) {
    if (key.find("lora_B") != std::string::npos)
      for (float& x : v) x = d(g);
    if (key.find("_scale") != std::string::npos) {
      for (float& x : v) x = u(g);
      ++scalars;
    }
  });
  EXPECT_EQ(scalars, iec ? 2 * 7 * c.num_hidden_layers : 0);
  return a;
}

// The micro-batches of one step run twice on `gpu`: each call with its gradients downloaded and
// summed on the host (into g_host), and all with their gradients kept and summed on the device
// (adapters_unchanged after the first, more_micro_batches before the last) into g_device: the two
// sums are equal bit for bit. `so` is the options the calls share (dropout seeds set per call);
// it is left as the last call had it.
inline void expect_device_sum_equals_host_sum(train::CudaLlamaBackward& gpu, const train::LoraAdapters& lora,
                                              std::span<const train::Batch> micro, train::StepOptions& so,
                                              train::LoraAdapters& g_host, train::LoraAdapters& g_device) {
  const int n = int(micro.size());
  for (int i = 0; i < n; ++i) {
    so.dropout_seed = uint64_t(i);
    gpu.forward_backward(&lora, micro[size_t(i)], so, &g_host, nullptr);
  }
  for (int i = 0; i < n; ++i) {
    so.dropout_seed = uint64_t(i);
    so.adapters_unchanged = i > 0;
    so.more_micro_batches = i < n - 1;
    gpu.forward_backward(&lora, micro[size_t(i)], so, &g_device, nullptr);
  }
  std::vector<std::vector<float>> want;
  g_host.for_each([&](const std::string&, const std::vector<float>& v) { want.push_back(v); });
  size_t i = 0;
  g_device.for_each([&](const std::string& key, const std::vector<float>& v) { EXPECT_EQ(v, want[i++]) << key; });
}

}  // namespace lowbit::test
