// The GPU training step's faster precisions (train/compute_precision.h, llama_backward_cuda.h's
// "Precision") against its fp32 mode, which test_cuda_train.cpp holds to the CPU, PEFT and torch:
// the bf16 expansion of every compact base kind against the CPU's bf16 rounding of its weights,
// the fast modes' SGEMM attention against the fp32 mode's kernels,
// the loss and every LoRA gradient of a step in tf32 and bf16, gradients summed on the device over
// a step's micro-batches, `lowbit finetune --device cuda`'s default (bf16) against --compute fp32,
// the phase timing, and what the bf16 mode refuses. Skipped without a GPU.
//
// Tolerances. A product in the fast modes rounds its operands, each once, then accumulates in
// fp32: with u the unit roundoff of the operands' format (bf16: 8 significant bits, u = 2^-8 =
// 3.9e-3; tf32: 11, u = 2^-11 = 4.9e-4), each term a_i b_i carries a relative error of at most
// 2u, and each output, a sum of such terms with independent rounding errors (each operand's
// roughly uniform on [-u, u], standard deviation u / sqrt(3)), carries a relative error of about
// sqrt(2/3) u ~ 0.8 u where the terms do not cancel. A gradient at the bottom block has passed
// through ~6 such products per block above it plus the LM head's two (the residual stream adds in
// fp32), independent errors adding in quadrature: sqrt(2 * 6 + 2) * 0.8 u ~ 3 u on the two-block
// models here, i.e. an elementwise relative error near 1.2e-2 in bf16 and 1.5e-3 in tf32; the
// attention's four products per block, with LOWBIT_TRAIN_ATTENTION=tf32 in TF32 in both modes,
// would add sqrt(2 * 4) * 0.8 * 4.9e-4 ~ 1.1e-3 in quadrature (bf16: 1.2e-2 still; tf32: 1.9e-3). What
// the bars compare is smaller than that elementwise error:
//   a tensor's L2 norm   the error e is nearly uncorrelated with the gradient g, so |g + e| - |g|
//                        ~ <g, e> / |g| is ~|e| / sqrt(n) for n >= 256 values (r 8 x 32 at the
//                        least): < 1e-3 in bf16. The bar, 1e-2 in bf16 and 2e-3 in tf32, also
//                        covers the systematic part (the base rounded to bf16 is a slightly other
//                        function: exact for the random model's bf16 weights and their NF4,
//                        within u/2 per weight for stories260K's NF4 dequantized in fp32).
//   a tensor's direction cosine(g + e, g) = 1 - |e_perp|^2 / (2 |g|^2) ~ 1 - (3u)^2 / 2: > 0.9999 in
//                        bf16 even at 1e-2 elementwise; the bar 0.999 allows 4.5% relative |e|,
//                        tf32's 0.99999 allows 0.45%.
//   the loss             each logit carries ~1 u relative noise, the mean over N >= 100 targets
//                        averages it: the bar is 5e-3 relative in bf16, 1e-3 in tf32.
//   IEC's scalars        not compared one by one: each is a sum over every token and feature of
//                        terms that largely cancel (test_cuda_train.cpp needs 10x the bar of A
//                        and B for them even in fp32); they are checked finite and enter the
//                        global norm.
//   a loss curve         Adam's first updates are ~sign(g) * lr, so rounding noise in a near-zero
//                        gradient entry moves it by up to lr: 1e-2 relative at every step (the
//                        fp32 curve's bar against the CPU is 1e-3).
#include "backend/cuda/compact_weight.cuh"
#include "backend/cuda/ops_backward.cuh"
#include "core/dtype.h"
#include "core/error.h"
#include "formats/checkpoint.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "test_util.h"
#include "train/compact_base.h"
#include "train/compute_precision.h"
#include "train/finetune.h"
#include "train/llama_backward_cuda.h"
#include "cuda_test_util.h"
#include "cuda_train_models.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace lowbit {
namespace {

using train::ComputePrecision;
using test::ctx;
using test::expect_device_sum_equals_host_sum;
using test::random_batch;
using test::random_lora;
using test::up;
using test::write_random_gqa_config;

using test::stories;

using test::error_text;

using test::load_base;

// v's values rounded to bf16 (core/dtype.h, to nearest even) and widened back.
std::vector<float> bf16_rounded(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_f32(f32_to_bf16(v[i]));
  return out;
}

// The bf16 expansion kernel on hand-made compact weights whose fp32 values are not all bf16
// values, so the rounding itself is exercised: codebook entries at exact halfway points between
// bf16 neighbours (1 + 2^-8 rounds down to 1, 1 + 3 * 2^-8 up to 1 + 2^-6: ties to even), random
// fp32 scales, negative values, int codes with zero-points, per-row groups with g_idx, IEEE fp16
// storage (10-bit mantissas rounded to 7). The reference: the CPU expansion
// (train::expand_compact_linear) then core/dtype.h's f32_to_bf16, compared bit for bit.
TEST(CudaTrainPrecision, Bf16ExpansionIsTheCpusRounding) {
  REQUIRE_GPU();
  const cudaStream_t s = ctx().stream();
  std::mt19937 g(7);
  std::uniform_real_distribution<float> scale(0.01f, 3.0f);
  const int64_t rows = 37, cols = 96;  // 3552 values: past a block of 256 threads, odd rows
  auto codes4 = [&](int64_t n) {
    std::vector<uint8_t> c(size_t((n + 1) / 2));
    for (auto& b : c) b = uint8_t(g() & 0xff);
    return c;
  };
  std::vector<train::CompactLinear> cases;
  {  // Codebook with ties, flat groups of 32, fp32 (no rounding of the dequantized value).
    train::CompactLinear w;
    w.kind = train::CompactKind::Codebook;
    w.rows = rows, w.cols = cols, w.code_bits = 4, w.group_size = 32, w.flat_groups = true;
    w.codes = codes4(rows * cols);
    w.codebook = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, -1.0f - 0x1p-8f, 0.5f + 0x1p-9f, -0.25f, 0.0f, 0.7f, -0.33f,
                  0.1f, -0.9f, 0.123456f, -0.654321f, 1.5f, -1.5f, 0.01f, -0.01f};
    w.scales.assign(size_t(rows * cols / 32), 1.0f);
    for (size_t i = 0; i < w.scales.size(); i += 2) w.scales[i] = scale(g);  // every other group exact ties
    w.round_to = DType::F32;
    cases.push_back(w);
    w.round_to = DType::BF16;  // already bf16: the rounding is exact
    cases.push_back(w);
    w.round_to = DType::F16;
    cases.push_back(w);
  }
  {  // Int codes of 8 bits, per-row groups of 32 through a permuted g_idx, zero-points.
    train::CompactLinear w;
    w.kind = train::CompactKind::Int;
    w.rows = rows, w.cols = cols, w.code_bits = 8, w.group_size = 32, w.flat_groups = false;
    w.codes.resize(size_t(rows * cols));
    for (auto& b : w.codes) b = uint8_t(g() & 0xff);
    const int64_t groups = rows * (cols / 32);
    for (int64_t i = 0; i < groups; ++i) {
      w.scales.push_back(scale(g) * 0.01f);
      w.zeros.push_back(float(g() % 256));
    }
    for (int64_t c = 0; c < cols; ++c) w.g_idx.push_back(int32_t((c * 7) % cols / 32));
    w.round_to = DType::F32;
    cases.push_back(w);
  }
  {  // fp16 storage.
    train::CompactLinear w;
    w.kind = train::CompactKind::Half16;
    w.rows = rows, w.cols = cols, w.half_dtype = DType::F16;
    std::normal_distribution<float> d(0.0f, 0.3f);
    for (int64_t i = 0; i < rows * cols; ++i) w.half.push_back(f32_to_f16(d(g)));
    cases.push_back(w);
  }
  int n_case = 0;
  for (const train::CompactLinear& w : cases) {
    SCOPED_TRACE("case " + std::to_string(n_case++));
    std::vector<float> f32(size_t(w.numel()));
    train::expand_compact_linear(w, f32.data());
    std::vector<uint16_t> want(f32.size());
    for (size_t i = 0; i < f32.size(); ++i) want[i] = f32_to_bf16(f32[i]);
    // The view's buffers (empty vectors stay null).
    cuda::CompactWeightView v;
    v.rows = w.rows, v.cols = w.cols;
    cuda::DeviceBuffer<uint16_t> half;
    cuda::DeviceBuffer<uint8_t> codes;
    cuda::DeviceBuffer<float> scales, zeros, codebook;
    cuda::DeviceBuffer<int32_t> g_idx;
    if (w.kind == train::CompactKind::Half16) {
      v.kind = cuda::CompactWeightView::kHalf16;
      half = up(w.half);
      v.half = half.get();
      v.half_is_bf16 = w.half_dtype == DType::BF16;
    } else {
      v.kind = w.kind == train::CompactKind::Int ? cuda::CompactWeightView::kInt : cuda::CompactWeightView::kCodebook;
      codes = up(w.codes);
      v.codes = codes.get();
      v.code_bits = w.code_bits;
      scales = up(w.scales);
      v.scales = scales.get();
      if (!w.zeros.empty()) zeros = up(w.zeros), v.zeros = zeros.get();
      if (!w.codebook.empty()) codebook = up(w.codebook), v.codebook = codebook.get();
      if (!w.g_idx.empty()) g_idx = up(w.g_idx), v.g_idx = g_idx.get();
      v.group_size = w.group_size;
      v.flat_groups = w.flat_groups;
      v.round_to = w.round_to == DType::BF16 ? 1 : w.round_to == DType::F16 ? 2 : 0;
    }
    cuda::DeviceBuffer<uint16_t> out(want.size());
    cuda::expand_compact_weight_bf16(v, out.get(), s);
    const std::vector<uint16_t> got = test::down(out, want.size());
    int64_t differ = 0;
    for (size_t i = 0; i < want.size(); ++i) differ += got[i] != want[i];
    EXPECT_EQ(differ, 0) << "of " << want.size() << " values";
    // The cases do exercise the rounding: some fp32 values are not bf16 values.
    if (w.round_to != DType::BF16) {
      EXPECT_NE(bf16_rounded(f32), f32) << "every value was a bf16 value already";
    }
  }
}

