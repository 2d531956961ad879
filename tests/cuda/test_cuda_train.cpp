// LoRA training on the GPU (train/llama_backward_cuda.h) against its references: the CPU's
// forward_backward on stories260K (GQA, tied head; fp32 and NF4 bases) and on a random-weight GQA
// model (also with IR-QLoRA's IEC scalars), PEFT's and IR-QLoRA's autograd gradients and torch's
// AdamW steps on the tiny model of tests/fixtures/train, and `lowbit finetune`'s loss curve
// (QLoRA and IR-QLoRA on stories260K) on the CPU. Skipped without a GPU.
//
// Tolerances. Both devices run fp32 throughout (the GPU's base weights are the CPU's fp32 values,
// cuBLAS SGEMM without TF32), with the same LoRA dropout masks, so a step differs only by
// summation order: cuBLAS against OpenBLAS, block reductions against OpenMP loops, expf against
// the CPU forward's exp approximation. Such differences stay near 1e-6 relative through a few
// blocks (the CPU against autograd, the same kind of comparison, is ~1e-6). The bars:
//   loss               1e-5 relative,
//   gradients          1e-4 relative error of the whole tensor (max |gpu - cpu| / max |cpu|), the
//                      project's bar for fp32 whole-model gradients (test_train_parity.cpp);
//                      max-normalized so that tensors with many near-zero entries are fair;
//                      IEC's scalars 1e-3: each is one sum over every token and feature of terms
//                      of both signs that largely cancel, so the summation-order noise of its
//                      terms shows ~100x larger relative to it (observed between two summation
//                      orders: up to 2.6e-5 on the random model, where A's and B's stay under
//                      5e-6),
//   a loss curve       1e-5 at the first step (identical adapters and batches), 1e-3 after
//                      (the project's bar for a loss curve: AdamW's first updates are nearly
//                      sign(g) * lr, so fp32 noise in a near-zero gradient entry can move it by
//                      up to ~lr on one side only).
#include "backend/cuda/ops_backward.cuh"
#include "backend/ops_backward.h"
#include "core/error.h"
#include "formats/checkpoint.h"
#include "formats/safetensors.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "test_util.h"
#include "train/finetune.h"
#include "train/llama_backward.h"
#include "train/llama_backward_cuda.h"
#include "train/compact_base.h"
#include "train/step_engine.h"
#include "train/trainer.h"
#include "train_fixture.h"
#include "cuda_test_util.h"
#include "cuda_train_models.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <functional>
#include <random>

