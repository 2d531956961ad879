// Reading the training fixtures of tests/fixtures/train (scripts/make_train_fixtures.py,
// scripts/make_irqlora_train_fixtures.py): the directory, fp32 tensors as vectors, the fixture
// batch, and the merged-adapter logits check shared by the LoRA and IR-QLoRA parity tests.
#pragma once

#include "formats/safetensors.h"
#include "model/llama_model.h"
#include "test_util.h"
#include "train/trainer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace lowbit::test {

inline std::string train_fixtures_dir() { return fixtures_dir() + "/train"; }

inline std::vector<float> float_vector(const SafetensorsFile& f, const std::string& name) {
  const Tensor t = f.tensor(name);
  return std::vector<float>(t.data_as<float>(), t.data_as<float>() + t.numel());
}

// The batch stored as "tokens" and "targets" [B, T] (int32).
inline train::Batch fixture_batch(const SafetensorsFile& f) {
  const Tensor tok = f.tensor("tokens"), tgt = f.tensor("targets");
  train::Batch b;
  b.B = tok.dim(0);
  b.T = tok.dim(1);
  b.tokens.assign(tok.data_as<int32_t>(), tok.data_as<int32_t>() + tok.numel());
  b.targets.assign(tgt.data_as<int32_t>(), tgt.data_as<int32_t>() + tgt.numel());
  return b;
}

// The micro-batches of optimizer step s of a stored training run: "train.tokens" and
// "train.targets" [micro-batches, B, T] (int32), split evenly over the steps of "train.loss".
inline std::vector<train::Batch> fixture_step_batches(const SafetensorsFile& f, int64_t s) {
  const Tensor tok = f.tensor("train.tokens"), tgt = f.tensor("train.targets");
  const int64_t micro = tok.dim(0), B = tok.dim(1), T = tok.dim(2), accum = micro / f.tensor("train.loss").dim(0);
  std::vector<train::Batch> mbs;
  for (int64_t i = s * accum; i < (s + 1) * accum; ++i) {
    train::Batch b;
    b.B = B;
    b.T = T;
    b.tokens.assign(tok.data_as<int32_t>() + i * B * T, tok.data_as<int32_t>() + (i + 1) * B * T);
    b.targets.assign(tgt.data_as<int32_t>() + i * B * T, tgt.data_as<int32_t>() + (i + 1) * B * T);
    mbs.push_back(std::move(b));
  }
  return mbs;
}

// max |logit - want| of model.forward on the batch's first sequence (a model with its adapter
// merged); infinity, with a failure recorded, when the sizes differ.
inline double max_first_sequence_logit_difference(const LlamaModel& model, const train::Batch& batch,
                                                  const std::vector<float>& want) {
  const std::vector<int32_t> ids(batch.tokens.begin(), batch.tokens.begin() + batch.T);
  const Tensor got = model.forward(ids);
  EXPECT_EQ(got.numel(), int64_t(want.size()));
  if (got.numel() != int64_t(want.size())) return std::numeric_limits<double>::infinity();
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, double(std::fabs(got.data_as<float>()[i] - want[i])));
  return worst;
}

}  // namespace lowbit::test
