// DB-LLM training tests' shared set-up (tests/model/test_fdb_train.cpp on the CPU,
// tests/cuda/test_cuda_fdb_train.cpp on the GPU): the tiny LLaMA-3 training fixture's linears
// after an fdb initialization, random distillation batches, and a student whose blocks hold
// given fdb linears' dequantized weights.
#pragma once

#include "formats/checkpoint.h"
#include "model/llama_model.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "train/fdb_train.h"
#include "train_fixture.h"

#include <cstdint>
#include <memory>
#include <random>
#include <string>

namespace lowbit::test {

// The tiny LLaMA-3 training fixture (GQA, llama3 RoPE).
inline std::string fdb_tiny_model() { return train_fixtures_dir() + "/tiny-llama3"; }

// Every linear of the tiny fixture quantized by `spec` (a dbllm spec: fdb linears).
inline train::FdbLinears fdb_init(const std::string& spec) {
  LlamaModel work(open_checkpoint(fdb_tiny_model()));
  auto method = make_method(spec);
  QuantizedModel qm = quantize_model(work, *method, nullptr, {});
  train::FdbLinears out(qm.blocks.size());
  for (size_t l = 0; l < qm.blocks.size(); ++l)
    for (LinearKind k : kAllLinears) out[l][size_t(k)] = *qm.blocks[l].linear[size_t(k)];
  return out;
}

// B sequences of T random token ids below V (mt19937(seed)); targets 0 (distillation reads none).
inline train::Batch random_batch(int64_t B, int64_t T, int64_t V, uint32_t seed) {
  std::mt19937 gen(seed);
  train::Batch b;
  b.B = B;
  b.T = T;
  for (int64_t i = 0; i < B * T; ++i) b.tokens.push_back(int32_t(gen() % uint32_t(V)));
  b.targets.assign(b.tokens.size(), 0);
  return b;
}

// m's blocks with q's dequantized weights in place of their linears.
inline void set_fdb_linears(LlamaModel& m, const train::FdbLinears& q) {
  for (size_t l = 0; l < q.size(); ++l) {
    auto w = std::make_shared<BlockWeights>(clone_block_weights(*m.block_weights(int64_t(l))));
    for (LinearKind k : kAllLinears) w->linear[size_t(k)] = q[l][size_t(k)].dequantize_f32();
    m.set_block_weights(int64_t(l), w);
  }
}

}  // namespace lowbit::test