namespace lowbit {
namespace {

using test::ctx;
using test::down;
using test::randn;
using test::expect_device_sum_equals_host_sum;
using test::random_batch;
using test::random_lora;
using test::rel_err;
using test::up;
using test::write_random_gqa_config;

constexpr double kLossTol = 1e-5;
constexpr double kGradTol = 1e-4;
constexpr double kScalarTol = 1e-3;
// The bar of a gradient tensor: IEC's scalars are the one-element ones.
double grad_tol(const std::vector<float>& v) { return v.size() == 1 ? kScalarTol : kGradTol; }

using test::stories;
std::string tiny() { return test::train_fixtures_dir() + "/tiny-llama3"; }

// Each fp32 training kernel against its CPU twin (backend/ops.h, ops_backward.h), on shapes past
// the kernels' 256-thread blocks, so that a failing training test points at its op. The bars: the
// same arithmetic in another order (1e-6, 1e-5 where a product or softmax sums over a row).
TEST(CudaTrainOps, MatchTheirCpuTwins) {
  REQUIRE_GPU();
  const cudaStream_t s = ctx().stream();
  {  // rmsnorm and its backward: rows of 300 values.
    const int64_t rows = 9, dim = 300;
    const auto x = randn(size_t(rows * dim), 1, 2.0f), w = randn(size_t(dim), 2), dy = randn(size_t(rows * dim), 3);
    std::vector<float> y(x.size()), dx(x.size());
    ops::rmsnorm(x.data(), w.data(), y.data(), rows, dim, 1e-5f);
    ops::rmsnorm_backward(x.data(), w.data(), dy.data(), dx.data(), nullptr, rows, dim, 1e-5f);
    auto gx = up(x), gw = up(w), gdy = up(dy);
    cuda::DeviceBuffer<float> gy(x.size()), gdx(x.size());
    cuda::rmsnorm_f32(gx.get(), gw.get(), gy.get(), rows, dim, 1e-5f, s);
    cuda::rmsnorm_backward_f32(gx.get(), gw.get(), gdy.get(), gdx.get(), rows, dim, 1e-5f, s);
    EXPECT_LT(rel_err(down(gy, y.size()), y), 1e-6);
    EXPECT_LT(rel_err(down(gdx, dx.size()), dx), 1e-6);
  }
  {  // linear and its backward (dx accumulated, dw added into).
    const int64_t rows = 37, in = 300, out = 70;
    const auto x = randn(size_t(rows * in), 4), w = randn(size_t(out * in), 5), dy = randn(size_t(rows * out), 6);
    const auto dx0 = randn(x.size(), 7), dw0 = randn(w.size(), 8);
    std::vector<float> y(size_t(rows * out)), dx = dx0, dw = dw0;
    ops::linear(x.data(), w.data(), y.data(), rows, in, out);
    ops::linear_backward(x.data(), w.data(), dy.data(), dx.data(), dw.data(), rows, in, out, true);
    auto gx = up(x), gw = up(w), gdy = up(dy), gdx = up(dx0), gdw = up(dw0);
    cuda::DeviceBuffer<float> gy(y.size());
    cuda::linear_f32(ctx(), gx.get(), gw.get(), gy.get(), rows, in, out);
    cuda::linear_backward_f32(ctx(), gx.get(), gw.get(), gdy.get(), gdx.get(), gdw.get(), rows, in, out, true);
    EXPECT_LT(rel_err(down(gy, y.size()), y), 1e-5);
    EXPECT_LT(rel_err(down(gdx, dx.size()), dx), 1e-5);
    EXPECT_LT(rel_err(down(gdw, dw.size()), dw), 1e-5);
  }
  {  // RoPE and its inverse on 2 sequences of 70 rows, 6 heads of 24 in rows of stride 150.
    const int64_t B = 2, T = 70, heads = 6, half = 12, ld = 150;
    RopeTable rt;
    rt.n_pos = T;
    rt.half = half;
    std::mt19937 g(9);
    std::uniform_real_distribution<float> ang(-3.0f, 3.0f);
    for (int64_t i = 0; i < T * half; ++i) {
      const float a = ang(g);
      rt.cos.push_back(std::cos(a));
      rt.sin.push_back(std::sin(a));
    }
    const auto x = randn(size_t(B * T * ld), 10);
    for (bool inverse : {false, true}) {
      std::vector<float> want = x;
      for (int64_t b = 0; b < B; ++b) {
        if (inverse)
          ops::rope_backward(want.data() + b * T * ld, T, heads, ld, rt, 0);
        else
          ops::rope(want.data() + b * T * ld, T, heads, ld, rt, 0);
      }
      auto gx = up(x), gc = up(rt.cos), gs = up(rt.sin);
      cuda::rope_f32(gx.get(), B * T, T, heads, half, ld, gc.get(), gs.get(), inverse, s);
      EXPECT_LT(rel_err(down(gx, x.size()), want), 1e-6) << inverse;
    }
  }
  {  // Causal GQA attention and its backward: 6 query heads on 2 key/value heads of 24, 70 rows.
    const int64_t T = 70, nh = 6, nkv = 2, hd = 24;
    const auto q = randn(size_t(T * nh * hd), 11), k = randn(size_t(T * nkv * hd), 12),
               v = randn(size_t(T * nkv * hd), 13), dout = randn(size_t(T * nh * hd), 14);
    std::vector<float> out(q.size()), dq(q.size()), dk(k.size()), dv(v.size());
    ops::attention(q.data(), k.data(), v.data(), out.data(), T, nh, nkv, hd);
    ops::attention_backward(q.data(), k.data(), v.data(), dout.data(), dq.data(), dk.data(), dv.data(), T, nh, nkv, hd);
    auto gq = up(q), gk = up(k), gv = up(v), gdo = up(dout);
    cuda::DeviceBuffer<float> gout(q.size()), gdq(q.size()), gdk(k.size()), gdv(v.size()), p(size_t(nh * T * T)),
        dp(size_t(nh * T * T));
    cuda::attention_f32(gq.get(), gk.get(), gv.get(), gout.get(), p.get(), T, nh, nkv, hd, s);
    cuda::attention_backward_f32(gq.get(), gk.get(), gv.get(), gdo.get(), gdq.get(), gdk.get(), gdv.get(), p.get(),
                                 dp.get(), T, nh, nkv, hd, s);
    EXPECT_LT(rel_err(down(gout, out.size()), out), 1e-5);
    EXPECT_LT(rel_err(down(gdq, dq.size()), dq), 1e-5);
    EXPECT_LT(rel_err(down(gdk, dk.size()), dk), 1e-5);
    EXPECT_LT(rel_err(down(gdv, dv.size()), dv), 1e-5);
  }
  {  // SwiGLU and its backward.
    const int64_t n = 1000;
    const auto gate = randn(size_t(n), 15, 3.0f), upv = randn(size_t(n), 16), dout = randn(size_t(n), 17);
    std::vector<float> out(static_cast<size_t>(n)), dg(out.size()), du(out.size());
    ops::swiglu(gate.data(), upv.data(), out.data(), n);
    ops::swiglu_backward(gate.data(), upv.data(), dout.data(), dg.data(), du.data(), n);
    auto gg = up(gate), gu = up(upv), gd = up(dout);
    cuda::DeviceBuffer<float> go(out.size()), gdg(out.size()), gdu(out.size());
    cuda::swiglu_f32(gg.get(), gu.get(), go.get(), n, s);
    cuda::swiglu_backward_f32(gg.get(), gu.get(), gd.get(), gdg.get(), gdu.get(), n, s);
    EXPECT_LT(rel_err(down(go, size_t(n)), out), 1e-6);
    EXPECT_LT(rel_err(down(gdg, size_t(n)), dg), 1e-6);
    EXPECT_LT(rel_err(down(gdu, size_t(n)), du), 1e-6);
  }
  {  // Cross-entropy rows of 1000 logits, two of them without a target; dlogits in place.
    const int64_t rows = 6, V = 1000;
    const auto logits = randn(size_t(rows * V), 18, 4.0f);
    const std::vector<int32_t> targets = {3, -100, 999, 0, -1, 517};
    std::vector<float> d(logits.size());
    const double want = ops::cross_entropy_backward(logits.data(), targets.data(), d.data(), rows, V, 0.25f);
    auto gl = up(logits);
    auto gt = up(targets);
    cuda::DeviceBuffer<double> loss(static_cast<size_t>(rows));
    cuda::cross_entropy_backward_f32(gl.get(), gt.get(), gl.get(), loss.get(), rows, V, 0.25f, s);
    double got = 0;
    for (double x : down(loss, size_t(rows))) got += x;
    EXPECT_NEAR(got, want, 1e-9 * want);
    EXPECT_LT(rel_err(down(gl, d.size()), d), 1e-6);
  }
}

// One forward_backward on both devices: loss, target count and every adapter gradient; then the
// loss alone, and the GPU's gradients adding into the buffer they are given.
void expect_gpu_matches_cpu(const LlamaModel& model, const train::LoraAdapters& lora, const train::Batch& batch) {
  train::StepOptions so;
  so.dropout_seed = 0x5eed;
  so.loss_scale = 0.5 / double(batch.num_targets());
  train::LoraAdapters g_cpu = lora.zeros_like(), g_gpu = lora.zeros_like();
  const train::StepResult cpu = train::forward_backward(model, &lora, batch, so, &g_cpu, nullptr);
  train::CudaLlamaBackward gpu(model, 0);
  const train::StepResult got = gpu.forward_backward(&lora, batch, so, &g_gpu, nullptr);
  EXPECT_EQ(got.num_targets, cpu.num_targets);
  EXPECT_NEAR(got.loss_sum, cpu.loss_sum, kLossTol * cpu.loss_sum);
  double worst = 0;
  int64_t tensors = 0;
  std::vector<std::vector<float>> want;
  g_cpu.for_each([&](const std::string&, const std::vector<float>& v) { want.push_back(v); });
  // A and B of all seven linears of every block (and IEC's two scalars).
  size_t i = 0;
  g_gpu.for_each([&](const std::string& key, const std::vector<float>& v) {
    ASSERT_LT(i, want.size());
    const double e = rel_err(v, want[i++]);
    worst = std::max(worst, e);
    ++tensors;
    EXPECT_LT(e, grad_tol(v)) << key;
  });
  EXPECT_EQ(tensors, (lora.config.iec ? 4 : 2) * model.config().num_hidden_layers * 7);
  std::printf("loss GPU %.8f CPU %.8f; worst gradient relative error over %lld tensors %.3g\n", got.mean_loss(),
              cpu.mean_loss(), (long long)tensors, worst);

  // The loss alone (no dropout) on both.
  const double cpu_loss = train::forward_loss(model, &lora, batch).loss_sum;
  EXPECT_NEAR(gpu.forward_loss(&lora, batch).loss_sum, cpu_loss, kLossTol * cpu_loss);
  if (lora.config.dropout == 0) {
    EXPECT_NEAR(got.loss_sum, cpu_loss, kLossTol * cpu_loss);
  }

  // Gradients are added into the buffer: a second step doubles them.
  train::LoraAdapters twice = g_gpu;
  gpu.forward_backward(&lora, batch, so, &twice, nullptr);
  i = 0;
  std::vector<std::vector<float>> once;
  g_gpu.for_each([&](const std::string&, const std::vector<float>& v) { once.push_back(v); });
  twice.for_each([&](const std::string& key, const std::vector<float>& v) {
    std::vector<float> doubled = once[i++];
    for (float& x : doubled) x *= 2;
    EXPECT_LT(rel_err(v, doubled), 1e-6) << key;
  });
}

class CudaTrainDropout : public ::testing::TestWithParam<double> {};

TEST_P(CudaTrainDropout, Stories260KMatchesCpu) {
  REQUIRE_GPU();
  LOWBIT_REQUIRE_PATH(stories());
  LlamaModel model(open_checkpoint(stories()));
  ASSERT_LT(model.config().num_key_value_heads, model.config().num_attention_heads) << "stories260K is GQA";
  expect_gpu_matches_cpu(model, random_lora(model.config(), GetParam(), 3),
                         random_batch(model.config().vocab_size, 11));
}

TEST_P(CudaTrainDropout, RandomGqaModelMatchesCpu) {
  REQUIRE_GPU();
  test::TempDir dir;
  LlamaModel model(open_checkpoint(write_random_gqa_config(dir)));
  expect_gpu_matches_cpu(model, random_lora(model.config(), GetParam(), 5),
                         random_batch(model.config().vocab_size, 12));
}

// IR-QLoRA's elastic connection (train/iec.h): r 8 divides every linear of the random model.
TEST_P(CudaTrainDropout, RandomGqaModelWithIecMatchesCpu) {
  REQUIRE_GPU();
  test::TempDir dir;
  LlamaModel model(open_checkpoint(write_random_gqa_config(dir)));
  expect_gpu_matches_cpu(model, random_lora(model.config(), GetParam(), 6, true),
                         random_batch(model.config().vocab_size, 14));
}

// QLoRA's frozen base: the dequantized NF4 weights, the same on both devices.
TEST_P(CudaTrainDropout, Nf4BaseMatchesCpu) {
  REQUIRE_GPU();
  LOWBIT_REQUIRE_PATH(stories());
  Checkpoint source = open_checkpoint(stories());
  LlamaModel work(source);
  auto method = make_method("nf4:dq=1");
  QuantizedModel qm = quantize_model(work, *method, nullptr, {});
  LlamaModel model(quantized_checkpoint_in_memory(source, std::move(qm), {{"path", "stories260K"}}));
  install_quantized_forward(model);
  expect_gpu_matches_cpu(model, random_lora(model.config(), GetParam(), 7),
                         random_batch(model.config().vocab_size, 13));
}

INSTANTIATE_TEST_SUITE_P(Dropout, CudaTrainDropout, ::testing::Values(0.0, 0.1),
                         [](const auto& info) { return info.param == 0 ? std::string("Off") : std::string("On"); });

// IR-QLoRA's frozen base (ICQ: NF4 plus a shift per block) and an 8-bit int base on the random
// GQA model: both held compact on the GPU, expanded per use.
TEST_P(CudaTrainDropout, IcqAndInt8BasesMatchCpu) {
  REQUIRE_GPU();
  test::TempDir dir;
  const std::string path = write_random_gqa_config(dir);
  for (const char* spec : {"icq:tau_range=0.1,tau_n=100,dq=1", "rtn:w=8,g=64"}) {
    SCOPED_TRACE(spec);
    Checkpoint source = open_checkpoint(path);
    LlamaModel work(source);
    auto method = make_method(spec);
    QuantizedModel qm = quantize_model(work, *method, nullptr, {});
    LlamaModel model(quantized_checkpoint_in_memory(source, std::move(qm), {{"path", path}}));
    install_quantized_forward(model);
    expect_gpu_matches_cpu(model, random_lora(model.config(), GetParam(), 8),
                           random_batch(model.config().vocab_size, 15));
  }
}

// Against PEFT's autograd directly (tests/fixtures/train, scripts/make_train_fixtures.py): the
// GPU's loss and adapter gradients on the tiny model (GQA, llama3 RoPE past its original
// context, untied head), at the CPU parity test's bars.
TEST(CudaTrain, TinyLlamaMatchesPeft) {
  REQUIRE_GPU();
  auto ref = SafetensorsFile::open(test::train_fixtures_dir() + "/tiny_lora.safetensors");
  auto batch_f = SafetensorsFile::open(test::train_fixtures_dir() + "/tiny_grads.safetensors");
  LlamaModel model(open_checkpoint(tiny()));
  train::LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 8;
  train::LoraAdapters lora = train::LoraAdapters::zeros(model.config(), cfg);
  lora.for_each([&](const std::string& key, std::vector<float>& v) { v = test::float_vector(*ref, "all." + key); });
  train::LoraAdapters grads = lora.zeros_like();
  const train::Batch batch = test::fixture_batch(*batch_f);
  train::CudaLlamaBackward gpu(model, 0);
  const train::StepResult r = gpu.forward_backward(&lora, batch, {}, &grads, nullptr);
  const double want = test::float_vector(*ref, "all.loss")[0];
  EXPECT_NEAR(r.mean_loss(), want, kLossTol * want);
  grads.for_each([&](const std::string& key, const std::vector<float>& v) {
    EXPECT_LT(rel_err(v, test::float_vector(*ref, "all.grad." + key)), kGradTol) << key;
  });
}

// The same with IEC against IR-QLoRA's IRQLoraLinear4bit under autograd (tiny_irqlora.safetensors,
// scripts/make_irqlora_train_fixtures.py): A, B and both scalars of every linear.
TEST(CudaTrain, TinyLlamaIecMatchesIrqlora) {
  REQUIRE_GPU();
  auto ref = SafetensorsFile::open(test::train_fixtures_dir() + "/tiny_irqlora.safetensors");
  auto batch_f = SafetensorsFile::open(test::train_fixtures_dir() + "/tiny_grads.safetensors");
  LlamaModel model(open_checkpoint(tiny()));
  train::LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 8;
  cfg.iec = true;
  train::LoraAdapters lora = train::LoraAdapters::zeros(model.config(), cfg);
  int scalars = 0;
  lora.for_each([&](const std::string& key, std::vector<float>& v) {
    v = test::float_vector(*ref, "grad." + key);
    scalars += v.size() == 1 && v[0] != 0.0f;
  });
  EXPECT_EQ(scalars, 2 * 7 * model.config().num_hidden_layers) << "the fixture's scalars are nonzero";
  train::LoraAdapters grads = lora.zeros_like();
  const train::Batch batch = test::fixture_batch(*batch_f);
  train::CudaLlamaBackward gpu(model, 0);
  const train::StepResult r = gpu.forward_backward(&lora, batch, {}, &grads, nullptr);
  const double want = test::float_vector(*ref, "grad.loss")[0];
  EXPECT_NEAR(r.mean_loss(), want, kLossTol * want);
  grads.for_each([&](const std::string& key, const std::vector<float>& v) {
    EXPECT_LT(rel_err(v, test::float_vector(*ref, "grad.grad." + key)), grad_tol(v)) << key;
  });
}

// Eight optimizer steps through the one trainer loop with the GPU engine, against torch's AdamW +
// transformers' warmup + clip_grad_norm_ + PEFT (tiny_train.safetensors, as the CPU's
// TrainParity.EightStepsMatchTorchAdamW checks the CPU engine).
TEST(CudaTrain, EightStepsMatchTorchAdamW) {
  REQUIRE_GPU();
  auto ref = SafetensorsFile::open(test::train_fixtures_dir() + "/tiny_train.safetensors");
  LlamaModel model(open_checkpoint(tiny()));
  train::LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 8;
  train::LoraAdapters init = train::LoraAdapters::zeros(model.config(), cfg);
  init.for_each([&](const std::string& key, std::vector<float>& v) { v = test::float_vector(*ref, "train.init." + key); });
  train::TrainOptions opt;
  opt.adamw.lr = 1e-2;
  opt.adamw.weight_decay = 0.01;
  opt.warmup_ratio = 0.2;
  opt.max_grad_norm = 0.3;
  opt.total_steps = 8;
  const auto engine = train::make_step_engine(parse_device("cuda:0"), model, train::ComputePrecision::Fp32);
  EXPECT_NE(engine->name(), "cpu");
  train::LoraTrainer trainer(model, std::move(init), opt, engine.get());
  const Tensor loss = ref->tensor("train.loss"), norm = ref->tensor("train.grad_norm"), lr = ref->tensor("train.lr");
  for (int64_t s = 0; s < loss.dim(0); ++s) {
    const std::vector<train::Batch> mbs = test::fixture_step_batches(*ref, s);
    const train::StepStats st = trainer.step(mbs);
    const double want = loss.data_as<double>()[s];
    EXPECT_NEAR(st.loss, want, kLossTol * want) << "step " << s;
    EXPECT_NEAR(st.grad_norm, norm.data_as<double>()[s], kGradTol * norm.data_as<double>()[s]) << "step " << s;
    EXPECT_DOUBLE_EQ(st.lr, lr.data_as<double>()[s]) << "step " << s;
  }
  // The CPU test's bar for the final adapters (Adam turns fp32 noise in a small gradient into up
  // to ~lr of movement; 1e-3 of each tensor's largest value is well above that).
  trainer.adapters().for_each([&](const std::string& key, const std::vector<float>& v) {
    EXPECT_LT(rel_err(v, test::float_vector(*ref, "train.final." + key)), 1e-3) << key;
  });
}

// `lowbit finetune --device cuda` against `--device cpu`: QLoRA (NF4 base, r 8 on every linear,
// dropout 0.05) and IR-QLoRA (ICQ base, IEC, r 4: it divides stories260K's linears) on
// stories260K and the Alpaca subset (prompts cut to 64 tokens, responses to 32), a few steps of
// two micro-batches, and the held-out loss at the end.
class CudaFinetune : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaFinetune, LossCurveMatchesCpu) {
  REQUIRE_GPU();
  const std::string alpaca = test::data_dir() + "/alpaca/alpaca_5000.json";
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(alpaca);
  auto run = [&](const std::string& device) {
    train::FinetuneOptions o = test::small_alpaca_finetune(stories(), alpaca, GetParam(), 4, device);
    o.compute = "fp32";  // the parity mode (a GPU run's default is bf16)
    return train::run_finetune(o);
  };
  const train::FinetuneResult cpu = run("cpu"), gpu = run("cuda");
  const nlohmann::json& lc = cpu.summary["log"];
  const nlohmann::json& lg = gpu.summary["log"];
  ASSERT_EQ(lc.size(), 4u);
  ASSERT_EQ(lg.size(), lc.size());
  for (size_t s = 0; s < lc.size(); ++s) {
    const double want = lc[s]["loss"].get<double>(), got = lg[s]["loss"].get<double>();
    std::printf("step %zu: loss GPU %.7f CPU %.7f\n", s + 1, got, want);
    EXPECT_NEAR(got, want, (s == 0 ? kLossTol : 1e-3) * want) << "step " << s + 1;
    EXPECT_EQ(lg[s]["targets"], lc[s]["targets"]);
  }
  EXPECT_NEAR(gpu.summary["eval_loss"].get<double>(), cpu.summary["eval_loss"].get<double>(),
              1e-3 * cpu.summary["eval_loss"].get<double>());
  // The device is part of a GPU run's identity (and absent from a CPU run's, as before it existed).
  EXPECT_EQ(gpu.summary["run"]["device"], "cuda");
  EXPECT_FALSE(cpu.summary["run"].contains("device"));
  // The GPU's memory report: the model's bytes as held are gpu_model_bytes()' for the layout (the
  // quantized base compact, not fp32), and the peaks cover them.
  ASSERT_TRUE(gpu.summary.contains("gpu_memory"));
  EXPECT_FALSE(cpu.summary.contains("gpu_memory"));
  const nlohmann::json& m = gpu.summary["gpu_memory"];
  EXPECT_EQ(m["model_bytes"], m["model_bytes_predicted"]);
  const int64_t total = m["model_bytes"]["total"].get<int64_t>();
  EXPECT_GT(m["peak_allocated_bytes"].get<int64_t>(), total);
  EXPECT_GE(m["peak_in_use_bytes"].get<int64_t>(), total);
  EXPECT_NE(m["base_layout"].get<std::string>().find("codebook"), std::string::npos) << m.dump();
}

INSTANTIATE_TEST_SUITE_P(Methods, CudaFinetune,
                         ::testing::Values("qlora:r=8,alpha=16,dropout=0.05", "irqlora:r=4,alpha=8,dropout=0.05"),
                         [](const auto& info) { return info.param.substr(0, info.param.find(':')); });

using test::error_text;

// The compact base (train/compact_base.h) as the GPU expands it into its scratch: every linear
// equals the fp32 weight the CPU trains over (LlamaModel::block_weights) bit for bit, for QLoRA's
// NF4 + DQ, IR-QLoRA's ICQ, int codes of 4 and 8 bits (bf16-rounded) and an unquantized bf16 base;
// the device bytes the model holds are those make_compact_base() and gpu_model_bytes() count.
TEST(CudaTrain, CompactBaseExpandsToTheCpuWeights) {
  REQUIRE_GPU();
  test::TempDir dir;
  const std::string path = write_random_gqa_config(dir);
  for (const char* spec : {"nf4:dq=1", "icq:tau_range=0.1,tau_n=100,dq=1", "rtn:w=4,g=64", "rtn:w=8,g=32", ""}) {
    SCOPED_TRACE(spec);
    Checkpoint source = open_checkpoint(path);
    std::unique_ptr<LlamaModel> model;
    if (*spec == 0) {
      model = std::make_unique<LlamaModel>(source);
    } else {
      LlamaModel work(source);
      auto method = make_method(spec);
      QuantizedModel qm = quantize_model(work, *method, nullptr, {});
      model = std::make_unique<LlamaModel>(quantized_checkpoint_in_memory(source, std::move(qm), {{"path", path}}));
    }
    const LlamaConfig& c = model->config();
    const size_t before = cuda::device_bytes_in_use();
    train::CudaLlamaBackward gpu(*model, 0);
    const train::GpuModelBytes held = gpu.model_bytes();
    EXPECT_EQ(cuda::device_bytes_in_use() - before, size_t(held.total())) << "the model's buffers, no others";
    const train::CompactBase base = train::make_compact_base(*model);
    EXPECT_EQ(held.linears, base.bytes(c).linears);
    EXPECT_EQ(held.total(), base.bytes(c).total());
    ASSERT_TRUE(gpu.uniform_layout().has_value());
    EXPECT_EQ(held.total(), train::gpu_model_bytes(c, *gpu.uniform_layout()).total());
    EXPECT_NE(base.layers[0][0].kind, train::CompactKind::F32) << gpu.base_layout();
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      auto w = model->block_weights(l);
      for (LinearKind k : kAllLinears) {
        const std::vector<float> got = gpu.download_weight(l, k);
        const Tensor& want = (*w)[k];
        ASSERT_EQ(int64_t(got.size()), want.numel());
        EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0) << "layer " << l << " " << linear_name(k);
      }
    }
  }
}

