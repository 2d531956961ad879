// The CUDA backend against its CPU twins (ggml's test-backend-ops habit): every op over shapes on
// both sides of its kernels' tile edges, the model's logits, perplexity windows, multiple-choice
// scores and GPTQ. Skipped when no GPU is present.
#include "backend/cuda/gptq.cuh"
#include "calib/block_driver_cuda.h"
#include "backend/cuda/ops.cuh"
#include "backend/ops.h"
#include "core/error.h"
#include "eval/cuda_eval.h"
#include "eval/kl_divergence.h"
#include "eval/multiple_choice.h"
#include "eval/perplexity.h"
#include "formats/checkpoint.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "model/cuda_model.h"
#include "quant/activation_quant.h"
#include "quant/gptq.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "quant/gptq_cuda.h"
#include "test_util.h"
#include "cuda_test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

namespace lowbit {
namespace {

using cuda::bf16;
using cuda::DeviceBuffer;

cuda::Context& ctx() {
  static cuda::Context c(0);
  return c;
}

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Values exactly representable in bf16, so that both sides start from the same numbers.
std::vector<float> round_bf16(std::vector<float> v) {
  for (auto& x : v) x = bf16_to_f32(f32_to_bf16(x));
  return v;
}

DeviceBuffer<bf16> to_device_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
  DeviceBuffer<bf16> d(v.size());
  cuda::upload(d.get(), reinterpret_cast<const bf16*>(h.data()), v.size(), ctx().stream());
  ctx().synchronize();
  return d;
}
std::vector<float> from_device_bf16(const DeviceBuffer<bf16>& d, size_t n) {
  std::vector<uint16_t> h(n);
  cuda::download(reinterpret_cast<bf16*>(h.data()), d.get(), n, ctx().stream());
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = bf16_to_f32(h[i]);
  return v;
}
template <typename T>
DeviceBuffer<T> to_device(const std::vector<T>& v) {
  DeviceBuffer<T> d(v.size());
  cuda::upload(d.get(), v.data(), v.size(), ctx().stream());
  ctx().synchronize();
  return d;
}
template <typename T>
std::vector<T> from_device(const DeviceBuffer<T>& d, size_t n) {
  std::vector<T> v(n);
  cuda::download(v.data(), d.get(), n, ctx().stream());
  return v;
}

// n windows of `len` token ids below 512 (stories260K's vocabulary).
std::vector<std::vector<int32_t>> random_windows(int n, int64_t len, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<std::vector<int32_t>> windows(static_cast<size_t>(n), std::vector<int32_t>(static_cast<size_t>(len)));
  for (auto& w : windows)
    for (auto& x : w) x = int32_t(g() % 512);
  return windows;
}

double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

TEST(CudaOps, RmsNorm) {
  REQUIRE_GPU();
  for (int64_t dim : {64, 512, 4096, 5000, 1030}) {  // 1030: not a multiple of 4 (the scalar kernel)
    const int64_t rows = 7;
    auto x = randn(size_t(rows * dim), 1, 3.0f);
    auto w = round_bf16(randn(size_t(dim), 2));
    std::vector<float> want(x.size());
    ref::rmsnorm(x.data(), w.data(), want.data(), rows, dim, 1e-5f);
    auto dx = to_device(x);
    auto dw = to_device_bf16(w);
    DeviceBuffer<bf16> dy(x.size());
    cuda::rmsnorm(dx.get(), dw.get(), dy.get(), rows, dim, 1e-5f, ctx().stream());
    // One bf16 rounding of the output: relative error <= 2^-8.
    EXPECT_LT(rel_err(from_device_bf16(dy, x.size()), want), 4e-3) << dim;
  }
}

// The stacked gate/up projection's rows [gate | up], in place, 8-wide and scalar.
TEST(CudaOps, SwigluRowsMatchesCpu) {
  REQUIRE_GPU();
  for (auto [rows, F] : std::vector<std::array<int64_t, 2>>{{1, 8}, {3, 5}, {7, 1792}, {65, 136}}) {
    auto gu = round_bf16(randn(size_t(rows * 2 * F), 12, 2.0f));
    std::vector<float> want(size_t(rows * F));
    for (int64_t r = 0; r < rows; ++r)
      ref::swiglu(gu.data() + r * 2 * F, gu.data() + r * 2 * F + F, want.data() + r * F, F);
    auto d = to_device_bf16(gu);
    cuda::swiglu_rows(d.get(), rows, F, ctx().stream());
    const auto all = from_device_bf16(d, gu.size());
    std::vector<float> got(size_t(rows * F)), up_after(size_t(rows * F)), up_before(size_t(rows * F));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < F; ++c) {
        got[size_t(r * F + c)] = all[size_t(r * 2 * F + c)];
        up_after[size_t(r * F + c)] = all[size_t(r * 2 * F + F + c)];
        up_before[size_t(r * F + c)] = gu[size_t(r * 2 * F + F + c)];
      }
    EXPECT_LT(rel_err(got, want), 4e-3) << rows << "x" << F;
    EXPECT_EQ(up_after, up_before) << "the up half is left as it was";
  }
}

