// The bf16 training step's fused elementwise work (llama_backward_cuda.h, "Fusion") against the
// one-launch-at-a-time path (LOWBIT_TRAIN_FUSE=0): each fused kernel (RMSNorm, SwiGLU and
// SwiGLU's backward, each with the bf16 rounding of its output, and the cross-entropy writing its
// gradient as bf16 only, against the unfused kernel followed by to_bf16; RMSNorm's backward with
// the residual add, against it followed by add_f32), and whole training steps with and without
// fusion: the same values bit for bit, since the fused kernels compute the same fp32 values with
// the same code and round them as to_bf16 does, and reusing xb skips only casts of unchanged
// inputs. Skipped without a GPU.
//
// Tolerance: none. Every comparison is exact.
#include "backend/cuda/mixed_gemm.cuh"
#include "backend/cuda/ops_backward.cuh"
#include "formats/checkpoint.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "test_util.h"
#include "train/llama_backward_cuda.h"
#include "train/step_engine.h"
#include "train/trainer.h"
#include "cuda_test_util.h"
#include "cuda_train_models.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace lowbit {
namespace {

using train::BaseResidency;
using train::ComputePrecision;
using test::ctx;
using test::down;
using test::random_batch;
using test::random_lora;
using test::randn;
using test::up;
using test::write_random_gqa_config;

template <typename T>
void expect_bits(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t differ = 0;
  for (size_t i = 0; i < got.size(); ++i) differ += std::memcmp(&got[i], &want[i], sizeof(T)) != 0;
  EXPECT_EQ(differ, 0u) << what << ": of " << got.size() << " values";
}

// Each fused kernel against its unfused twin and to_bf16 (or add_f32), on sizes past a block of 256 threads
// and off any multiple of it (RMSNorm: 37 rows of 320 and of 4099; SwiGLU: 100,003 values with
// gates from -12 to 12, where the sigmoid saturates).
TEST(CudaTrainFused, KernelsMatchTheUnfusedOnes) {
  REQUIRE_GPU();
  const cudaStream_t s = ctx().stream();
  for (int64_t dim : {int64_t(320), int64_t(4099)}) {
    SCOPED_TRACE("dim " + std::to_string(dim));
    const int64_t rows = 37, n = rows * dim;
    auto x = up(randn(size_t(n), 1, 2.0f)), w = up(randn(size_t(dim), 2, 0.5f));
    cuda::DeviceBuffer<float> y0{size_t(n)}, y1{size_t(n)};
    cuda::DeviceBuffer<uint16_t> b0{size_t(n)}, b1{size_t(n)};
    cuda::rmsnorm_f32(x.get(), w.get(), y0.get(), rows, dim, 1e-5f, s);
    cuda::to_bf16(y0.get(), b0.get(), n, s);
    cuda::rmsnorm_f32_bf16(x.get(), w.get(), y1.get(), b1.get(), rows, dim, 1e-5f, s);
    expect_bits(down(y1, size_t(n)), down(y0, size_t(n)), "rmsnorm y");
    expect_bits(down(b1, size_t(n)), down(b0, size_t(n)), "rmsnorm bf16(y)");
  }
  // RMSNorm's backward with the residual add: into a stream gradient dh, against the gradient
  // into a buffer then add_f32.
  for (int64_t dim : {int64_t(320), int64_t(4099)}) {
    SCOPED_TRACE("backward, dim " + std::to_string(dim));
    const int64_t rows = 37, n = rows * dim;
    auto x = up(randn(size_t(n), 6, 2.0f)), w = up(randn(size_t(dim), 7, 0.5f)), dy = up(randn(size_t(n), 8));
    const std::vector<float> dh = randn(size_t(n), 9);
    auto dh0 = up(dh), dh1 = up(dh);
    cuda::DeviceBuffer<float> dn{size_t(n)};
    cuda::rmsnorm_backward_f32(x.get(), w.get(), dy.get(), dn.get(), rows, dim, 1e-5f, s);
    cuda::add_f32(dh0.get(), dn.get(), n, s);
    cuda::rmsnorm_backward_add_f32(x.get(), w.get(), dy.get(), dh1.get(), rows, dim, 1e-5f, s);
    expect_bits(down(dh1, size_t(n)), down(dh0, size_t(n)), "rmsnorm backward + add");
  }
  // The cross-entropy's gradient as bf16 only, against the fp32 gradient then to_bf16: rows with a
  // target (the first and the last of V among them) and an ignored row; the same losses.
  {
    const int64_t rows = 5, V = 1000;
    const std::vector<int32_t> tg = {0, 999, -100, 17, 512};
    auto logits = up(randn(size_t(rows * V), 10, 3.0f));
    auto targets = up(tg);
    cuda::DeviceBuffer<float> d32{size_t(rows * V)};
    cuda::DeviceBuffer<uint16_t> b0{size_t(rows * V)}, b1{size_t(rows * V)};
    cuda::DeviceBuffer<double> l0{size_t(rows)}, l1{size_t(rows)};
    cuda::cross_entropy_backward_f32(logits.get(), targets.get(), d32.get(), l0.get(), rows, V, 0.01f, s);
    cuda::to_bf16(d32.get(), b0.get(), rows * V, s);
    cuda::cross_entropy_backward_bf16(logits.get(), targets.get(), b1.get(), l1.get(), rows, V, 0.01f, s);
    expect_bits(down(b1, size_t(rows * V)), down(b0, size_t(rows * V)), "cross-entropy bf16(dlogits)");
    expect_bits(down(l1, size_t(rows)), down(l0, size_t(rows)), "cross-entropy losses");
  }
  const int64_t n = 100003;
  std::vector<float> g = randn(size_t(n), 3, 4.0f);
  for (size_t i = 0; i < 16; ++i) g[i] = -12.0f + 1.6f * float(i);
  auto gate = up(g), upv = up(randn(size_t(n), 4)), dout = up(randn(size_t(n), 5, 0.01f));
  cuda::DeviceBuffer<float> a0{size_t(n)}, a1{size_t(n)}, dg0{size_t(n)}, du0{size_t(n)}, dg1{size_t(n)},
      du1{size_t(n)};
  cuda::DeviceBuffer<uint16_t> ab0{size_t(n)}, ab1{size_t(n)}, dgb0{size_t(n)}, dub0{size_t(n)}, dgb1{size_t(n)},
      dub1{size_t(n)};
  cuda::swiglu_f32(gate.get(), upv.get(), a0.get(), n, s);
  cuda::to_bf16(a0.get(), ab0.get(), n, s);
  cuda::swiglu_f32_bf16(gate.get(), upv.get(), a1.get(), ab1.get(), n, s);
  expect_bits(down(a1, size_t(n)), down(a0, size_t(n)), "swiglu out");
  expect_bits(down(ab1, size_t(n)), down(ab0, size_t(n)), "swiglu bf16(out)");
  cuda::swiglu_backward_f32(gate.get(), upv.get(), dout.get(), dg0.get(), du0.get(), n, s);
  cuda::to_bf16(dg0.get(), dgb0.get(), n, s);
  cuda::to_bf16(du0.get(), dub0.get(), n, s);
  cuda::swiglu_backward_f32_bf16(gate.get(), upv.get(), dout.get(), dg1.get(), du1.get(), dgb1.get(), dub1.get(), n,
                                 s);
  expect_bits(down(dg1, size_t(n)), down(dg0, size_t(n)), "swiglu dgate");
  expect_bits(down(du1, size_t(n)), down(du0, size_t(n)), "swiglu dup");
  expect_bits(down(dgb1, size_t(n)), down(dgb0, size_t(n)), "swiglu bf16(dgate)");
  expect_bits(down(dub1, size_t(n)), down(dub0, size_t(n)), "swiglu bf16(dup)");
}

std::unique_ptr<LlamaModel> nf4_model(const std::string& path) {
  Checkpoint source = open_checkpoint(path);
  LlamaModel work(source);
  auto method = make_method("nf4:dq=1");
  QuantizedModel qm = quantize_model(work, *method, nullptr, {});
  return std::make_unique<LlamaModel>(quantized_checkpoint_in_memory(source, std::move(qm), {{"path", path}}));
}

// Builds an engine with LOWBIT_TRAIN_FUSE set to `fuse` ("0" or unset) for its life.
std::unique_ptr<train::StepEngine> engine(const LlamaModel& m, bool fuse, BaseResidency r) {
  if (fuse) {
    unsetenv("LOWBIT_TRAIN_FUSE");
  } else {
    setenv("LOWBIT_TRAIN_FUSE", "0", 1);
  }
  train::StepEngineOptions o;
  o.compute = ComputePrecision::Bf16;
  o.base_resident = r;
  auto e = train::make_step_engine(parse_device("cuda"), m, o);
  unsetenv("LOWBIT_TRAIN_FUSE");
  return e;
}

std::vector<std::vector<float>> tensors(const train::LoraAdapters& a) {
  std::vector<std::vector<float>> out;
  a.for_each([&](const std::string&, const std::vector<float>& v) { out.push_back(v); });
  return out;
}

// Two optimizer steps of two micro-batches with the adapters held on the device, fused against
// unfused, with LoRA dropout 0.1 (a dropped-out input takes xb, so the next product casts again)
// and without, on the random model's bf16 base and its NF4 base kept resident: the same losses,
// norms, first gradient and adapters bit for bit; then a step with IEC's scalars (adapters
// uploaded, gradients downloaded) and a loss alone.
TEST(CudaTrainFused, StepsMatchTheUnfusedStep) {
  REQUIRE_GPU();
  test::TempDir dir;
  const std::string path = write_random_gqa_config(dir);
  const std::unique_ptr<LlamaModel> bf16_base = std::make_unique<LlamaModel>(open_checkpoint(path));
  const std::unique_ptr<LlamaModel> nf4_base = nf4_model(path);
  struct Case {
    const char* name;
    const LlamaModel* model;
    double dropout;
    BaseResidency resident;
  };
  for (const Case& cs : {Case{"bf16 base, dropout 0.1", bf16_base.get(), 0.1, BaseResidency::Off},
                         Case{"NF4 base resident, no dropout", nf4_base.get(), 0.0, BaseResidency::On}}) {
    SCOPED_TRACE(cs.name);
    const LlamaConfig& c = cs.model->config();
    const train::LoraAdapters init = random_lora(c, cs.dropout, 31);
    std::vector<std::vector<train::Batch>> steps;
    for (uint32_t s = 0; s < 2; ++s)
      steps.push_back({random_batch(c.vocab_size, 90 + 2 * s), random_batch(c.vocab_size, 91 + 2 * s)});
    train::TrainOptions opt;
    opt.adamw.lr = 1e-3;
    opt.max_grad_norm = 1.0;
    opt.warmup_ratio = 0;
    opt.total_steps = 2;
    opt.dropout_seed = 4;
    const auto unfused = engine(*cs.model, false, cs.resident), fused = engine(*cs.model, true, cs.resident);
    train::LoraTrainer a(*cs.model, init, opt, unfused.get()), b(*cs.model, init, opt, fused.get());
    for (size_t s = 0; s < steps.size(); ++s) {
      train::LoraAdapters ga, gb;
      const train::StepStats x = a.step(steps[s], s == 0 ? &ga : nullptr);
      const train::StepStats y = b.step(steps[s], s == 0 ? &gb : nullptr);
      EXPECT_EQ(y.loss, x.loss) << "step " << s + 1;
      EXPECT_EQ(y.grad_norm, x.grad_norm) << "step " << s + 1;
      if (s == 0) {
        const auto want = tensors(ga), got = tensors(gb);
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < got.size(); ++i) expect_bits(got[i], want[i], "first step's gradient");
      }
    }
    const auto want = tensors(a.adapters()), got = tensors(b.adapters());
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) expect_bits(got[i], want[i], "adapters");
  }
  // IEC's scalars (their group means read the fp32 input; AdamW on the host) and dropout 0.05.
  const LlamaConfig& c = nf4_base->config();
  const train::LoraAdapters iec = random_lora(c, 0.05, 32, true);
  const train::Batch batch = random_batch(c.vocab_size, 95);
  const auto unfused = engine(*nf4_base, false, BaseResidency::Off), fused = engine(*nf4_base, true, BaseResidency::Off);
  train::StepOptions so;
  so.dropout_seed = 7;
  train::LoraAdapters g0 = iec.zeros_like(), g1 = iec.zeros_like();
  EXPECT_EQ(fused->forward_backward(&iec, batch, so, &g1, nullptr).loss_sum,
            unfused->forward_backward(&iec, batch, so, &g0, nullptr).loss_sum);
  const auto want = tensors(g0), got = tensors(g1);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) expect_bits(got[i], want[i], "IEC gradients");
  EXPECT_EQ(fused->forward_loss(&iec, batch).loss_sum, unfused->forward_loss(&iec, batch).loss_sum);
}

}  // namespace
}  // namespace lowbit