// The fast modes' attention (its products as strided-batched GEMMs, cuda::attention_gemm_f32)
// against the fp32 mode's kernels, forward and backward, for grouped-query (8 heads on 2) and
// plain multi-head attention at lengths off any tile. Pure fp32 SGEMMs: the same fp32 arithmetic
// in another summation order, so the kernels' bar against the CPU, 1e-5 of each tensor's largest
// value. TF32 operands (LOWBIT_TRAIN_ATTENTION=tf32): within 1e-2 of it (operands rounded to 10-bit
// mantissas, relative error 2^-11 each). CUBLAS_COMPUTE_32F_FAST_TF32 allows tensor cores without
// requiring them: at these small shapes cuBLAS ran fp32 kernels on an H100 (results equal to the
// SGEMMs'), so that the TF32 path runs on tensor cores is shown by the QLoRA bench's attention
// time, not here.
TEST(CudaTrainPrecision, GemmAttentionMatchesTheKernels) {
  REQUIRE_GPU();
  const cudaStream_t s = ctx().stream();
  struct Shape {
    int64_t T, nh, nkv, hd;
  };
  for (const Shape& sh : {Shape{70, 8, 2, 32}, Shape{33, 4, 4, 16}, Shape{1, 2, 1, 8}}) {
    SCOPED_TRACE("T " + std::to_string(sh.T) + ", " + std::to_string(sh.nh) + " heads on " + std::to_string(sh.nkv));
    const int64_t qd = sh.nh * sh.hd, kvd = sh.nkv * sh.hd, P = sh.nh * sh.T * sh.T;
    const auto q = test::randn(size_t(sh.T * qd), 1), k = test::randn(size_t(sh.T * kvd), 2),
               v = test::randn(size_t(sh.T * kvd), 3), dout = test::randn(size_t(sh.T * qd), 4);
    auto gq = up(q), gk = up(k), gv = up(v), gdo = up(dout);
    std::vector<std::vector<float>> results[3];  // kernels, fp32 SGEMMs, TF32 GEMMs
    for (int gemm = 0; gemm < 3; ++gemm) {
      cuda::DeviceBuffer<float> out{size_t(sh.T * qd)}, dq{size_t(sh.T * qd)}, dk{size_t(sh.T * kvd)},
          dv{size_t(sh.T * kvd)}, probs{size_t(P)}, dprobs{size_t(P)};
      if (gemm) {
        const bool tf32 = gemm == 2;
        cuda::attention_gemm_f32(ctx(), gq.get(), gk.get(), gv.get(), out.get(), probs.get(), sh.T, sh.nh, sh.nkv,
                                 sh.hd, tf32);
        cuda::attention_backward_gemm_f32(ctx(), gq.get(), gk.get(), gv.get(), gdo.get(), dq.get(), dk.get(),
                                          dv.get(), probs.get(), dprobs.get(), sh.T, sh.nh, sh.nkv, sh.hd, tf32);
      } else {
        cuda::attention_f32(gq.get(), gk.get(), gv.get(), out.get(), probs.get(), sh.T, sh.nh, sh.nkv, sh.hd, s);
        cuda::attention_backward_f32(gq.get(), gk.get(), gv.get(), gdo.get(), dq.get(), dk.get(), dv.get(),
                                     probs.get(), dprobs.get(), sh.T, sh.nh, sh.nkv, sh.hd, s);
      }
      results[gemm] = {test::down(out, size_t(sh.T * qd)), test::down(dq, size_t(sh.T * qd)),
                       test::down(dk, size_t(sh.T * kvd)), test::down(dv, size_t(sh.T * kvd))};
    }
    const char* names[] = {"out", "dq", "dk", "dv"};
    for (int i = 0; i < 4; ++i) {
      // One position: the softmax is the constant 1, so the scores' gradient P (dP - sum P dP)
      // vanishes and with it dq and dk (up to the rounding of dP's two dot products, each of hd
      // terms: bounded by 1e-5 of hd max|dout| max|v|), a zero the relative bar cannot measure.
      if (sh.T == 1 && (i == 1 || i == 2)) {
        const auto amax = [](const std::vector<float>& x) {
          float m = 0;
          for (float e : x) m = std::max(m, std::fabs(e));
          return m;
        };
        const double bound = 1e-5 * double(sh.hd) * amax(dout) * amax(v) * amax(i == 1 ? k : q);
        for (int gemm = 0; gemm < 3; ++gemm)
          EXPECT_LE(amax(results[gemm][i]), gemm == 2 ? 1000 * bound : bound)
              << names[i] << (gemm == 2 ? " (tf32)" : gemm ? " (gemm)" : " (kernels)");
        continue;
      }
      EXPECT_LT(test::rel_err(results[1][i], results[0][i]), 1e-5) << names[i];
      EXPECT_LT(test::rel_err(results[2][i], results[0][i]), 1e-2) << names[i] << " (tf32)";
    }
  }
}