// hd 128 takes the two-pair kernel, hd 6 the scalar one.
TEST(CudaOps, RopeMatchesCpu) {
  REQUIRE_GPU();
  for (int64_t hd : {128, 6}) {
    LlamaConfig c;
    c.hidden_size = 2 * hd;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 1;
    c.head_dim = hd;
    c.rope_theta = 500000;
    c.max_position_embeddings = 300;
    const RopeTable rt = make_rope_table(c, 300);
    for (int64_t pos0 : {0, 37}) {
      const int64_t B = 2, T = 70, heads = 2, ld = heads * hd;
      auto x = round_bf16(randn(size_t(B * T * ld), 5));
      std::vector<float> want = x;
      for (int64_t b = 0; b < B; ++b) ref::rope(want.data() + b * T * ld, T, heads, ld, rt, pos0);
      auto dx = to_device_bf16(x);
      auto dc = to_device(rt.cos), ds = to_device(rt.sin);
      cuda::rope(dx.get(), B, T, heads, hd, ld, dc.get(), ds.get(), pos0, ctx().stream());
      EXPECT_LT(rel_err(from_device_bf16(dx, x.size()), want), 4e-3) << "hd " << hd << " pos0 " << pos0;
    }
  }
}

// Attention against the scalar reference, across the flash kernel's 128-query and 64-key tile
// edges (and its 16-row m-tiles), with grouped heads, batches and cached keys, through the plain
// kernel's head dims, and with q, k and v read from rows of the stacked q/k/v projection.
// Both tensor-core kernels for head dim 128 where the GPU has the Hopper one (the mma.sync kernel
// runs for head dim 64 either way).
TEST(CudaOps, AttentionAcrossTileEdges) {
  REQUIRE_GPU();
  std::vector<cuda::AttentionKernel> kernels = {cuda::AttentionKernel::MmaSync};
  if (cuda::wgmma_attention_available()) kernels.push_back(cuda::AttentionKernel::Wgmma);
  for (const cuda::AttentionKernel kernel : kernels) {
  cuda::set_attention_kernel(kernel);
  const char* kernel_name = kernel == cuda::AttentionKernel::Wgmma ? "wgmma" : "mma.sync";
  struct Shape {
    int64_t B, T, past, nh, nkv, hd;
    bool stacked = false;  // q, k, v as the column blocks of one [B*T, qd + 2 kvd] matrix
    bool rope = false;     // q rotated by attention itself (against rope() then attention)
  };
  for (const Shape s : {Shape{1, 1, 0, 2, 2, 64}, Shape{1, 63, 0, 4, 1, 64}, Shape{2, 64, 0, 8, 2, 128},
                        Shape{1, 65, 0, 8, 2, 128}, Shape{3, 130, 0, 4, 4, 128}, Shape{1, 7, 100, 4, 2, 128},
                        Shape{1, 64, 64, 2, 1, 64}, Shape{1, 200, 17, 32, 8, 128}, Shape{1, 127, 0, 4, 1, 128},
                        Shape{2, 128, 0, 4, 2, 128}, Shape{1, 129, 0, 2, 1, 64}, Shape{1, 257, 3, 8, 2, 128},
                        Shape{1, 128, 128, 2, 1, 128}, Shape{1, 17, 0, 2, 2, 128},
                        Shape{2, 300, 0, 8, 2, 128, true}, Shape{1, 70, 0, 4, 4, 64, true},
                        Shape{2, 200, 0, 8, 2, 128, true, true}, Shape{1, 150, 30, 4, 2, 64, false, true},
                        Shape{1, 260, 5, 8, 2, 128, false, true}, Shape{2, 384, 0, 32, 8, 128, true, true},
                        Shape{1, 40, 9, 4, 2, 32, false, true},
                        // the plain kernel: other head dims, across its 4-query blocks and 32-key lanes
                        Shape{2, 33, 0, 8, 8, 8}, Shape{1, 70, 5, 4, 2, 32}, Shape{1, 9, 40, 2, 1, 96}}) {
    const int64_t qd = s.nh * s.hd, kvd = s.nkv * s.hd, keys = s.past + s.T;
    auto q = round_bf16(randn(size_t(s.B * s.T * qd), 6, 2.0f));
    auto k = round_bf16(randn(size_t(s.B * keys * kvd), 7, 2.0f));
    auto v = round_bf16(randn(size_t(s.B * keys * kvd), 8));
    LlamaConfig rc;
    rc.hidden_size = qd;
    rc.num_attention_heads = s.nh;
    rc.num_key_value_heads = s.nkv;
    rc.head_dim = s.hd;
    rc.rope_theta = 10000;
    rc.max_position_embeddings = keys;
    const RopeTable rt = make_rope_table(rc, keys);
    auto dcos = to_device(rt.cos), dsin = to_device(rt.sin);
    std::vector<float> q_rot = q;
    if (s.rope)
      for (int64_t b = 0; b < s.B; ++b) ref::rope(q_rot.data() + b * s.T * qd, s.T, s.nh, qd, rt, s.past);
    std::vector<float> want(q.size());
    for (int64_t b = 0; b < s.B; ++b)
      ref::attention(q_rot.data() + b * s.T * qd, k.data() + b * keys * kvd, v.data() + b * keys * kvd,
                     want.data() + b * s.T * qd, s.T, s.nh, s.nkv, s.hd, s.past);
    DeviceBuffer<bf16> dout(q.size());
    if (s.stacked) {
      ASSERT_EQ(s.past, 0);
      const int64_t ld = qd + 2 * kvd, n = s.B * s.T;
      std::vector<float> qkv(size_t(n * ld));
      for (int64_t r = 0; r < n; ++r) {
        std::copy_n(q.data() + r * qd, qd, qkv.data() + r * ld);
        std::copy_n(k.data() + r * kvd, kvd, qkv.data() + r * ld + qd);
        std::copy_n(v.data() + r * kvd, kvd, qkv.data() + r * ld + qd + kvd);
      }
      auto d = to_device_bf16(qkv);
      cuda::attention(d.get(), d.get() + qd, d.get() + qd + kvd, dout.get(), s.B, s.T, 0, s.nh, s.nkv, s.hd, ld, ld,
                      qd, ctx().stream(), s.rope ? dcos.get() : nullptr, s.rope ? dsin.get() : nullptr);
    } else {
      auto dq = to_device_bf16(q), dk = to_device_bf16(k), dv = to_device_bf16(v);
      cuda::attention(dq.get(), dk.get(), dv.get(), dout.get(), s.B, s.T, s.past, s.nh, s.nkv, s.hd, qd, kvd, qd,
                      ctx().stream(), s.rope ? dcos.get() : nullptr, s.rope ? dsin.get() : nullptr);
    }
    // P and the output are rounded to bf16 (as in FlashAttention): ~2^-8 relative.
    EXPECT_LT(rel_err(from_device_bf16(dout, q.size()), want), 8e-3)
        << "B " << s.B << " T " << s.T << " past " << s.past << " nh " << s.nh << " nkv " << s.nkv << " hd " << s.hd
        << (s.stacked ? " stacked" : "") << (s.rope ? " rope" : "") << " kernel " << kernel_name;
  }
  }
  cuda::set_attention_kernel(cuda::AttentionKernel::Auto);
}