// The later micro-batches of one optimizer step reuse the adapters on the GPU
// (StepOptions::adapters_unchanged) and sum their gradients there (more_micro_batches), one
// download per step: the same gradients, bit for bit, as uploading the adapters and adding each
// micro-batch's gradients on the host, into buffers that start at zero as the trainer's do. A
// call without adapters_unchanged starts anew; a continuation with another buffer is refused.
TEST(CudaTrain, MicroBatchesOfOneStepStayOnTheGpu) {
  REQUIRE_GPU();
  test::TempDir dir;
  LlamaModel model(open_checkpoint(write_random_gqa_config(dir)));
  const LlamaConfig& c = model.config();
  for (bool iec : {false, true}) {
    SCOPED_TRACE(iec ? "with IEC" : "without IEC");
    const train::LoraAdapters lora = random_lora(c, 0.1, 10, iec);
    const train::Batch micro[3] = {random_batch(c.vocab_size, 31), random_batch(c.vocab_size, 32),
                                   random_batch(c.vocab_size, 33)};
    train::CudaLlamaBackward gpu(model, 0);
    train::LoraAdapters g_host = lora.zeros_like(), g_device = lora.zeros_like();
    train::StepOptions so;
    expect_device_sum_equals_host_sum(gpu, lora, micro, so, g_host, g_device);
    // A promised continuation with another gradient buffer is refused; a fresh call is not.
    train::LoraAdapters other = lora.zeros_like();
    so.adapters_unchanged = false;
    so.more_micro_batches = true;
    gpu.forward_backward(&lora, micro[0], so, &g_device, nullptr);
    so.adapters_unchanged = true;
    so.more_micro_batches = false;
    EXPECT_THROW(gpu.forward_backward(&lora, micro[1], so, &other, nullptr), Error);
    so.adapters_unchanged = false;
    EXPECT_NO_THROW(gpu.forward_backward(&lora, micro[1], so, &other, nullptr));
  }
}