// The engine's bf16 scratch for whole bases: the random model's bf16 weights (16-bit storage) and
// their QLoRA NF4 + DQ, IR-QLoRA ICQ and 4-bit RTN quantizations (dequantized values rounded to
// bf16 already), stories260K's fp32 weights (F32 linears, rounded by the cast) and their NF4
// (dequantized in fp32): every linear equals the bf16 rounding of the fp32 weight the CPU trains
// over (block_weights), bit for bit; the device holds what gpu_model_bytes() predicts for the
// bf16 mode (bf16 head, a bf16 scratch for every linear).
TEST(CudaTrainPrecision, Bf16BaseIsTheRoundedCpuWeight) {
  REQUIRE_GPU();
  test::TempDir dir;
  const std::string path = write_random_gqa_config(dir);
  std::vector<std::pair<std::string, std::string>> bases = {
      {path, "nf4:dq=1"}, {path, "icq:tau_range=0.1,tau_n=100,dq=1"}, {path, "rtn:w=4,g=64"}, {path, ""}};
  if (std::filesystem::exists(stories())) {
    bases.emplace_back(stories(), "");
    bases.emplace_back(stories(), "nf4:dq=1");
  }
  for (const auto& [base_path, spec] : bases) {
    SCOPED_TRACE(base_path + " " + spec);
    const std::unique_ptr<LlamaModel> model = load_base(base_path, spec);
    const LlamaConfig& c = model->config();
    const size_t before = cuda::device_bytes_in_use();
    train::CudaLlamaBackward gpu(*model, 0, ComputePrecision::Bf16);
    EXPECT_EQ(gpu.compute(), ComputePrecision::Bf16);
    const train::GpuModelBytes held = gpu.model_bytes();
    EXPECT_EQ(cuda::device_bytes_in_use() - before, size_t(held.total())) << "the model's buffers, no others";
    EXPECT_EQ(held.head, 2 * c.vocab_size * c.hidden_size);
    const train::CompactBase base = train::make_compact_base(*model);
    EXPECT_EQ(held.total(), base.bytes(c, ComputePrecision::Bf16).total());
    ASSERT_TRUE(gpu.uniform_layout().has_value());
    EXPECT_EQ(held.total(), train::gpu_model_bytes(c, *gpu.uniform_layout(), ComputePrecision::Bf16).total());
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      auto w = model->block_weights(l);
      for (LinearKind k : kAllLinears) {
        const Tensor& f = (*w)[k];
        ASSERT_EQ(f.dtype(), DType::F32);
        const std::vector<float> want = bf16_rounded(std::vector<float>(f.data_as<float>(), f.data_as<float>() + f.numel()));
        const std::vector<float> got = gpu.download_weight(l, k);
        ASSERT_EQ(got.size(), want.size());
        EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0) << "layer " << l << " " << linear_name(k);
      }
    }
  }
}

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