TEST(CudaOps, LinearGramAndNll) {
  REQUIRE_GPU();
  for (auto [M, N, K] : std::vector<std::array<int64_t, 3>>{{1, 7, 64}, {33, 130, 96}, {512, 512, 1792}}) {
    auto a = round_bf16(randn(size_t(M * K), 9)), w = round_bf16(randn(size_t(N * K), 10));
    std::vector<float> want(size_t(M * N));
    ref::linear(a.data(), w.data(), want.data(), M, K, N);
    auto da = to_device_bf16(a), dw = to_device_bf16(w);
    DeviceBuffer<float> dc(size_t(M * N));
    cuda::linear(ctx(), da.get(), dw.get(), dc.get(), M, N, K);
    EXPECT_LT(rel_err(from_device(dc, size_t(M * N)), want), 1e-5) << M << "x" << N << "x" << K;
    std::vector<double> g(size_t(K * K), 0.0);
    ref::gram_accumulate(a.data(), M, K, g.data());
    DeviceBuffer<float> dg(size_t(K * K));
    LB_CUDA_CHECK(cudaMemset(dg.get(), 0, dg.bytes()));
    cuda::gram_accumulate(ctx(), da.get(), dg.get(), M, K);
    std::vector<float> gf(g.begin(), g.end());
    EXPECT_LT(rel_err(from_device(dg, size_t(K * K)), gf), 1e-5);
    // C += A . W^T with A read from a wider matrix (row stride K + 24): the residual GEMMs; and
    // the Gram matrix of that strided A.
    const int64_t lda = K + 24;
    std::vector<float> wide(size_t(M * lda), 7.0f), c0 = randn(size_t(M * N), 13);
    for (int64_t r = 0; r < M; ++r) std::copy_n(a.data() + r * K, K, wide.data() + r * lda);
    std::vector<float> want_acc(size_t(M * N));
    for (size_t i = 0; i < want_acc.size(); ++i) want_acc[i] = c0[i] + want[i];
    auto dwide = to_device_bf16(wide);
    auto dacc = to_device(c0);
    cuda::linear(ctx(), dwide.get(), dw.get(), dacc.get(), M, N, K, /*accumulate=*/true, lda);
    EXPECT_LT(rel_err(from_device(dacc, size_t(M * N)), want_acc), 1e-5) << "accumulate " << M << "x" << N << "x" << K;
    LB_CUDA_CHECK(cudaMemset(dg.get(), 0, dg.bytes()));
    cuda::gram_accumulate(ctx(), dwide.get(), dg.get(), M, K, lda);
    EXPECT_LT(rel_err(from_device(dg, size_t(K * K)), gf), 1e-5) << "strided gram";
  }
  const int64_t rows = 6, V = 32000;
  auto logits = randn(size_t(rows * V), 11, 3.0f);
  std::fill(logits.begin() + 5 * V, logits.end(), 1.5f);  // all tied: argmax 0, NLL log V
  std::vector<int32_t> targets = {0, 17, 31999, 12345, 7, 9};
  std::vector<double> want(rows);
  ref::nll_rows(logits.data(), targets.data(), want.data(), rows, V);
  auto dl = to_device(logits);
  auto dt = to_device(targets);
  DeviceBuffer<float> dn(rows);
  DeviceBuffer<int32_t> da(rows);
  cuda::nll_rows(dl.get(), dt.get(), dn.get(), da.get(), rows, V, ctx().stream());
  const auto got = from_device(dn, rows);
  const auto arg = from_device(da, rows);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_NEAR(got[size_t(r)], want[size_t(r)], 1e-4) << r;
    const float* l = logits.data() + r * V;
    EXPECT_EQ(arg[size_t(r)], int32_t(std::max_element(l, l + V) - l)) << r;
  }
}