// What the GPU path does not run is refused with an error naming it, never moved to the CPU.
TEST(CudaTrain, UnsupportedOptionsAreRefused) {
  REQUIRE_GPU();
  LlamaModel model(open_checkpoint(tiny()));
  const LlamaConfig& c = model.config();
  const train::Batch batch = random_batch(c.vocab_size, 21);
  train::LoraAdapters lora = random_lora(c, 0, 9), grads = lora.zeros_like();
  train::CudaLlamaBackward gpu(model, 0);
  // Base weights' gradients (full fine-tuning, distillation).
  train::BaseGrads bg = train::BaseGrads::linears_only(c);
  EXPECT_NE(error_text([&] { gpu.forward_backward(&lora, batch, {}, &grads, &bg); }).find("base weights"),
            std::string::npos);
  // A loss on the logits other than cross-entropy.
  train::StepOptions so;
  so.logits_loss = [](int64_t, int64_t, int64_t, float*) { return 0.0; };
  EXPECT_NE(error_text([&] { gpu.forward_backward(&lora, batch, so, &grads, nullptr); }).find("logits"),
            std::string::npos);
  // Bad input, as on the CPU: a token or a target outside the vocabulary.
  train::Batch bad = batch;
  bad.tokens[5] = int32_t(c.vocab_size);
  EXPECT_THROW(gpu.forward_backward(&lora, bad, {}, &grads, nullptr), Error);
  bad = batch;
  bad.targets[7] = int32_t(c.vocab_size);
  EXPECT_NE(error_text([&] { gpu.forward_loss(&lora, bad); }).find("vocabulary"), std::string::npos);
  // Still usable after the refusals.
  const double cpu_loss = train::forward_loss(model, &lora, batch).loss_sum;
  EXPECT_NEAR(gpu.forward_loss(&lora, batch).loss_sum, cpu_loss, kLossTol * cpu_loss);
}

}  // namespace
}  // namespace lowbit
