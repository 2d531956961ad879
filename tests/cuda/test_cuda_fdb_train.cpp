// DB-LLM's distillation on the GPU (train/fdb_train_cuda.h) against the CPU step it twins
// (train/fdb_train.cpp: llama_backward.h's forward_backward with dad.h's loss, fdb_group_grad),
// on the tiny LLaMA-3 fixture (GQA, llama3 RoPE): the kernels against their CPU twins, one
// micro-batch's DAD loss and gradients (group parameters and, for latent weights, dW), two
// FdbTrainer steps and the KL after them. The CPU is the reference: its DAD loss is checked
// against torch (tests/unit/test_dad.cpp) and its group gradients against finite differences
// (tests/model/test_fdb_train.cpp). Skipped without a GPU.
//
// Tolerances. Both sides are fp32 with fp64 softmax sums (the GPU's student weights are the CPU's
// dequantized fp32 values bit for bit; cuBLAS SGEMM without TF32), so they differ by summation
// order only, the bars of test_cuda_train.cpp:
//   kernels            dequantize exact (same products and sums, no fma); group sums and the DAD
//                      loss 1e-6 (fp64 sums in another order, rounded to fp32 once);
//   loss, KL, weight   1e-5 relative (fp32 order noise through the blocks, ~1e-6 observed for the
//                      LoRA step on the same model);
//   gradients          1e-4 relative error of the whole tensor (max |gpu - cpu| / max |cpu|), the
//                      project's bar for fp32 whole-model gradients (test_train_parity.cpp);
//   after two steps    the second step's loss and the KL 1e-3 relative: AdamW's first update is
//                      nearly lr * sign(g), so fp32 noise in a near-zero gradient entry can move
//                      that parameter by up to lr on one side only (the project's bar for a loss
//                      curve).
//
// The faster precisions (--compute tf32|bf16, fdb_train_cuda.h's "Precision") against the fp32
// step on the GPU, with test_cuda_train_precision.cpp's bars and their reasoning (every product's
// operands rounded once, u = 2^-11 in tf32 and 2^-8 in bf16, ~3 u elementwise at the bottom of
// the tiny model), each bar a tensor's norm and direction rather than its elements:
//   group gradients    each linear's (alpha1, alpha2, beta) gradients: norm 2e-3 (tf32), 1e-2
//                      (bf16) relative, cosine > 0.99999 (tf32), 0.999 (bf16): a group's
//                      gradient is a fixed-order fp64 sum of its dW elements, so it carries the
//                      dW's relative error, and the norm and direction of a tensor of >= 1,000
//                      of them average it as they do for LoRA's A and B;
//   loss, KL           2e-3 (tf32), 1e-2 (bf16) relative: twice the cross-entropy's bar, as the
//                      KL is a difference of two rounded sets of logits (the teacher's and the
//                      student's, each ~1 u relative noise) rather than one; the 2-bit
//                      student's KL is far from zero, so the noise is a small part of it;
//   mean DAD weight    H(p, q)^gamma, a sum of the same logits' terms: the cross-entropy's bar,
//                      1e-3 (tf32), 5e-3 (bf16);
//   two steps          the loss curve's bar, 1e-2 relative at every step.
// The fp32 mode is the default and is what the tests above compare with the CPU; an engine made
// with ComputePrecision::Fp32 named gives the default engine's numbers bit for bit.
#include "backend/cuda/fdb_train.cuh"
#include "core/error.h"
#include "formats/checkpoint.h"
#include "quant/formats/bit_plane.h"
#include "quant/formats/fdb_format.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "fdb_fixture.h"
#include "test_util.h"
#include "train/dad.h"
#include "train/distill.h"
#include "train/fdb_train.h"
#include "train/fdb_train_cuda.h"
#include "train/llama_backward.h"
#include "train_fixture.h"
#include "cuda_test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <tuple>