// KL-divergence rows on the GPU against the CPU's kld_rows (both fp64 from the same fp32 logits;
// only the summation order differs) and a plain fp64 NLL: random rows, rows whose argmax ties,
// a vocabulary that is not a multiple of the block, and a row equal to its base (KLD exactly 0).
TEST(CudaOps, KldRowsMatchCpu) {
  REQUIRE_GPU();
  const int64_t rows = 7, V = 49157;
  auto b = randn(size_t(rows * V), 21, 3.0f), q = randn(size_t(rows * V), 22, 3.0f);
  for (int64_t v = 0; v < V; ++v) q[size_t(v)] = b[size_t(v)] + 0.1f * q[size_t(v)];  // row 0: close to its base
  std::copy(b.begin() + 2 * V, b.begin() + 3 * V, q.begin() + 2 * V);                  // row 2: equal
  std::fill(b.begin() + 3 * V, b.begin() + 4 * V, 0.5f);                               // row 3: base all tied
  b[size_t(4 * V + 100)] = b[size_t(4 * V + 9000)] = 40.0f;                            // row 4: tie of two maxima
  q[size_t(4 * V + 100)] = q[size_t(4 * V + 9000)] = 40.0f;
  const std::vector<int32_t> targets = {0, 5, 49156, 1234, 100, 77, 9000};
  std::vector<double> want(rows);
  std::vector<uint8_t> want_agree(rows);
  kld_rows(b.data(), q.data(), rows, V, want.data(), want_agree.data());
  auto db = to_device(b), dq = to_device(q);
  auto dt = to_device(targets);
  DeviceBuffer<double> dk(rows), dnb(rows), dnq(rows);
  DeviceBuffer<uint8_t> da(rows);
  cuda::kld_rows(db.get(), dq.get(), dt.get(), dk.get(), da.get(), dnb.get(), dnq.get(), rows, V, ctx().stream());
  const auto got = from_device(dk, rows), nb = from_device(dnb, rows), nq = from_device(dnq, rows);
  const auto agree = from_device(da, rows);
  auto nll = [&](const std::vector<float>& l, int64_t r) {
    const float* x = l.data() + r * V;
    const double m = *std::max_element(x, x + V);
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(double(x[v]) - m);
    return m + std::log(s) - double(x[targets[size_t(r)]]);
  };
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_NEAR(got[size_t(r)], want[size_t(r)], 1e-12 + 1e-10 * want[size_t(r)]) << r;
    EXPECT_EQ(agree[size_t(r)], want_agree[size_t(r)]) << r;
    EXPECT_NEAR(nb[size_t(r)], nll(b, r), 1e-9) << r;
    EXPECT_NEAR(nq[size_t(r)], nll(q, r), 1e-9) << r;
  }
  EXPECT_EQ(got[2], 0.0);
  EXPECT_EQ(agree[4], 1);  // both maxima at 100 first
}