struct StepOut {
  double loss = 0;
  std::vector<std::pair<std::string, std::vector<float>>> grads;  // for_each order
};

StepOut gpu_step(const LlamaModel& m, ComputePrecision p, const train::LoraAdapters& lora, const train::Batch& batch) {
  train::CudaLlamaBackward gpu(m, 0, p);
  train::StepOptions so;
  so.dropout_seed = 0x5eed;
  so.loss_scale = 1.0 / double(batch.num_targets());
  train::LoraAdapters g = lora.zeros_like();
  StepOut out;
  out.loss = gpu.forward_backward(&lora, batch, so, &g, nullptr).mean_loss();
  g.for_each([&](const std::string& key, const std::vector<float>& v) { out.grads.emplace_back(key, v); });
  return out;
}

struct Bars {
  double loss, norm, cosine;
};
constexpr Bars kTf32 = {1e-3, 2e-3, 0.99999};
constexpr Bars kBf16 = {5e-3, 1e-2, 0.999};

// One step in precision p against the same step in fp32 on the GPU: the loss, each A and B
// gradient's norm and direction, the whole gradient's norm.
void expect_near_fp32(const LlamaModel& m, ComputePrecision p, const train::LoraAdapters& lora,
                      const train::Batch& batch) {
  const Bars bar = p == ComputePrecision::Bf16 ? kBf16 : kTf32;
  const StepOut want = gpu_step(m, ComputePrecision::Fp32, lora, batch);
  const StepOut got = gpu_step(m, p, lora, batch);
  EXPECT_NEAR(got.loss, want.loss, bar.loss * want.loss);
  ASSERT_EQ(got.grads.size(), want.grads.size());
  double worst_norm = 0, worst_cos = 1, n2_got = 0, n2_want = 0;
  for (size_t i = 0; i < got.grads.size(); ++i) {
    const auto& [key, g] = got.grads[i];
    const std::vector<float>& w = want.grads[i].second;
    for (float x : g) ASSERT_TRUE(std::isfinite(x)) << key;
    n2_got += l2(g) * l2(g);
    n2_want += l2(w) * l2(w);
    if (g.size() == 1) continue;  // IEC's scalars: see the tolerances above
    ASSERT_GT(l2(w), 0) << key;
    const double dn = std::fabs(l2(g) - l2(w)) / l2(w), cs = cosine(g, w);
    worst_norm = std::max(worst_norm, dn);
    worst_cos = std::min(worst_cos, cs);
    EXPECT_LT(dn, bar.norm) << key;
    EXPECT_GT(cs, bar.cosine) << key;
  }
  EXPECT_NEAR(std::sqrt(n2_got), std::sqrt(n2_want), bar.norm * std::sqrt(n2_want));
  std::printf("%s: loss %.7f (fp32 %.7f); worst gradient norm error %.3g, lowest cosine %.7f over %zu tensors\n",
              train::compute_precision_name(p), got.loss, want.loss, worst_norm, worst_cos, got.grads.size());
}