namespace lowbit {
namespace {

using test::ctx;
using test::down;
using test::randn;
using test::rel_err;
using test::up;

std::string tiny() { return test::fdb_tiny_model(); }

using test::fdb_init;
using test::random_batch;

const Device kGpu{Device::Kind::Cuda, 0};

// A random fdb linear [rows, cols] in groups of g (random planes and group parameters).
QuantizedLinear random_fdb(int64_t rows, int64_t cols, int64_t g, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<uint8_t> p1(size_t(rows * cols)), p2(p1.size());
  for (size_t i = 0; i < p1.size(); ++i) {
    p1[i] = uint8_t(gen() & 1u);
    p2[i] = uint8_t(gen() & 1u);
  }
  QuantizedLinear q;
  q.format = &kFdbFormat;
  q.rows = rows;
  q.cols = cols;
  q.bits = 2;
  q.group_size = g;
  q.params = {{"has_beta", true}};
  q.extras["fdb.b1"] = pack_plane(p1, rows, cols);
  q.extras["fdb.b2"] = pack_plane(p2, rows, cols);
  const std::vector<float> a = randn(size_t(rows * cols / g * 3), seed + 1, 0.05f);
  Tensor at = Tensor::empty(DType::F32, {rows * cols / g, 3});
  std::memcpy(at.mutable_data(), a.data(), a.size() * sizeof(float));
  q.extras["fdb.alpha"] = at;
  q.validate("random fdb");
  return q;
}

// Each kernel against its CPU twin, on shapes past the 256-thread blocks and the 32-lane warps
// (groups of 32 and 96 columns, rows of 1000 and 3001 logits).
TEST(CudaFdbOps, MatchTheirCpuTwins) {
  REQUIRE_GPU();
  const cudaStream_t s = ctx().stream();
  for (int64_t g : {32, 96}) {
    SCOPED_TRACE(g);
    const int64_t rows = 37, cols = 288;
    const QuantizedLinear q = random_fdb(rows, cols, g, uint32_t(g));
    const Tensor& b1 = q.extras.at("fdb.b1");
    const Tensor& b2 = q.extras.at("fdb.b2");
    const Tensor& al = q.extras.at("fdb.alpha");
    auto d1 = up(b1.data_as<uint8_t>(), size_t(b1.numel())), d2 = up(b2.data_as<uint8_t>(), size_t(b2.numel()));
    auto da = up(al.data_as<float>(), size_t(al.numel()));
    cuda::DeviceBuffer<float> w(size_t(rows * cols));
    cuda::fdb_dequantize_f32(d1.get(), d2.get(), da.get(), w.get(), rows, cols, g, s);
    const Tensor want = q.dequantize_f32();
    const std::vector<float> got = down(w, size_t(rows * cols));
    EXPECT_EQ(std::memcmp(got.data(), want.data(), size_t(want.nbytes())), 0);
    // A linear of a 16-bit checkpoint holds its dequantized weight rounded to that dtype.
    for (DType dt : {DType::BF16, DType::F16}) {
      QuantizedLinear r = q;
      r.dequant_dtype = dt;
      cuda::fdb_dequantize_f32(d1.get(), d2.get(), da.get(), w.get(), rows, cols, g, s, dt);
      const Tensor want16 = r.dequantize_f32();
      const std::vector<float> got16 = down(w, size_t(rows * cols));
      EXPECT_EQ(std::memcmp(got16.data(), want16.data(), size_t(want16.nbytes())), 0) << dtype_name(dt);
      EXPECT_NE(std::memcmp(got16.data(), want.data(), size_t(want.nbytes())), 0) << dtype_name(dt);
    }

    const std::vector<float> dw = randn(size_t(rows * cols), 5);
    auto ddw = up(dw.data(), dw.size());
    // Accumulates: start from a nonzero buffer.
    const std::vector<float> base = randn(size_t(al.numel()), 6);
    auto dg = up(base.data(), base.size());
    cuda::fdb_group_grad_f32(ddw.get(), d1.get(), d2.get(), dg.get(), rows, cols, g, s);
    std::vector<float> ref(base.size());
    train::fdb_group_grad(q, dw.data(), ref.data());
    for (size_t i = 0; i < ref.size(); ++i) ref[i] += base[i];
    EXPECT_LT(rel_err(down(dg, ref.size()), ref), 1e-6);
  }
  for (int64_t V : {1000, 3001}) {
    for (auto [mode, weight, gamma] : {std::tuple{0, train::DadWeight::None, 1.0},
                                       std::tuple{1, train::DadWeight::Teacher, 1.0},
                                       std::tuple{2, train::DadWeight::Cross, 1.5}}) {
      SCOPED_TRACE(::testing::Message() << "V " << V << " weight " << mode);
      const int64_t rows = 5;
      const double scale = 1.0 / 7.0;
      const std::vector<float> t = randn(size_t(rows * V), 7, 3.0f), z = randn(size_t(rows * V), 8, 3.0f);
      auto dt = up(t.data(), t.size()), dz = up(z.data(), z.size());
      cuda::DeviceBuffer<double> loss{size_t(rows)}, kl{size_t(rows)}, w{size_t(rows)};
      cuda::dad_loss_backward_f32(dt.get(), dz.get(), loss.get(), kl.get(), w.get(), rows, V, mode, gamma, scale, s);
      std::vector<float> ref = z;
      train::DadOptions o;
      o.weight = weight;
      o.gamma = gamma;
      const train::DadSums sums = train::dad_loss_backward(t.data(), ref.data(), rows, V, o, scale);
      EXPECT_LT(rel_err(down(dz, ref.size()), ref), 1e-6);
      double gl = 0, gk = 0, gw = 0;
      for (double x : down(loss, size_t(rows))) gl += x;
      for (double x : down(kl, size_t(rows))) gk += x;
      for (double x : down(w, size_t(rows))) gw += x;
      EXPECT_NEAR(gl, sums.loss, 1e-6 * sums.loss);
      EXPECT_NEAR(gk, sums.kl, 1e-6 * sums.kl);
      EXPECT_NEAR(gw, sums.weight, 1e-6 * sums.weight);
    }
  }
}

train::FdbGradBuffers zeros(const train::FdbLinears& q, bool latent) {
  train::FdbGradBuffers g(q.size());
  for (size_t l = 0; l < q.size(); ++l)
    for (LinearKind k : kAllLinears) {
      const QuantizedLinear& x = q[l][size_t(k)];
      g[l][size_t(k)].assign(latent ? size_t(x.rows * x.cols) : size_t(x.extras.at("fdb.alpha").numel()), 0.0f);
    }
  return g;
}

// The CPU step of fdb_train.cpp, spelled out: the student's weights are the fdb weights'
// dequantized values, the teacher's logits come from its forward, the DAD loss is the logits
// loss of forward_backward, and the group gradients are fdb_group_grad of the linears' dW.
train::DadSums cpu_micro_step(const train::FdbLinears& q, const train::Batch& b, const train::DadOptions& dad,
                              double scale, train::FdbGradBuffers& galpha, train::FdbGradBuffers& glatent) {
  LlamaModel teacher(open_checkpoint(tiny())), student(open_checkpoint(tiny()));
  test::set_fdb_linears(student, q);
  std::vector<float> tl;
  for (int64_t s = 0; s < b.B; ++s) {
    const Tensor t = teacher.forward(std::span<const int32_t>(b.tokens.data() + s * b.T, size_t(b.T)));
    tl.insert(tl.end(), t.data_as<float>(), t.data_as<float>() + t.numel());
  }
  train::DadSums sums;
  train::StepOptions so;
  so.logits_loss = [&](int64_t r0, int64_t rows, int64_t V, float* z) {
    const train::DadSums s = train::dad_loss_backward(tl.data() + r0 * V, z, rows, V, dad, scale);
    sums.loss += s.loss;
    sums.kl += s.kl;
    sums.weight += s.weight;
    return s.loss;
  };
  train::BaseGrads g = train::BaseGrads::linears_only(student.config());
  train::forward_backward(student, nullptr, b, so, nullptr, &g);
  for (size_t l = 0; l < q.size(); ++l)
    for (LinearKind k : kAllLinears) {
      const std::vector<float>& dw = g.blocks[l].linear[size_t(k)];
      train::fdb_group_grad(q[l][size_t(k)], dw.data(), galpha[l][size_t(k)].data());
      glatent[l][size_t(k)] = dw;
    }
  return sums;
}

// One micro-batch: the DAD loss, its sums and every gradient, against the CPU's; with the logits
// in one chunk and in chunks of 7 rows (80 rows: 11 full chunks and one of 3).
TEST(CudaFdbTrain, MicroStepMatchesTheCpu) {
  REQUIRE_GPU();
  const train::FdbLinears q = fdb_init("dbllm:g=16");
  LlamaModel teacher(open_checkpoint(tiny()));
  const train::Batch b = random_batch(2, 40, teacher.config().vocab_size, 11);
  const double scale = 1.0 / 80.0;
  for (int64_t chunk_rows : {0, 7}) {
    SCOPED_TRACE(::testing::Message() << "chunk rows " << chunk_rows);
    auto gpu = train::make_fdb_cuda_engine(kGpu, teacher, q, chunk_rows);
    for (train::DadWeight w : {train::DadWeight::Cross, train::DadWeight::Teacher, train::DadWeight::None}) {
      SCOPED_TRACE(train::dad_weight_name(w));
      train::DadOptions dad;
      dad.weight = w;
      train::FdbGradBuffers ga = zeros(q, false), gl = zeros(q, true), ra = zeros(q, false), rl = zeros(q, true);
      const train::DadSums want = cpu_micro_step(q, b, dad, scale, ra, rl);
      gpu->begin_step();
      const train::DadSums got = gpu->micro_step(b, dad, scale, &gl);
      gpu->end_step(ga);
      EXPECT_NEAR(got.loss, want.loss, 1e-5 * want.loss);
      EXPECT_NEAR(got.kl, want.kl, 1e-5 * want.kl);
      EXPECT_NEAR(got.weight, want.weight, 1e-5 * want.weight);
      for (size_t l = 0; l < q.size(); ++l)
        for (LinearKind k : kAllLinears) {
          EXPECT_LT(rel_err(ga[l][size_t(k)], ra[l][size_t(k)]), 1e-4) << "layer " << l << " " << linear_name(k);
          EXPECT_LT(rel_err(gl[l][size_t(k)], rl[l][size_t(k)]), 1e-4) << "dW layer " << l << " " << linear_name(k);
        }
      // The KL alone (no gradients) is the same sum.
      EXPECT_NEAR(gpu->kl_sum(b), want.kl, 1e-5 * want.kl);
    }
  }
}

// FdbTrainer on either device: two steps of two micro-batches, with and without latent weights,
// and with the linears' dequantized weights held as bf16 (a bf16 checkpoint's).
TEST(CudaFdbTrain, TrainerStepsMatchTheCpu) {
  REQUIRE_GPU();
  for (int mode : {0, 1, 2}) {
    const bool latent = mode == 1, bf16 = mode == 2;
    SCOPED_TRACE(latent ? "latent" : bf16 ? "scales, bf16 weights" : "scales");
    train::FdbTrainOptions opt;
    // A small rate: a near-zero gradient entry whose sign differs between the devices moves its
    // parameter by up to 2 lr (AdamW's first update is nearly lr * sign(g)).
    opt.adamw.lr = 1e-4;
    opt.total_steps = 2;
    opt.latent = latent;
    opt.latent_lr_scale = 0.1;
    LlamaModel teacher(open_checkpoint(tiny())), s_cpu(open_checkpoint(tiny())), s_gpu(open_checkpoint(tiny()));
    train::FdbLinears q = fdb_init("dbllm:g=16");
    if (bf16)
      for (auto& layer : q)
        for (QuantizedLinear& x : layer) x.dequant_dtype = DType::BF16;
    train::FdbTrainer cpu(s_cpu, teacher, q, opt);
    opt.device = kGpu;
    train::FdbTrainer gpu(s_gpu, teacher, q, opt);
    const int64_t V = teacher.config().vocab_size;
    const std::vector<train::Batch> micro = {random_batch(1, 48, V, 21), random_batch(2, 24, V, 22)};
    for (int step = 0; step < 2; ++step) {
      SCOPED_TRACE(step);
      const train::FdbStepStats a = cpu.step(micro), g = gpu.step(micro);
      const double tol = step == 0 ? 1e-5 : 1e-3;
      EXPECT_NEAR(g.loss, a.loss, tol * a.loss);
      EXPECT_NEAR(g.kl, a.kl, tol * a.kl);
      EXPECT_NEAR(g.weight, a.weight, tol * a.weight);
      EXPECT_NEAR(g.grad_norm, a.grad_norm, (step == 0 ? 1e-4 : 1e-3) * a.grad_norm);
      EXPECT_EQ(g.positions, a.positions);
    }
    const double kc = cpu.eval_kl(micro[0]), kg = gpu.eval_kl(micro[0]);
    EXPECT_NEAR(kg, kc, 1e-3 * kc);
    for (const auto& layer : gpu.linears())
      for (const QuantizedLinear& x : layer) EXPECT_NO_THROW(x.validate("trained on the GPU"));
  }
}

using train::ComputePrecision;

double l2(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  return std::sqrt(s);
}

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double ab = 0;
  for (size_t i = 0; i < a.size(); ++i) ab += double(a[i]) * b[i];
  return ab / (l2(a) * l2(b));
}

struct FastBars {
  double loss, weight, norm, cosine;
};
constexpr FastBars kTf32 = {2e-3, 1e-3, 2e-3, 0.99999};
constexpr FastBars kBf16 = {1e-2, 5e-3, 1e-2, 0.999};

// One micro-batch on engine e: its sums, group gradients and no-gradient KL.
struct MicroOut {
  train::DadSums sums;
  train::FdbGradBuffers galpha;
  double kl = 0;
};
MicroOut micro(train::FdbCudaEngine& e, const train::FdbLinears& q, const train::Batch& b,
               const train::DadOptions& dad, double scale) {
  MicroOut out;
  out.galpha = zeros(q, false);
  e.begin_step();
  out.sums = e.micro_step(b, dad, scale, nullptr);
  e.end_step(out.galpha);
  out.kl = e.kl_sum(b);
  return out;
}

// Two micro-batches that must agree bit for bit: the DAD sums, the KL and every group gradient.
void expect_same_micro(const MicroOut& got, const MicroOut& want) {
  EXPECT_EQ(got.sums.loss, want.sums.loss);
  EXPECT_EQ(got.sums.kl, want.sums.kl);
  EXPECT_EQ(got.sums.weight, want.sums.weight);
  EXPECT_EQ(got.kl, want.kl);
  ASSERT_EQ(got.galpha.size(), want.galpha.size());
  for (size_t l = 0; l < want.galpha.size(); ++l)
    for (LinearKind k : kAllLinears) EXPECT_EQ(got.galpha[l][size_t(k)], want.galpha[l][size_t(k)]);
}

// The fp32 mode is the default, and naming it changes nothing, bit for bit.
TEST(CudaFdbTrainPrecision, Fp32IsTheDefault) {
  REQUIRE_GPU();
  const train::FdbLinears q = fdb_init("dbllm:g=16");
  LlamaModel teacher(open_checkpoint(tiny()));
  const train::Batch b = random_batch(2, 40, teacher.config().vocab_size, 11);
  auto dflt = train::make_fdb_cuda_engine(kGpu, teacher, q, 7);
  auto named = train::make_fdb_cuda_engine(kGpu, teacher, q, 7, ComputePrecision::Fp32);
  EXPECT_EQ(dflt->compute(), ComputePrecision::Fp32);
  EXPECT_EQ(train::FdbTrainOptions{}.compute, ComputePrecision::Fp32);
  const MicroOut a = micro(*dflt, q, b, {}, 1.0 / 80.0), c = micro(*named, q, b, {}, 1.0 / 80.0);
  expect_same_micro(a, c);
}

// One micro-batch in tf32 and in bf16 against the fp32 step (logits in chunks of 7 rows).
TEST(CudaFdbTrainPrecision, FastStepsAreNearFp32) {
  REQUIRE_GPU();
  const train::FdbLinears q = fdb_init("dbllm:g=16");
  LlamaModel teacher(open_checkpoint(tiny()));
  const train::Batch b = random_batch(2, 40, teacher.config().vocab_size, 11);
  const double scale = 1.0 / 80.0;
  train::DadOptions dad;  // cross, gamma 1: every term of the loss in play
  auto fp32 = train::make_fdb_cuda_engine(kGpu, teacher, q, 7, ComputePrecision::Fp32);
  const MicroOut want = micro(*fp32, q, b, dad, scale);
  for (ComputePrecision p : {ComputePrecision::Tf32, ComputePrecision::Bf16}) {
    SCOPED_TRACE(train::compute_precision_name(p));
    const FastBars bar = p == ComputePrecision::Bf16 ? kBf16 : kTf32;
    auto e = train::make_fdb_cuda_engine(kGpu, teacher, q, 7, p);
    EXPECT_EQ(e->compute(), p);
    const MicroOut got = micro(*e, q, b, dad, scale);
    EXPECT_NEAR(got.sums.loss, want.sums.loss, bar.loss * want.sums.loss);
    EXPECT_NEAR(got.sums.kl, want.sums.kl, bar.loss * want.sums.kl);
    EXPECT_NEAR(got.sums.weight, want.sums.weight, bar.weight * want.sums.weight);
    EXPECT_NEAR(got.kl, want.kl, bar.loss * want.kl);
    double worst_norm = 0, lowest_cos = 1, n2_got = 0, n2_want = 0;
    for (size_t l = 0; l < q.size(); ++l)
      for (LinearKind k : kAllLinears) {
        const std::vector<float>& g = got.galpha[l][size_t(k)];
        const std::vector<float>& w = want.galpha[l][size_t(k)];
        const double dn = std::fabs(l2(g) - l2(w)) / l2(w), cs = cosine(g, w);
        EXPECT_LT(dn, bar.norm) << "layer " << l << " " << linear_name(k);
        EXPECT_GT(cs, bar.cosine) << "layer " << l << " " << linear_name(k);
        worst_norm = std::max(worst_norm, dn);
        lowest_cos = std::min(lowest_cos, cs);
        n2_got += l2(g) * l2(g);
        n2_want += l2(w) * l2(w);
      }
    EXPECT_NEAR(std::sqrt(n2_got), std::sqrt(n2_want), bar.norm * std::sqrt(n2_want));
    std::printf("%s: DAD loss %.7f (fp32 %.7f), KL %.7f (fp32 %.7f); worst group-gradient norm error %.3g, lowest "
                "cosine %.7f\n",
                train::compute_precision_name(p), got.sums.loss, want.sums.loss, got.sums.kl, want.sums.kl,
                worst_norm, lowest_cos);
  }
}

// The bf16 mode caches a block's rounded weights while the block is in use; the student's come
// from the fdb hook and change with set_linear, and the teacher runs on the same engine: a
// micro-batch after new group parameters must be a fresh engine's with those parameters, bit
// for bit (a stale cache would mix the teacher's, the old or the new student's weights).
TEST(CudaFdbTrainPrecision, Bf16FollowsNewGroupParameters) {
  REQUIRE_GPU();
  const train::FdbLinears q = fdb_init("dbllm:g=16");
  train::FdbLinears moved = q;
  for (auto& layer : moved)
    for (QuantizedLinear& x : layer) {
      Tensor& a = x.extras.at("fdb.alpha");
      Tensor own = Tensor::empty(a.dtype(), a.shape());
      for (int64_t i = 0; i < a.numel(); ++i) own.mutable_data_as<float>()[i] = a.data_as<float>()[i] * 1.25f;
      a = std::move(own);
    }
  LlamaModel teacher(open_checkpoint(tiny()));
  const train::Batch b = random_batch(1, 32, teacher.config().vocab_size, 5);
  auto reused = train::make_fdb_cuda_engine(kGpu, teacher, q, 0, ComputePrecision::Bf16);
  (void)micro(*reused, q, b, {}, 1.0 / 32.0);
  for (size_t l = 0; l < q.size(); ++l)
    for (LinearKind k : kAllLinears) reused->set_linear(int64_t(l), k, moved[l][size_t(k)], false);
  const MicroOut got = micro(*reused, moved, b, {}, 1.0 / 32.0);
  auto fresh = train::make_fdb_cuda_engine(kGpu, teacher, moved, 0, ComputePrecision::Bf16);
  const MicroOut want = micro(*fresh, moved, b, {}, 1.0 / 32.0);
  expect_same_micro(got, want);
}

// The bf16 distill step fuses its elementwise kernels as fine-tuning's does: with the fdb hooks
// (the student's weights, dW from the products' bf16 operands, the DAD loss's logits gradient
// rounded into the head's operand) a fused micro-batch equals LOWBIT_TRAIN_FUSE=0's bit for bit.
TEST(CudaFdbTrainPrecision, Bf16FusedEqualsUnfused) {
  REQUIRE_GPU();
  const train::FdbLinears q = fdb_init("dbllm:g=16");
  LlamaModel teacher(open_checkpoint(tiny()));
  const train::Batch b = random_batch(2, 40, teacher.config().vocab_size, 11);
  unsetenv("LOWBIT_TRAIN_FUSE");
  auto fused = train::make_fdb_cuda_engine(kGpu, teacher, q, 7, ComputePrecision::Bf16);
  setenv("LOWBIT_TRAIN_FUSE", "0", 1);
  auto unfused = train::make_fdb_cuda_engine(kGpu, teacher, q, 7, ComputePrecision::Bf16);
  unsetenv("LOWBIT_TRAIN_FUSE");
  for (const char* w : {"cross", "none"}) {
    SCOPED_TRACE(w);
    train::DadOptions dad;
    dad.weight = train::parse_dad_weight(w);
    const MicroOut got = micro(*fused, q, b, dad, 1.0 / 80.0), want = micro(*unfused, q, b, dad, 1.0 / 80.0);
    expect_same_micro(got, want);
  }
}

// FdbTrainer in each fast mode: two steps of two micro-batches near the fp32 trainer's (the loss
// curve's bar), the linears valid.
TEST(CudaFdbTrainPrecision, TrainerStepsAreNearFp32) {
  REQUIRE_GPU();
  LlamaModel teacher(open_checkpoint(tiny()));
  const int64_t V = teacher.config().vocab_size;
  const std::vector<train::Batch> micro_batches = {random_batch(1, 48, V, 21), random_batch(2, 24, V, 22)};
  train::FdbTrainOptions opt;
  opt.adamw.lr = 1e-4;
  opt.total_steps = 2;
  opt.device = kGpu;
  const train::FdbLinears q = fdb_init("dbllm:g=16");
  LlamaModel s32(open_checkpoint(tiny()));
  train::FdbTrainer fp32(s32, teacher, q, opt);
  std::vector<train::FdbStepStats> want;
  for (int step = 0; step < 2; ++step) want.push_back(fp32.step(micro_batches));
  for (ComputePrecision p : {ComputePrecision::Tf32, ComputePrecision::Bf16}) {
    SCOPED_TRACE(train::compute_precision_name(p));
    opt.compute = p;
    LlamaModel s(open_checkpoint(tiny()));
    train::FdbTrainer t(s, teacher, q, opt);
    for (int step = 0; step < 2; ++step) {
      SCOPED_TRACE(step);
      const train::FdbStepStats g = t.step(micro_batches);
      EXPECT_NEAR(g.loss, want[size_t(step)].loss, 1e-2 * want[size_t(step)].loss);
      EXPECT_NEAR(g.kl, want[size_t(step)].kl, 1e-2 * want[size_t(step)].kl);
      EXPECT_NEAR(g.grad_norm, want[size_t(step)].grad_norm, 1e-2 * want[size_t(step)].grad_norm);
    }
    for (const auto& layer : t.linears())
      for (const QuantizedLinear& x : layer) EXPECT_NO_THROW(x.validate("trained in a fast mode"));
  }
}

// LOWBIT_TRAIN_PROFILE=1: a GPU step reports its phases (the teacher's forward, the student's
// engine phases, the fdb work, the transfers, the host's optimizer), each >= 0, and the timing
// changes no number.
TEST(CudaFdbTrainPrecision, PhaseTimingNamesThePhases) {
  REQUIRE_GPU();
  LlamaModel teacher(open_checkpoint(tiny()));
  const int64_t V = teacher.config().vocab_size;
  const std::vector<train::Batch> micro_batches = {random_batch(1, 48, V, 21), random_batch(2, 24, V, 22)};
  const train::FdbLinears q = fdb_init("dbllm:g=16");
  for (ComputePrecision p : {ComputePrecision::Fp32, ComputePrecision::Bf16}) {
    SCOPED_TRACE(train::compute_precision_name(p));
    train::FdbTrainOptions opt;
    opt.device = kGpu;
    opt.compute = p;
    LlamaModel s0(open_checkpoint(tiny())), s1(open_checkpoint(tiny()));
    train::FdbTrainer plain(s0, teacher, q, opt);
    const train::FdbStepStats want = plain.step(micro_batches);
    EXPECT_TRUE(want.phases.empty());
    setenv("LOWBIT_TRAIN_PROFILE", "1", 1);
    train::FdbTrainer timed(s1, teacher, q, opt);
    unsetenv("LOWBIT_TRAIN_PROFILE");
    const train::FdbStepStats got = timed.step(micro_batches);
    EXPECT_EQ(got.loss, want.loss);
    EXPECT_EQ(got.kl, want.kl);
    EXPECT_EQ(got.grad_norm, want.grad_norm);
    std::set<std::string> names;
    double sum = 0;
    for (const auto& ph : got.phases) {
      EXPECT_TRUE(names.insert(ph.name).second) << "twice: " << ph.name;
      EXPECT_GE(ph.seconds, 0) << ph.name;
      sum += ph.seconds;
      std::printf("  %-28s %.6f s\n", ph.name.c_str(), ph.seconds);
    }
    for (const char* n : {"teacher forward", "fdb dequantization", "fdb group gradients", "teacher logits",
                          "DAD loss", "fdb gradients download", "fdb parameters upload", "forward GEMMs",
                          "backward GEMMs", "attention", "host clipping and AdamW"})
      EXPECT_EQ(names.count(n), 1u) << n;
    EXPECT_EQ(names.count("fdb latent dW download"), 0u);
    EXPECT_GT(sum, 0);
  }
}

// Generated data with bf16 compute: the record names both (its data the CPU's generation), and
// the steps stay near the fp32 GPU run's on the same windows.
TEST(CudaFdbTrain, GeneratedDataInBf16) {
  REQUIRE_GPU();
  train::DistillOptions o;
  o.method = "dbllm:g=16";
  o.steps = 2;
  o.batch = 2;
  o.grad_accum = 2;
  o.lr = 1e-4;
  o.data = "generated";
  o.gen.nsamples = 4;
  o.gen.seqlen = 24;
  o.gen.seed = 4;
  o.device = "cuda";
  const train::DistillResult fp32 = train::run_distill(tiny(), o, nullptr);
  o.compute = "bf16";
  const train::DistillResult bf16 = train::run_distill(tiny(), o, nullptr);
  EXPECT_EQ(fp32.training["compute"], "fp32");
  EXPECT_EQ(bf16.training["compute"], "bf16");
  EXPECT_EQ(bf16.training["data"], fp32.training["data"]);
  EXPECT_EQ(bf16.training["data"]["set"], "generated");
  for (int step = 0; step < 2; ++step) {
    const double a = fp32.training["log"][step]["loss"].get<double>();
    const double g = bf16.training["log"][step]["loss"].get<double>();
    EXPECT_NEAR(g, a, 1e-2 * a) << step;
  }
}

// lowbit distill --data generated --device cuda: the windows are generated on the CPU whatever
// the training device (train/generated_data.h), so the data identity is the CPU run's and the
// first step, on the same windows, matches the CPU's to the micro-step's bars.
TEST(CudaFdbTrain, GeneratedDataIsTheCpusWindows) {
  REQUIRE_GPU();
  train::DistillOptions o;
  o.method = "dbllm:g=16";
  o.steps = 2;
  o.batch = 2;
  o.grad_accum = 2;
  o.lr = 1e-4;
  o.data = "generated";
  o.gen.nsamples = 4;
  o.gen.seqlen = 24;
  o.gen.seed = 4;
  const train::DistillResult cpu = train::run_distill(tiny(), o, nullptr);
  o.device = "cuda";
  const train::DistillResult gpu = train::run_distill(tiny(), o, nullptr);
  EXPECT_EQ(gpu.training["data"], cpu.training["data"]);
  EXPECT_EQ(gpu.training["data"]["set"], "generated");
  for (int step = 0; step < 2; ++step) {
    const double a = cpu.training["log"][step]["loss"].get<double>(), g = gpu.training["log"][step]["loss"].get<double>();
    EXPECT_NEAR(g, a, (step == 0 ? 1e-5 : 1e-3) * a) << step;
  }
}

TEST(CudaFdbTrain, BadInputIsRefused) {
  REQUIRE_GPU();
  LlamaModel teacher(open_checkpoint(tiny())), student(open_checkpoint(tiny()));
  train::FdbLinears q = fdb_init("dbllm:g=16");
  train::FdbLinears fewer(q.begin(), q.begin() + 1);
  EXPECT_THROW(train::make_fdb_cuda_engine(kGpu, teacher, fewer), Error);
  train::FdbTrainOptions opt;
  opt.device = Device{Device::Kind::Cuda, 99};
  try {
    train::FdbTrainer t(student, teacher, q, opt);
    ADD_FAILURE() << "no lowbit::Error for cuda:99";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:99"), std::string::npos) << e.what();
  }
  // Bad batches, as on the CPU: a token outside the vocabulary.
  auto gpu = train::make_fdb_cuda_engine(kGpu, teacher, q);
  train::Batch bad = random_batch(1, 8, teacher.config().vocab_size, 3);
  bad.tokens[2] = int32_t(teacher.config().vocab_size);
  gpu->begin_step();
  EXPECT_THROW(gpu->micro_step(bad, {}, 1.0, nullptr), Error);
}

}  // namespace
}  // namespace lowbit