// Logits of the fixture models on the GPU against the CPU path and transformers.
TEST(CudaModel, LogitsMatchCpuAndTransformers) {
  REQUIRE_GPU();
  for (const char* name : {"llama3-mini-f32", "llama3-mini-bf16", "llama2-mini-f32", "linear-mini-f32"}) {
    const std::string dir = test::fixtures_dir() + "/models/" + name;
    LlamaModel model(open_checkpoint(dir));
    auto ref = SafetensorsFile::open(dir + "/logits.safetensors");
    const Tensor tokens = ref->tensor("tokens");
    std::vector<int32_t> ids(tokens.data_as<int32_t>(), tokens.data_as<int32_t>() + tokens.numel());
    const Tensor hf = ref->tensor("logits");
    const int64_t T = int64_t(ids.size()), V = model.config().vocab_size;
    CudaModel gpu(model, ctx());
    GpuKvCache cache = gpu.make_kv_cache(T);
    DeviceBuffer<bf16> rows;
    gpu.forward_cached(ids, cache, rows);
    DeviceBuffer<float> dl(size_t(T * V));
    gpu.lm_head(rows.get(), dl.get(), T);
    const auto got = from_device(dl, size_t(T * V));
    const Tensor cpu = model.forward(ids);
    double max_abs = 0, scale = 0;
    int64_t agree_hf = 0, agree_cpu = 0;
    for (int64_t t = 0; t < T; ++t) {
      const float* g = got.data() + t * V;
      const float* h = hf.data_as<float>() + t * V;
      const float* c = cpu.data_as<float>() + t * V;
      for (int64_t i = 0; i < V; ++i) {
        max_abs = std::max(max_abs, double(std::fabs(g[i] - h[i])));
        scale = std::max(scale, double(std::fabs(h[i])));
      }
      const int64_t ag = std::max_element(g, g + V) - g;
      agree_hf += ag == std::max_element(h, h + V) - h;
      agree_cpu += ag == std::max_element(c, c + V) - c;
    }
    std::printf("%-18s GPU vs transformers fp32: max |diff| %.4f (logits up to %.2f); top-1 agreement %ld/%ld "
                "(transformers), %ld/%ld (CPU)\n",
                name, max_abs, scale, long(agree_hf), long(T), long(agree_cpu), long(T));
    // bf16 activations through a few layers: errors of ~1% of the logits' range.
    EXPECT_LT(max_abs, 0.05 * scale) << name;
    EXPECT_GE(double(agree_hf), 0.95 * double(T)) << name;
  }
}

TEST(CudaModel, PerplexityWindowsMatchCpu) {
  REQUIRE_GPU();
  const std::string path = test::models_dir() + "/stories260K/stories260K.bin";
  LOWBIT_REQUIRE_PATH(path);
  LlamaModel model(open_checkpoint(path));
  const auto windows = random_windows(5, 256, 1);
  CudaModel gpu(model, ctx());
  const PerplexityResult a = perplexity_cuda(gpu, windows, 2);
  const PerplexityResult b = perplexity(model, windows);
  std::printf("stories260K ppl GPU %.4f CPU %.4f\n", a.ppl, b.ppl);
  EXPECT_NEAR(a.ppl, b.ppl, 0.01 * b.ppl);
}

// KL-divergence with both models on the GPU against the CPU path: stories260K and its RTN twin.
// The GPU's bf16 GEMMs move logits by ~1e-2, which moves a mean KLD of ~0.2 by well under 5%
// and flips the argmax at a few positions of the 765; a model against itself stays exactly 0.
TEST(CudaModel, KlDivergenceMatchesCpu) {
  REQUIRE_GPU();
  const std::string path = test::models_dir() + "/stories260K/stories260K.bin";
  LOWBIT_REQUIRE_PATH(path);
  const auto windows = random_windows(3, 256, 2);
  LlamaModel base(open_checkpoint(path));
  const Checkpoint source = open_checkpoint(path);
  LlamaModel work(source);
  auto method = make_method("rtn:w=4,g=32");
  LlamaModel q(quantized_checkpoint_in_memory(source, quantize_model(work, *method, nullptr, {}), {{"path", path}}));
  install_quantized_forward(q);
  CudaModel gpu_base(base, ctx()), gpu_q(q, ctx());
  const KlDivergenceResult a = kl_divergence_cuda(gpu_base, gpu_q, windows);
  const KlDivergenceResult b = kl_divergence(base, q, windows);
  std::printf("stories260K rtn:w=4,g=32 KLD GPU %.6f CPU %.6f, top-1 GPU %.4f CPU %.4f, p99 GPU %.4f CPU %.4f\n",
              a.kld.mean, b.kld.mean, a.kld.top1, b.kld.top1, a.kld.p99, b.kld.p99);
  EXPECT_EQ(a.kld.positions, b.kld.positions);
  EXPECT_GT(b.kld.mean, 0.01);
  EXPECT_NEAR(a.kld.mean, b.kld.mean, 0.05 * b.kld.mean);
  EXPECT_NEAR(a.kld.p99, b.kld.p99, 0.1 * b.kld.p99);
  EXPECT_NEAR(a.kld.top1, b.kld.top1, 0.03);
  // Random-token windows: PPL ~5e7 (mean NLL ~17.7 nats), where the GPU's bf16 moves the mean
  // NLL by ~0.01 nats (1.3% of the PPL on an H100).
  EXPECT_NEAR(std::log(a.ppl.ppl), std::log(b.ppl.ppl), 0.03);
  EXPECT_NEAR(std::log(a.base_ppl.ppl), std::log(b.base_ppl.ppl), 0.03);
  const KlDivergenceResult self = kl_divergence_cuda(gpu_base, gpu_base, windows);
  EXPECT_EQ(self.kld.mean, 0.0);
  EXPECT_EQ(self.kld.top1, 1.0);
}