// tf32 and bf16 steps against fp32: the random GQA model (bf16 weights; LoRA dropout 0.1, and
// its NF4 + DQ base with IEC's scalars) and stories260K under QLoRA's NF4 + DQ base; with the
// attention's products as fp32 SGEMMs (the default) and on TF32 tensor cores
// (LOWBIT_TRAIN_ATTENTION=tf32, read when an engine is built; the fp32 reference ignores it).
TEST(CudaTrainPrecision, Tf32AndBf16GradientsNearFp32) {
  REQUIRE_GPU();
  test::TempDir dir;
  const std::string path = write_random_gqa_config(dir);
  struct Case {
    std::string name, path, base;
    double dropout;
    bool iec;
  };
  std::vector<Case> cases = {{"random GQA, dropout 0.1", path, "", 0.1, false},
                             {"random GQA NF4, IEC", path, "nf4:dq=1", 0.0, true}};
  if (std::filesystem::exists(stories())) cases.push_back({"stories260K NF4", stories(), "nf4:dq=1", 0.05, false});
  for (const Case& cs : cases) {
    SCOPED_TRACE(cs.name);
    const std::unique_ptr<LlamaModel> model = load_base(cs.path, cs.base);
    const LlamaConfig& c = model->config();
    const train::LoraAdapters lora = random_lora(c, cs.dropout, 3, cs.iec && c.hidden_size % 8 == 0);
    const train::Batch batch = random_batch(c.vocab_size, 41);
    for (const char* attention : {"fp32", "tf32"}) {
      SCOPED_TRACE(std::string("attention ") + attention);
      const test::ScopedEnv env("LOWBIT_TRAIN_ATTENTION", attention);
      for (ComputePrecision p : {ComputePrecision::Tf32, ComputePrecision::Bf16}) {
        SCOPED_TRACE(train::compute_precision_name(p));
        expect_near_fp32(*model, p, lora, batch);
      }
    }
  }
}

