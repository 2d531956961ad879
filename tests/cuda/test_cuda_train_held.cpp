// Training with the adapters held on the GPU (StepEngine::hold_adapters, TrainOptions::
// optimizer_on_device): the device AdamW and gradient norm against optimizer.h's host twins, a
// few optimizer steps against the same steps with AdamW on the host, checkpoints of a stopped and
// resumed `lowbit finetune --device cuda` run against an uninterrupted one, and what holding
// refuses. (test_cuda_train.cpp's EightStepsMatchTorchAdamW runs the held path against torch's
// AdamW.) Skipped without a GPU.
//
// Tolerances. The device update performs the host's fp32 operations in the host's order, each
// rounded (backend/cuda/adamw.cuh), so it equals the host's bit for bit wherever the host
// compiler does not fuse a product and a sum (checked where the build has no FMA, __FMA__ unset;
// otherwise within 1e-6 relative, a few ulps). The global norm's fp64 sum runs in another order:
// 1e-12 relative. Over steps, that order can move the clipping factor by an ulp, which Adam
// carries into the adapters as ~1e-7 relative changes: the bars for held against host steps are
// 1e-6 on the losses and norms and 1e-5 (of each tensor's largest value) on the adapters and
// moments.
#include "backend/cuda/adamw.cuh"
#include "core/error.h"
#include "formats/checkpoint.h"
#include "formats/safetensors.h"
#include "test_util.h"
#include "train/adamw_cuda.h"
#include "train/finetune.h"
#include "train/llama_backward_cuda.h"
#include "train/optimizer.h"
#include "train/step_engine.h"
#include "train/trainer.h"
#include "cuda_test_util.h"
#include "cuda_train_models.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace lowbit {
namespace {

using test::ctx;
using test::random_batch;
using test::random_lora;
using test::randn;
using test::rel_err;
using test::up;
using test::write_random_gqa_config;

using test::error_text;

// The device AdamW update (with the clipping's factor) against the host's adamw_update after the
// host's clip multiply, on 100,003 values (past any block), at a step with weight decay and
// another without, and the device's fp64 sum of squares against a sequential one.
TEST(CudaTrainHeld, AdamWAndNormMatchTheHost) {
  REQUIRE_GPU();
  const cudaStream_t s = ctx().stream();
  const size_t n = 100003;
  for (int64_t step : {1, 7}) {
    SCOPED_TRACE("step " + std::to_string(step));
    train::AdamWOptions opt;
    opt.lr = 3e-4;
    opt.weight_decay = step == 1 ? 0.01 : 0.0;
    std::vector<float> p = randn(n, 1, 0.05f), g = randn(n, 2, 1e-3f), m = randn(n, 3, 1e-4f), v = randn(n, 4, 1e-4f);
    for (float& x : v) x = x * x;  // a second moment is not negative
    if (step == 1) std::fill(m.begin(), m.end(), 0.0f), std::fill(v.begin(), v.end(), 0.0f);
    const double norm = 0.9, max_norm = 0.3;
    const float coef = train::clip_coefficient(norm, max_norm);
    auto dp = up(p), dg = up(g), dm = up(m), dv = up(v);
    std::vector<float> gc = g;
    for (float& x : gc) x *= coef;
    train::adamw_update(p, gc, m, v, step, opt, 1e-4);
    const cuda::AdamWStepF32 c = train::adamw_step_f32(train::adamw_coefficients(step, opt, 1e-4), coef);
    cuda::adamw_update_f32(dp.get(), dg.get(), dm.get(), dv.get(), int64_t(n), c, s);
    for (auto [dev, host, name] : {std::tuple{&dp, &p, "p"}, std::tuple{&dm, &m, "m"}, std::tuple{&dv, &v, "v"}}) {
      const std::vector<float> got = test::down(*dev, n);
      size_t differ = 0;
      for (size_t i = 0; i < n; ++i) differ += std::memcmp(&got[i], &(*host)[i], 4) != 0;
      std::printf("%s: %zu of %zu values differ from the host's\n", name, differ, n);
#ifndef __FMA__
      EXPECT_EQ(differ, 0u) << name;
#endif
      EXPECT_LT(rel_err(got, *host), 1e-6) << name;
    }
  }
  // The norm's sum of squares.
  const std::vector<float> x = randn(n, 9, 0.01f);
  double want = 0;
  for (float e : x) want += double(e) * e;
  auto dx = up(x);
  cuda::DeviceBuffer<double> partial(cuda::kSquareSumBlocks), sum(1);
  cuda::sum_squares_f64(dx.get(), int64_t(n), partial.get(), s);
  cuda::sum_f64(partial.get(), cuda::kSquareSumBlocks, sum.get(), s);
  EXPECT_NEAR(test::down(sum, 1)[0], want, 1e-12 * want);
}

double rel_diff(double a, double b) { return std::fabs(a - b) / std::fabs(b); }

// Three optimizer steps of two micro-batches (LoRA dropout 0.1, clipping to 1e-3, weight decay)
// with the adapters held on the device against the same steps with AdamW on the host, in the
// fp32 and bf16 modes: the losses, norms, the first step's gradient (bit for bit: both are the
// device's sums), the adapters and AdamW's moments after the steps.
TEST(CudaTrainHeld, StepsMatchTheHostOptimizer) {
  REQUIRE_GPU();
  test::TempDir dir;
  LlamaModel model(open_checkpoint(write_random_gqa_config(dir)));
  const LlamaConfig& c = model.config();
  const train::LoraAdapters init = random_lora(c, 0.1, 5);
  std::vector<std::vector<train::Batch>> steps;
  for (uint32_t s = 0; s < 3; ++s)
    steps.push_back({random_batch(c.vocab_size, 50 + 2 * s), random_batch(c.vocab_size, 51 + 2 * s)});
  train::TrainOptions opt;
  opt.adamw.lr = 1e-3;
  opt.adamw.weight_decay = 0.01;
  opt.max_grad_norm = 1e-3;
  opt.warmup_ratio = 0;
  opt.total_steps = 3;
  opt.dropout_seed = 3;
  for (train::ComputePrecision p : {train::ComputePrecision::Fp32, train::ComputePrecision::Bf16}) {
    SCOPED_TRACE(train::compute_precision_name(p));
    const auto host_engine = train::make_step_engine(parse_device("cuda"), model, p);
    const auto held_engine = train::make_step_engine(parse_device("cuda"), model, p);
    train::TrainOptions host_opt = opt;
    host_opt.optimizer_on_device = false;
    train::LoraTrainer host(model, init, host_opt, host_engine.get());
    train::LoraTrainer held(model, init, opt, held_engine.get());
    EXPECT_FALSE(host.optimizer_on_device());
    ASSERT_TRUE(held.optimizer_on_device());
    for (size_t s = 0; s < steps.size(); ++s) {
      train::LoraAdapters g_host, g_held;
      const train::StepStats a = host.step(steps[s], s == 0 ? &g_host : nullptr);
      const train::StepStats b = held.step(steps[s], s == 0 ? &g_held : nullptr);
      EXPECT_LT(rel_diff(b.loss, a.loss), 1e-6) << "step " << s + 1;
      EXPECT_LT(rel_diff(b.grad_norm, a.grad_norm), 1e-6) << "step " << s + 1;
      EXPECT_EQ(b.lr, a.lr);
      std::printf("step %zu: loss %.7f, gradient norm %.6g (clipped to %g)\n", s + 1, a.loss, a.grad_norm,
                  opt.max_grad_norm);
      if (s == 0) {
        std::vector<std::vector<float>> want;
        g_host.for_each([&](const std::string&, const std::vector<float>& v) { want.push_back(v); });
        size_t i = 0;
        g_held.for_each([&](const std::string& key, const std::vector<float>& v) { EXPECT_EQ(v, want[i++]) << key; });
      }
    }
    EXPECT_EQ(held.steps_done(), 3);
    EXPECT_EQ(held.optimizer_state().step, host.optimizer_state().step);
    auto compare = [&](const train::LoraAdapters& got, const train::LoraAdapters& want, const char* what) {
      std::vector<std::vector<float>> w;
      want.for_each([&](const std::string&, const std::vector<float>& v) { w.push_back(v); });
      size_t i = 0;
      double worst = 0;
      got.for_each([&](const std::string& key, const std::vector<float>& v) {
        const double e = rel_err(v, w[i++]);
        worst = std::max(worst, e);
        EXPECT_LT(e, 1e-5) << what << " " << key;
      });
      std::printf("%s: worst relative difference %.3g\n", what, worst);
    };
    compare(held.adapters(), host.adapters(), "adapters");
    compare(held.optimizer_state().m, host.optimizer_state().m, "first moments");
    compare(held.optimizer_state().v, host.optimizer_state().v, "second moments");
  }
}

// While a trainer holds the engine's adapters, other adapters are refused (the device's values
// would be overwritten); its own are evaluated from the device; once the trainer is gone the
// engine takes any. Adapters with IEC's scalars are not held: the trainer runs AdamW on the host.
TEST(CudaTrainHeld, HoldingRefusesOtherAdaptersAndIec) {
  REQUIRE_GPU();
  test::TempDir dir;
  LlamaModel model(open_checkpoint(write_random_gqa_config(dir)));
  const LlamaConfig& c = model.config();
  const train::LoraAdapters lora = random_lora(c, 0.0, 6), other = random_lora(c, 0.0, 7);
  const train::Batch batch = random_batch(c.vocab_size, 8);
  const auto engine = train::make_step_engine(parse_device("cuda"), model, train::ComputePrecision::Fp32);
  {
    train::TrainOptions opt;
    train::LoraTrainer trainer(model, lora, opt, engine.get());
    ASSERT_TRUE(trainer.optimizer_on_device());
    trainer.step(std::vector<train::Batch>{batch});
    EXPECT_NE(error_text([&] { engine->forward_loss(&other, batch); }).find("holds a trainer's adapters"),
              std::string::npos);
    // The trainer's adapters after the step, as the host sees them, give the device's loss.
    const train::LoraAdapters now = trainer.adapters();
    const double held_loss = engine->forward_loss(&trainer.adapters(), batch).loss_sum;
    const double want = train::forward_loss(model, &now, batch).loss_sum;
    EXPECT_NEAR(held_loss, want, 1e-5 * want);
  }
  const double want = train::forward_loss(model, &other, batch).loss_sum;
  EXPECT_NEAR(engine->forward_loss(&other, batch).loss_sum, want, 1e-5 * want);
  // IEC: not held.
  const train::LoraAdapters iec = random_lora(c, 0.0, 8, true);
  EXPECT_FALSE(engine->can_hold_adapters(iec));
  train::LoraTrainer trainer(model, iec, train::TrainOptions{}, engine.get());
  EXPECT_FALSE(trainer.optimizer_on_device());
  EXPECT_NO_THROW(trainer.step(std::vector<train::Batch>{batch}));
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// `lowbit finetune --device cuda` with the adapters held: a run stopped after 2 of 4 steps and
// resumed writes the same checkpoint files (adapters, AdamW's moments and step, the loss log) and
// the same adapter, byte for byte, as the uninterrupted run.
TEST(CudaTrainHeld, StoppedAndResumedRunWritesTheSameFiles) {
  REQUIRE_GPU();
  const std::string stories = test::models_dir() + "/stories260K/stories260K.bin";
  const std::string alpaca = test::data_dir() + "/alpaca/alpaca_5000.json";
  LOWBIT_REQUIRE_PATH(stories);
  LOWBIT_REQUIRE_PATH(alpaca);
  test::TempDir dir;
  train::FinetuneOptions o;
  o.model = stories;
  o.method = "qlora:r=8,alpha=16,dropout=0.05";
  o.data = alpaca;
  o.steps = 4;
  o.batch = 2;
  o.grad_accum = 2;
  o.lr = 1e-3;
  o.limit = 48;
  o.source_max = 64;
  o.target_max = 32;
  o.device = "cuda";
  o.save_every = 1;
  o.out = dir / "full";
  const train::FinetuneResult full = train::run_finetune(o);
  o.out = dir / "part";
  o.stop_after = 2;
  EXPECT_FALSE(train::run_finetune(o).finished);
  o.resume = true;
  o.stop_after = 0;
  const train::FinetuneResult part = train::run_finetune(o);
  EXPECT_TRUE(part.finished);
  for (const char* f :
       {"checkpoint/adapter_model.safetensors", "checkpoint/optimizer.safetensors", "checkpoint/trainer_state.json"}) {
    const std::string a = slurp(dir / "full" + "/" + f), b = slurp(dir / "part" + "/" + f);
    EXPECT_FALSE(a.empty()) << f;
    EXPECT_TRUE(a == b) << f << " differs between the uninterrupted and the resumed run";
  }
  std::vector<std::vector<float>> want;
  full.adapters.for_each([&](const std::string&, const std::vector<float>& v) { want.push_back(v); });
  size_t i = 0;
  part.adapters.for_each([&](const std::string& key, const std::vector<float>& v) { EXPECT_EQ(v, want[i++]) << key; });
  EXPECT_EQ(full.summary["log"], part.summary["log"]);
}

}  // namespace
}  // namespace lowbit