// Multiple-choice scoring on the GPU, batched (the default there) and cached, against the CPU's
// cached scoring: stories260K and its tokenizer on generated items of 2-5 choices with contexts
// of 5-400 tokens (so batches of several padded lengths, and items whose choices share no
// prefix). bf16 GEMMs move a choice's log-likelihood by ~1e-2 per token.
TEST(CudaModel, MultipleChoiceMatchesCpu) {
  REQUIRE_GPU();
  const std::string path = test::models_dir() + "/stories260K/stories260K.bin";
  const std::string tp = test::models_dir() + "/stories260K/tok512.bin";
  LOWBIT_REQUIRE_PATH(path);
  LOWBIT_REQUIRE_PATH(tp);
  LlamaModel model(open_checkpoint(path));
  auto tok = load_tokenizer(tp);
  const std::vector<std::string> words = {"the", "girl", "saw", "a", "big", "dog", "and", "ran", "home", "happy",
                                          "Lily", "tree", "sun", "ball", "played", "with", "her", "mom", "."};
  std::mt19937 rng(7);
  auto sentence = [&](int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += (i ? " " : "") + words[rng() % words.size()];
    return s;
  };
  McTask task;
  task.name = "generated";
  for (int i = 0; i < 48; ++i) {
    McItem it;
    it.id = std::to_string(i);
    const int nc = 2 + int(rng() % 4);
    if (i % 3 == 2) {  // one continuation after different contexts (Winogrande's shape)
      for (int c = 0; c < nc; ++c) it.contexts.push_back(sentence(1 + int(rng() % 60)));
      it.continuations.push_back(" " + sentence(3));
      for (int c = 0; c < nc; ++c) it.choices.push_back(it.contexts[size_t(c)]);
    } else {
      it.contexts.push_back(sentence(1 + int(rng() % (i % 3 == 0 ? 150 : 20))));
      for (int c = 0; c < nc; ++c) it.continuations.push_back(" " + sentence(1 + int(rng() % 8)));
      it.choices = it.continuations;
    }
    it.gold = int(rng() % uint32_t(nc));
    task.items.push_back(it);
  }
  McOptions opt;
  const McResult cpu = evaluate_multiple_choice(model, *tok, task, opt);
  CudaModel gpu(model, ctx());
  auto backend = make_cuda_mc_backend(gpu, model.config().max_position_embeddings);
  const McResult batched = evaluate_multiple_choice(*backend, *tok, task, opt);
  opt.scoring = McScoring::Cached;
  const McResult cached = evaluate_multiple_choice(*backend, *tok, task, opt);
  double worst_b = 0, worst_c = 0;
  int64_t agree = 0;
  for (size_t i = 0; i < task.items.size(); ++i) {
    ASSERT_EQ(batched.items[i].loglik.size(), cpu.items[i].loglik.size());
    for (size_t r = 0; r < cpu.items[i].loglik.size(); ++r) {
      const double tol = 0.05 + 0.02 * std::fabs(cpu.items[i].loglik[r]);
      EXPECT_NEAR(batched.items[i].loglik[r], cpu.items[i].loglik[r], tol) << i << " " << r;
      EXPECT_NEAR(cached.items[i].loglik[r], cpu.items[i].loglik[r], tol) << i << " " << r;
      worst_b = std::max(worst_b, std::fabs(batched.items[i].loglik[r] - cpu.items[i].loglik[r]));
      worst_c = std::max(worst_c, std::fabs(cached.items[i].loglik[r] - cpu.items[i].loglik[r]));
    }
    agree += batched.items[i].pred == cpu.items[i].pred;
  }
  std::printf("generated MC (%zu items): max |loglik GPU - CPU| batched %.4f, cached %.4f; predictions agree "
              "%ld/%zu; %ld tokens run batched, %ld cached, %.3f s vs %.3f s\n",
              task.items.size(), worst_b, worst_c, long(agree), task.items.size(), long(batched.tokens_run),
              long(cached.tokens_run), batched.seconds, cached.seconds);
  EXPECT_GE(double(agree), 0.9 * double(task.items.size()));
}

