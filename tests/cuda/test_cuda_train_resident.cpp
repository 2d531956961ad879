// The bf16 mode's resident base (train/base_residency.h) against the per-step expansion it
// replaces: the same bf16 weights, the same device bytes as predicted, and the same training,
// bit for bit (the expansion is the same kernel, only run once; the products read the same values
// at the same alignment): losses, gradient norms, gradients and adapters over two optimizer steps
// with the adapters held on the device (LoRA dropout on), a step with IEC's scalars (adapters
// uploaded, gradients downloaded), and `lowbit finetune --base-resident on` against off. Also
// what the option refuses. Skipped without a GPU.
//
// Tolerance: none. Every comparison is exact (EXPECT_EQ on doubles, memcmp on tensors).
#include "backend/cuda/cuda_util.h"
#include "formats/checkpoint.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "test_util.h"
#include "train/base_residency.h"
#include "train/compact_base.h"
#include "train/finetune.h"
#include "train/llama_backward_cuda.h"
#include "train/step_engine.h"
#include "train/trainer.h"
#include "cuda_test_util.h"
#include "cuda_train_models.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace lowbit {
namespace {

using train::BaseResidency;
using train::ComputePrecision;
using test::error_text;
using test::random_batch;
using test::random_lora;
using test::write_random_gqa_config;

using test::stories;

using test::load_base;

train::StepEngineOptions bf16(BaseResidency r) {
  train::StepEngineOptions o;
  o.compute = ComputePrecision::Bf16;
  o.base_resident = r;
  return o;
}

// The bases: the random model's bf16 weights (16-bit storage) and their NF4 + DQ, stories260K's
// fp32 weights (F32 linears, rounded by the cast) and their NF4.
std::vector<std::pair<std::string, std::string>> bases(const std::string& random_path) {
  std::vector<std::pair<std::string, std::string>> b = {{random_path, "nf4:dq=1"}, {random_path, ""}};
  if (std::filesystem::exists(stories())) {
    b.emplace_back(stories(), "");
    b.emplace_back(stories(), "nf4:dq=1");
  }
  return b;
}

std::vector<std::vector<float>> tensors(const train::LoraAdapters& a) {
  std::vector<std::vector<float>> out;
  a.for_each([&](const std::string&, const std::vector<float>& v) { out.push_back(v); });
  return out;
}

void expect_same_tensors(const train::LoraAdapters& got, const train::LoraAdapters& want, const char* what) {
  const std::vector<std::vector<float>> w = tensors(want);
  size_t i = 0;
  got.for_each([&](const std::string& key, const std::vector<float>& v) {
    ASSERT_LT(i, w.size());
    ASSERT_EQ(v.size(), w[i].size()) << what << " " << key;
    EXPECT_EQ(std::memcmp(v.data(), w[i].data(), v.size() * 4), 0) << what << " " << key;
    ++i;
  });
  EXPECT_EQ(i, w.size()) << what;
}

// The resident engine holds every block's bf16 weights, equal bit for bit to what the per-step
// engine expands, and the bytes gpu_model_bytes() predicts for a resident base: no compact
// linears, no scratch.
TEST(CudaTrainResident, SameWeightsAndPredictedBytes) {
  REQUIRE_GPU();
  test::TempDir dir;
  const std::string path = write_random_gqa_config(dir);
  for (const auto& [base_path, spec] : bases(path)) {
    SCOPED_TRACE(base_path + " " + spec);
    const std::unique_ptr<LlamaModel> model = load_base(base_path, spec);
    const LlamaConfig& c = model->config();
    train::CudaLlamaBackward per_step(*model, 0, bf16(BaseResidency::Off));
    EXPECT_FALSE(per_step.base_resident());
    const size_t before = cuda::device_bytes_in_use();
    train::CudaLlamaBackward resident(*model, 0, bf16(BaseResidency::On));
    ASSERT_TRUE(resident.base_resident());
    const train::GpuModelBytes held = resident.model_bytes();
    EXPECT_EQ(cuda::device_bytes_in_use() - before, size_t(held.total())) << "the model's buffers, no others";
    EXPECT_EQ(held.linears, 0);
    EXPECT_EQ(held.scratch, 0);
    EXPECT_EQ(held.resident, 2 * c.num_hidden_layers * train::resident_block_elements(c));
    EXPECT_EQ(held.total(), train::make_compact_base(*model).bytes(c, ComputePrecision::Bf16, true).total());
    ASSERT_TRUE(resident.uniform_layout().has_value());
    EXPECT_EQ(held.total(),
              train::gpu_model_bytes(c, *resident.uniform_layout(), ComputePrecision::Bf16, true).total());
    EXPECT_EQ(held.head, per_step.model_bytes().head);
    EXPECT_EQ(held.norms, per_step.model_bytes().norms);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      for (LinearKind k : kAllLinears) {
        const std::vector<float> want = per_step.download_weight(l, k), got = resident.download_weight(l, k);
        ASSERT_EQ(got.size(), want.size());
        EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0) << "layer " << l << " " << linear_name(k);
      }
  }
}