// Within one optimizer step the bf16 engine keeps the adapters and sums the micro-batches'
// gradients on the device, as the fp32 one does: the same gradients, bit for bit, as adding each
// call's on the host (the products are deterministic for the same shapes and inputs).
TEST(CudaTrainPrecision, Bf16MicroBatchesOfOneStepStayOnTheGpu) {
  REQUIRE_GPU();
  test::TempDir dir;
  LlamaModel model(open_checkpoint(write_random_gqa_config(dir)));
  const LlamaConfig& c = model.config();
  const train::LoraAdapters lora = random_lora(c, 0.1, 10, true);
  const train::Batch micro[3] = {random_batch(c.vocab_size, 31), random_batch(c.vocab_size, 32),
                                 random_batch(c.vocab_size, 33)};
  train::CudaLlamaBackward gpu(model, 0, ComputePrecision::Bf16);
  train::LoraAdapters g_host = lora.zeros_like(), g_device = lora.zeros_like();
  train::StepOptions so;
  expect_device_sum_equals_host_sum(gpu, lora, micro, so, g_host, g_device);
}

// `lowbit finetune --device cuda` computes in bf16 unless told (--compute), records it in the
// summary and in the run's identity (a checkpoint of an fp32 run does not resume as a bf16 one),
// and its loss curve follows the fp32 run's (QLoRA on stories260K, as test_cuda_train.cpp's
// CudaFinetune runs it).
TEST(CudaTrainPrecision, FinetuneDefaultsToBf16) {
  REQUIRE_GPU();
  const std::string alpaca = test::data_dir() + "/alpaca/alpaca_5000.json";
  LOWBIT_REQUIRE_PATH(stories());
  LOWBIT_REQUIRE_PATH(alpaca);
  test::TempDir dir;
  train::FinetuneOptions o = test::small_alpaca_finetune(stories(), alpaca, "qlora:r=8,alpha=16,dropout=0.05", 4, "cuda");
  const train::FinetuneResult bf16 = train::run_finetune(o);
  train::FinetuneOptions o32 = o;
  o32.compute = "fp32";
  o32.out = dir / "fp32";
  const train::FinetuneResult fp32 = train::run_finetune(o32);
  EXPECT_EQ(bf16.summary["compute"], "bf16");
  EXPECT_EQ(bf16.summary["run"]["compute"], "bf16");
  EXPECT_EQ(fp32.summary["compute"], "fp32");
  EXPECT_FALSE(fp32.summary["run"].contains("compute")) << "an fp32 run keeps its identity from before the option";
  const nlohmann::json& lb = bf16.summary["log"];
  const nlohmann::json& lf = fp32.summary["log"];
  ASSERT_EQ(lb.size(), 4u);
  ASSERT_EQ(lf.size(), lb.size());
  for (size_t s = 0; s < lb.size(); ++s) {
    const double want = lf[s]["loss"].get<double>(), got = lb[s]["loss"].get<double>();
    std::printf("step %zu: loss bf16 %.7f fp32 %.7f\n", s + 1, got, want);
    EXPECT_NEAR(got, want, 1e-2 * want) << "step " << s + 1;
  }
  // The bf16 mode's memory report: bf16 head and scratch, as predicted.
  const nlohmann::json& m = bf16.summary["gpu_memory"];
  EXPECT_EQ(m["model_bytes"], m["model_bytes_predicted"]);
  // The fp32 run's checkpoint is another run's for the default precision.
  train::FinetuneOptions again = o;
  again.out = o32.out;
  again.resume = true;
  EXPECT_NE(error_text([&] { train::run_finetune(again); }).find("its compute is absent, this run's \"bf16\""),
            std::string::npos);
}