// Activation fake quantization against quant/activation_quant.h on the same (bf16) values: per
// token, per tensor (one scale per sequence), static; rows read with a stride wider than the row.
TEST(CudaOps, FakeQuantizeMatchesCpu) {
  REQUIRE_GPU();
  const int64_t B = 3, T = 5, cols = 322, ld = 330, rows = B * T;
  auto x = round_bf16(randn(size_t(rows * ld), 31, 2.0f));
  for (int64_t c = 0; c < cols; ++c) x[size_t(4 * ld + c)] = 0.0f;  // an all-zero row: scale 1e-5 / qmax
  x[size_t(7 * ld + 3)] = 40.0f;                                     // an outlier
  DeviceBuffer<unsigned> seg(static_cast<size_t>(B));
  for (int bits : {8, 4}) {
    for (int mode = 0; mode < 3; ++mode) {
      std::vector<float> want = x;
      const float scale = mode == 2 ? 0.05f : 0.0f;
      for (int64_t b = 0; b < B; ++b) {
        std::vector<float> seq(size_t(T * cols));
        for (int64_t t = 0; t < T; ++t) std::copy_n(x.data() + (b * T + t) * ld, cols, seq.data() + t * cols);
        if (mode == 0) fake_quantize_per_token(seq.data(), T, cols, bits);
        if (mode == 1) fake_quantize_per_tensor(seq.data(), T * cols, bits);
        if (mode == 2) fake_quantize_with_scale(seq.data(), T * cols, bits, scale);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t c = 0; c < cols; ++c)
            want[size_t((b * T + t) * ld + c)] = bf16_to_f32(f32_to_bf16(seq[size_t(t * cols + c)]));
      }
      auto d = to_device_bf16(x);
      cuda::fake_quantize(d.get(), rows, cols, ld, bits, mode == 1 ? T : 1, scale, seg.get(), ctx().stream());
      EXPECT_EQ(from_device_bf16(d, x.size()), want) << "bits " << bits << " mode " << mode;
    }
  }
}

// A checkpoint with activation quantization evaluated on the GPU against the CPU forward (its
// hooks): per-token, per-tensor (one scale per sequence) and static scales that differ between the
// linears sharing an input (q/k/v, gate/up: one product per linear).
TEST(CudaModel, ActivationQuantizedPerplexityMatchesCpu) {
  REQUIRE_GPU();
  const std::string path = test::models_dir() + "/stories260K/stories260K.bin";
  LOWBIT_REQUIRE_PATH(path);
  const auto windows = random_windows(4, 256, 3);
  nlohmann::json statics = nlohmann::json::object();
  {
    Checkpoint probe = open_checkpoint(path);
    for (int64_t i = 0; i < probe.config.num_hidden_layers; ++i)
      for (LinearKind k : kAllLinears)
        statics[linear_weight_name(i, k).substr(0, linear_weight_name(i, k).size() - std::string(".weight").size())] =
            k == LinearKind::K ? 0.04 : k == LinearKind::Up ? 0.03 : k == LinearKind::Down ? 0.02 : 0.025;
  }
  for (const nlohmann::json& act : {nlohmann::json{{"bits", 8}, {"granularity", "per_token"}},
                                    nlohmann::json{{"bits", 8}, {"granularity", "per_tensor"}},
                                    nlohmann::json{{"bits", 8}, {"granularity", "per_tensor_static"},
                                                   {"static_scales", statics}}}) {
    Checkpoint ck = open_checkpoint(path);
    ck.quantization = {{"activation", act}};
    LlamaModel model(std::move(ck));
    install_quantized_forward(model);
    ASSERT_NE(model.forward_hooks(), nullptr);
    CudaModel gpu(model, ctx());
    const PerplexityResult a = perplexity_cuda(gpu, windows, 2);
    const PerplexityResult b = perplexity(model, windows);
    std::printf("stories260K %s: ppl GPU %.4f CPU %.4f\n", act["granularity"].get<std::string>().c_str(), a.ppl, b.ppl);
    EXPECT_NEAR(a.ppl, b.ppl, 0.01 * b.ppl) << act.dump();
  }
  // Without activation metadata, other forward hooks are refused rather than dropped.
  LlamaModel plain(open_checkpoint(path));
  plain.set_forward_hooks(std::make_shared<BlockHooks>());
  EXPECT_THROW({ CudaModel refused(plain, ctx()); }, Error);
}

// Per-column max |x| and sum |x|, accumulated over two calls, across the kernel's 256-row chunks.
TEST(CudaOps, ColumnAbsStatsMatchesCpu) {
  REQUIRE_GPU();
  const int64_t rows = 600, cols = 130, ld = 140, half = 259;
  auto x = round_bf16(randn(size_t(rows * ld), 41, 3.0f));
  std::vector<float> want_max(size_t(cols), 0.0f);
  std::vector<double> want_sum(size_t(cols), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      want_max[size_t(c)] = std::max(want_max[size_t(c)], std::fabs(x[size_t(r * ld + c)]));
      want_sum[size_t(c)] += std::fabs(x[size_t(r * ld + c)]);
    }
  auto d = to_device_bf16(x);
  DeviceBuffer<float> mx(static_cast<size_t>(cols)), sm(static_cast<size_t>(cols));
  LB_CUDA_CHECK(cudaMemset(mx.get(), 0, mx.bytes()));
  LB_CUDA_CHECK(cudaMemset(sm.get(), 0, sm.bytes()));
  cuda::column_abs_stats(d.get(), half, cols, ld, mx.get(), sm.get(), ctx().stream());
  cuda::column_abs_stats(d.get() + half * ld, rows - half, cols, ld, mx.get(), sm.get(), ctx().stream());
  EXPECT_EQ(from_device(mx, size_t(cols)), want_max);
  const auto got = from_device(sm, size_t(cols));
  for (int64_t c = 0; c < cols; ++c) EXPECT_NEAR(got[size_t(c)], want_sum[size_t(c)], 1e-5 * want_sum[size_t(c)]) << c;
}