// Two optimizer steps of two micro-batches (LoRA dropout 0.1, adapters and AdamW on the device)
// on engines with and without a resident base: the same losses, gradient norms, first-step
// gradient, adapters and moments, bit for bit. The fp32 mode is untouched: auto there keeps the
// per-linear expansion.
TEST(CudaTrainResident, TwoStepsBitIdentical) {
  REQUIRE_GPU();
  test::TempDir dir;
  const std::string path = write_random_gqa_config(dir);
  for (const auto& [base_path, spec] : bases(path)) {
    SCOPED_TRACE(base_path + " " + spec);
    const std::unique_ptr<LlamaModel> model = load_base(base_path, spec);
    const LlamaConfig& c = model->config();
    const train::LoraAdapters init = random_lora(c, 0.1, 21);
    std::vector<std::vector<train::Batch>> steps;
    for (uint32_t s = 0; s < 2; ++s)
      steps.push_back({random_batch(c.vocab_size, 70 + 2 * s), random_batch(c.vocab_size, 71 + 2 * s)});
    train::TrainOptions opt;
    opt.adamw.lr = 1e-3;
    opt.adamw.weight_decay = 0.01;
    opt.max_grad_norm = 1e-3;
    opt.warmup_ratio = 0;
    opt.total_steps = 2;
    opt.dropout_seed = 9;
    const auto off = train::make_step_engine(parse_device("cuda"), *model, bf16(BaseResidency::Off));
    const auto on = train::make_step_engine(parse_device("cuda"), *model, bf16(BaseResidency::On));
    EXPECT_FALSE(off->base_resident());
    ASSERT_TRUE(on->base_resident());
    train::LoraTrainer a(*model, init, opt, off.get()), b(*model, init, opt, on.get());
    ASSERT_TRUE(a.optimizer_on_device());
    ASSERT_TRUE(b.optimizer_on_device());
    for (size_t s = 0; s < steps.size(); ++s) {
      train::LoraAdapters ga, gb;
      const train::StepStats x = a.step(steps[s], s == 0 ? &ga : nullptr);
      const train::StepStats y = b.step(steps[s], s == 0 ? &gb : nullptr);
      EXPECT_EQ(y.loss, x.loss) << "step " << s + 1;
      EXPECT_EQ(y.grad_norm, x.grad_norm) << "step " << s + 1;
      std::printf("step %zu: loss %.9f, gradient norm %.9g (both)\n", s + 1, x.loss, x.grad_norm);
      if (s == 0) expect_same_tensors(gb, ga, "first step's gradient");
    }
    expect_same_tensors(b.adapters(), a.adapters(), "adapters");
    expect_same_tensors(b.optimizer_state().m, a.optimizer_state().m, "first moments");
    expect_same_tensors(b.optimizer_state().v, a.optimizer_state().v, "second moments");
    // The loss alone (forward_loss) on the trained adapters.
    EXPECT_EQ(on->forward_loss(&b.adapters(), steps[0][0]).loss_sum,
              off->forward_loss(&a.adapters(), steps[0][0]).loss_sum);
  }
  // fp32: auto keeps the compact base (make_step_engine resolves it to off).
  const std::unique_ptr<LlamaModel> model = load_base(path, "nf4:dq=1");
  train::StepEngineOptions o;
  o.compute = ComputePrecision::Fp32;
  o.base_resident = BaseResidency::Auto;
  EXPECT_FALSE(train::make_step_engine(parse_device("cuda"), *model, o)->base_resident());
}

// Adapters with IEC's scalars (uploaded per call, their gradients downloaded, AdamW on the
// host), gradients of three micro-batches summed on the device: the same with either base.
TEST(CudaTrainResident, IecStepBitIdentical) {
  REQUIRE_GPU();
  test::TempDir dir;
  const std::unique_ptr<LlamaModel> model = load_base(write_random_gqa_config(dir), "nf4:dq=1");
  const LlamaConfig& c = model->config();
  const train::LoraAdapters lora = random_lora(c, 0.05, 22, true);
  const train::Batch micro[3] = {random_batch(c.vocab_size, 81), random_batch(c.vocab_size, 82),
                                 random_batch(c.vocab_size, 83)};
  train::CudaLlamaBackward off(*model, 0, bf16(BaseResidency::Off)), on(*model, 0, bf16(BaseResidency::On));
  ASSERT_TRUE(on.base_resident());
  train::LoraAdapters g_off = lora.zeros_like(), g_on = lora.zeros_like();
  train::StepOptions so;
  double loss_off = 0, loss_on = 0;
  for (int i = 0; i < 3; ++i) {
    so.dropout_seed = uint64_t(i);
    so.adapters_unchanged = i > 0;
    so.more_micro_batches = i < 2;
    loss_off += off.forward_backward(&lora, micro[i], so, &g_off, nullptr).loss_sum;
    loss_on += on.forward_backward(&lora, micro[i], so, &g_on, nullptr).loss_sum;
  }
  EXPECT_EQ(loss_on, loss_off);
  expect_same_tensors(g_on, g_off, "gradients");
}