// LOWBIT_TRAIN_PROFILE=1 times a step's phases (events on the engine's stream): every phase of a
// LoRA step appears once, the times are not negative and sum to no more than the call's wall time, and a
// second read starts from zero; without the variable nothing is timed.
TEST(CudaTrainPrecision, PhaseTiming) {
  REQUIRE_GPU();
  test::TempDir dir;
  LlamaModel model(open_checkpoint(write_random_gqa_config(dir)));
  const LlamaConfig& c = model.config();
  const train::LoraAdapters lora = random_lora(c, 0.0, 4);
  const train::Batch batch = random_batch(c.vocab_size, 12);
  train::LoraAdapters g = lora.zeros_like();
  {
    unsetenv("LOWBIT_TRAIN_PROFILE");
    train::CudaLlamaBackward gpu(model, 0, ComputePrecision::Bf16);
    EXPECT_FALSE(gpu.profiling());
    gpu.forward_backward(&lora, batch, {}, &g, nullptr);
    EXPECT_TRUE(gpu.take_phase_seconds().empty());
  }
  setenv("LOWBIT_TRAIN_PROFILE", "1", 1);
  for (ComputePrecision p : {ComputePrecision::Fp32, ComputePrecision::Bf16}) {
    SCOPED_TRACE(train::compute_precision_name(p));
    train::CudaLlamaBackward gpu(model, 0, p);
    ASSERT_TRUE(gpu.profiling());
    const auto t0 = std::chrono::steady_clock::now();
    gpu.forward_backward(&lora, batch, {}, &g, nullptr);
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::vector<train::PhaseSeconds> phases = gpu.take_phase_seconds();
    std::set<std::string> names;
    double sum = 0;
    for (const auto& ph : phases) {
      EXPECT_TRUE(names.insert(ph.name).second) << "phase '" << ph.name << "' twice";
      EXPECT_GE(ph.seconds, 0) << ph.name;
      sum += ph.seconds;
      std::printf("  %-26s %.6f s\n", ph.name.c_str(), ph.seconds);
    }
    for (const char* want : {"forward GEMMs", "backward GEMMs", "attention", "loss/LM head",
                             "norms/RoPE/SwiGLU/casts", "host<->device transfers"})
      EXPECT_EQ(names.count(want), 1u) << want;
    // The random model's bf16 linears expand before each use, in either mode.
    EXPECT_EQ(names.count("base expansion"), 1u);
    EXPECT_GT(sum, 0);
    EXPECT_LE(sum, wall);
    EXPECT_TRUE(gpu.take_phase_seconds().empty()) << "the second read starts from zero";
  }
  unsetenv("LOWBIT_TRAIN_PROFILE");
}

// The bf16 engine does not hold the fp32 LM head and refuses it with an error naming it; step
// hooks (DB-LLM's distillation) run in it: with no hooks set, a hooked step is the plain step.
TEST(CudaTrainPrecision, Bf16RefusesTheFp32HeadAndRunsHooks) {
  REQUIRE_GPU();
  test::TempDir dir;
  LlamaModel model(open_checkpoint(write_random_gqa_config(dir)));
  const train::Batch batch = random_batch(model.config().vocab_size, 5);
  train::CudaLlamaBackward gpu(model, 0, ComputePrecision::Bf16);
  EXPECT_NE(error_text([&] { (void)gpu.lm_head(); }).find("fp32 LM head"), std::string::npos);
  const double hooked = gpu.forward_backward_hooked(batch, {}).mean_loss();
  // Still usable: the loss alone, the hooked step's (the same bf16 forward), near the fp32 engine's.
  const double own = gpu.forward_loss(nullptr, batch).mean_loss();
  EXPECT_EQ(hooked, own);
  const double want = train::CudaLlamaBackward(model, 0).forward_loss(nullptr, batch).mean_loss();
  EXPECT_NEAR(own, want, kBf16.loss * want);
}

}  // namespace
}  // namespace lowbit