// One block's input statistics with the model on the GPU against the CPU driver (bf16 against
// fp32 activations).
TEST(CudaCalib, InputStatsMatchCpu) {
  REQUIRE_GPU();
  const std::string path = test::models_dir() + "/stories260K/stories260K.bin";
  LOWBIT_REQUIRE_PATH(path);
  LlamaModel model(open_checkpoint(path));
  const auto windows = random_windows(6, 64, 5);
  const int64_t layer = 2;
  StatsRequest req;
  req.hessian = req.absmax = req.absmean = true;
  const auto want = layer_input_stats(model, windows, layer, req, nullptr);
  const auto got = layer_input_stats_cuda(model, windows, layer, req, nullptr, ctx());
  for (LinearKind k : kAllLinears) {
    const InputStats& a = *got.at(k);
    const InputStats& b = *want.at(k);
    ASSERT_EQ(a.dim, b.dim) << linear_name(k);
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_EQ(a.sequences, b.sequences);
    const std::vector<float> ha(a.hessian().begin(), a.hessian().end()), hb(b.hessian().begin(), b.hessian().end());
    const std::vector<float> ma(a.absmean.begin(), a.absmean.end()), mb(b.absmean.begin(), b.absmean.end());
    const double eh = rel_err(ha, hb), ex = rel_err(a.absmax, b.absmax), em = rel_err(ma, mb);
    std::printf("layer %ld %s: hessian %.2e absmax %.2e absmean %.2e\n", long(layer), linear_name(k), eh, ex, em);
    EXPECT_LT(eh, 2e-2) << linear_name(k);
    EXPECT_LT(ex, 2e-2) << linear_name(k);
    EXPECT_LT(em, 2e-2) << linear_name(k);
  }
}

// GPTQ on the GPU against the CPU implementation on the fixture's real weights and Hessian.
TEST(CudaGptq, MatchesCpu) {
  REQUIRE_GPU();
  const std::string fx = test::fixtures_dir() + "/quant/layer0.safetensors.zst";
  test::TempDir dir;
  test::spit(dir / "l0.safetensors", test::read_zst(fx));
  auto f = SafetensorsFile::open(dir / "l0.safetensors");
  const Tensor w = f->tensor("input.q_proj");
  const Tensor h = f->tensor("input.hessian");
  const int64_t rows = w.dim(0), cols = w.dim(1);
  std::vector<double> hd(h.data_as<float>(), h.data_as<float>() + h.numel());
  std::vector<float> wv(w.data_as<float>(), w.data_as<float>() + w.numel());
  for (bool act : {false, true})
    for (int64_t gs : {int64_t(128), int64_t(-1)}) {
      GptqOptions o;
      o.bits = 4;
      o.group_size = gs;
      o.act_order = act;
      const GptqResult cpu = gptq_quantize(wv.data(), rows, cols, hd, o, DType::BF16);
      auto dw = to_device_bf16(wv);
      std::vector<float> hf(h.data_as<float>(), h.data_as<float>() + h.numel());
      auto dh = to_device(hf);
      DeviceBuffer<bf16> out(size_t(rows * cols));
      const GptqResult gpu = gptq_quantize_cuda(ctx(), dw.get(), dh.get(), 1.0, rows, cols, o, DType::BF16, out.get());
      int64_t differ = 0;
      for (size_t i = 0; i < cpu.q.codes.size(); ++i) differ += cpu.q.codes[i] != gpu.q.codes[i];
      std::printf("gptq w4 g%ld act_order %d: GPU codes differ in %ld of %zu; loss %.4f vs CPU %.4f\n", long(gs),
                  int(act), long(differ), cpu.q.codes.size(), gpu.loss, cpu.loss);
      EXPECT_LT(double(differ), 2e-3 * double(cpu.q.codes.size()));
      EXPECT_NEAR(gpu.loss, cpu.loss, 2e-3 * cpu.loss);
      const auto deq = from_device_bf16(out, size_t(rows * cols));
      const Tensor want = gpu.q.dequantize_f32();
      EXPECT_EQ(std::memcmp(deq.data(), want.data(), deq.size() * sizeof(float)), 0);
    }
}

}  // namespace
}  // namespace lowbit