// What the engine refuses: a resident base in the fp32 mode (the option names itself).
TEST(CudaTrainResident, Fp32RefusesOn) {
  REQUIRE_GPU();
  test::TempDir dir;
  LlamaModel model(open_checkpoint(write_random_gqa_config(dir)));
  train::StepEngineOptions o;
  o.compute = ComputePrecision::Fp32;
  o.base_resident = BaseResidency::On;
  EXPECT_NE(error_text([&] { train::CudaLlamaBackward gpu(model, 0, o); }).find("--base-resident on with --compute fp32"),
            std::string::npos);
  EXPECT_NE(error_text([&] { train::make_step_engine(parse_device("cuda"), model, o); })
                .find("--base-resident on with --compute fp32 on device cuda"),
            std::string::npos);
}

// A step hook's weights (DB-LLM's student, CudaStepHooks::weight) are refused on a resident
// engine, which holds no scratch for them: the resident base is never read in a hook's place.
// Hooks without weights (a logits loss alone) run on it.
TEST(CudaTrainResident, WeightHooksRefuseResident) {
  REQUIRE_GPU();
  test::TempDir dir;
  LlamaModel model(open_checkpoint(write_random_gqa_config(dir)));
  train::CudaLlamaBackward gpu(model, 0, bf16(BaseResidency::On));
  ASSERT_TRUE(gpu.base_resident());
  const train::Batch b = random_batch(model.config().vocab_size, 3, 1, 8);
  train::CudaStepHooks hooks;
  cuda::DeviceBuffer<float> w(size_t(model.config().intermediate_size * model.config().hidden_size));
  hooks.weight = [&](int64_t, LinearKind) -> const float* { return w.get(); };
  EXPECT_NE(error_text([&] { gpu.forward_backward_hooked(b, hooks); }).find("--base-resident off"), std::string::npos);
  EXPECT_NE(error_text([&] { gpu.forward_hidden(b, &hooks); }).find("resident bf16 base"), std::string::npos);
  train::CudaStepHooks loss_only;
  loss_only.logits_loss = [](int64_t, int64_t, int64_t, float*) { return 0.0; };
  EXPECT_NO_THROW(gpu.forward_backward_hooked(b, loss_only));
  EXPECT_NO_THROW(gpu.forward_hidden(b));
}

// `lowbit finetune --device cuda --base-resident on` against off (QLoRA on stories260K, as
// test_cuda_train_precision.cpp's FinetuneDefaultsToBf16 runs it): the same loss log and
// adapters bit for bit; the summary records the choice, which is not part of the run's
// identity; the memory record matches its prediction.
TEST(CudaTrainResident, FinetuneOnMatchesOff) {
  REQUIRE_GPU();
  const std::string alpaca = test::data_dir() + "/alpaca/alpaca_5000.json";
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(alpaca);
  train::FinetuneOptions o = test::small_alpaca_finetune(stories(), alpaca, "qlora:r=8,alpha=16,dropout=0.05", 2, "cuda");
  o.base_resident = "off";
  const train::FinetuneResult off = train::run_finetune(o);
  o.base_resident = "on";
  const train::FinetuneResult on = train::run_finetune(o);
  o.base_resident = "auto";  // stories260K's base fits any GPU
  const train::FinetuneResult automatic = train::run_finetune(o);
  EXPECT_EQ(off.summary["base_resident"], false);
  EXPECT_EQ(on.summary["base_resident"], true);
  EXPECT_EQ(automatic.summary["base_resident"], true);
  EXPECT_EQ(on.summary["run"], off.summary["run"]) << "not part of the run's identity";
  EXPECT_EQ(on.summary["log"], off.summary["log"]);
  EXPECT_EQ(automatic.summary["log"], off.summary["log"]);
  EXPECT_EQ(on.summary["eval_loss"], off.summary["eval_loss"]);
  expect_same_tensors(on.adapters, off.adapters, "adapters");
  for (const train::FinetuneResult* r : {&off, &on}) {
    const nlohmann::json& m = r->summary["gpu_memory"];
    EXPECT_EQ(m["model_bytes"], m["model_bytes_predicted"]);
  }
  EXPECT_EQ(on.summary["gpu_memory"]["model_bytes"]["linears"], 0);
  EXPECT_GT(on.summary["gpu_memory"]["model_bytes"]["resident"].get<int64_t>(), 0);
  EXPECT_EQ(off.summary["gpu_memory"]["model_bytes"]["resident"], 0);
}

}  // namespace
}  // namespace lowbit
