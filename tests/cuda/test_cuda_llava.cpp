// LLaVA-Next on the GPU (model/llava_next_cuda.h) against the CPU fp32 path, which
// tests/model/test_llava_next.cpp holds to transformers: the vision ops against their CPU twins,
// then the tiny random-weight LLaVA-Next of tests/fixtures/llava_next (its two real images): the
// tower's hidden states, the packed image features, the logits (also against transformers' fp32
// logits), greedy generation, and a quantized checkpoint as `lowbit quantize` writes it, its language
// model fake-quant (dequantized weights) and packed (--packed: run from its codes).
//
// Tolerances. The GPU rounds every weight and every product's inputs to bf16 (8 significant bits:
// unit roundoff u = 2^-8) and accumulates in fp32; the CPU computes in fp32 throughout. One
// rounding stage leaves a relative error of order u on a product's output; errors of independent
// roundings add in quadrature. The image features pass about 16 such stages (per CLIP layer: LN1,
// q/k/v, the attention probabilities and output, LN2, fc1, the activation; the projector's two
// products), the logits about 10 more (2 LLaMA blocks and the head), so relative RMS errors of
// u * sqrt(16..26) ~ 2% are what bf16 itself costs. Measured on this model: transformers' own bf16
// forward (which also rounds the residual stream, kept fp32 here) differs from its fp32 one by RMS
// 0.7-0.8% (image features) and 1.1% (logits), max 0.9-1.6% of the largest value. The bounds are
// relative to the reference's scale: RMS error / RMS reference <= 8u (3.1%), max |diff| <= 16u
// (6.3%) of max |reference|. A wrong layout, bias or activation moves values by their own size
// (relative errors of order 1).
// Top-1: every position where the CPU's best logit leads the second by more than twice the largest
// logit difference seen must agree; greedy tokens must each be the CPU's choice on the same prefix
// or a near-tie of that size. The single ops get inputs that bf16 represents exactly, so only
// the rounding of their outputs (u) and fp32 summation order remain.
#include "backend/cuda/vision_ops.cuh"
#include "backend/ops.h"
#include "backend/vision_ops.h"
#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "formats/safetensors.h"
#include "logits_compare.h"
#include "model/cuda_model.h"
#include "model/llava_next.h"
#include "model/llava_next_cuda.h"
#include "model/llava_next_device.h"
#include "pack/gpu_packed.h"
#include "quant/llava_next_quantized.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "random_calibration.h"
#include "test_util.h"
#include "vision/image.h"
#include "vision/image_processor.h"
#include "zst_fixture.h"
#include "cuda_test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

namespace lowbit {
namespace {

namespace fs = std::filesystem;
using cuda::bf16;
using test::fixtures_dir;

constexpr double kU = 1.0 / 256;  // bf16's unit roundoff (8 significant bits)
const char* kImages[] = {"tall_150x420.jpg", "wide_1100x300.jpg"};

cuda::Context& ctx() {
  static cuda::Context c(0);
  return c;
}

float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

std::vector<float> random_bf16_values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = round_bf16(d(rng));
  return v;
}

template <typename T>
cuda::DeviceBuffer<T> to_device(const std::vector<float>& v) {
  std::vector<T> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if constexpr (std::is_same_v<T, float>)
      h[i] = v[i];
    else
      h[i] = __float2bfloat16(v[i]);
  }
  cuda::DeviceBuffer<T> d(v.size());
  cuda::upload(d.get(), h.data(), h.size(), ctx().stream());
  ctx().synchronize();
  return d;
}

std::vector<float> from_device(const float* p, size_t n) {
  std::vector<float> h(n);
  cuda::download(h.data(), p, n, ctx().stream());
  return h;
}
std::vector<float> from_device(const bf16* p, size_t n) {
  std::vector<bf16> b(n);
  cuda::download(b.data(), p, n, ctx().stream());
  std::vector<float> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = __bfloat162float(b[i]);
  return h;
}

struct Diff {
  double max_abs = 0, max_ref = 0, rms_rel = 0;
};
Diff diff(const float* got, const float* want, int64_t n) {
  Diff d;
  double se = 0, sr = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double e = double(got[i]) - double(want[i]);
    d.max_abs = std::max(d.max_abs, std::fabs(e));
    d.max_ref = std::max(d.max_ref, std::fabs(double(want[i])));
    se += e * e;
    sr += double(want[i]) * double(want[i]);
  }
  d.rms_rel = sr > 0 ? std::sqrt(se / sr) : std::sqrt(se);
  return d;
}
Diff diff(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.shape(), want.shape());
  return diff(got.data_as<float>(), want.data_as<float>(), std::min(got.numel(), want.numel()));
}
void expect_bf16_close(const Diff& d, const char* what) {
  EXPECT_LE(d.rms_rel, 8 * kU) << what;
  EXPECT_LE(d.max_abs, 16 * kU * d.max_ref) << what;
  std::printf("%s: max|diff| %.3g (max|ref| %.3g), RMS relative %.3g\n", what, d.max_abs, d.max_ref, d.rms_rel);
}

// Positions whose CPU top-1 leads its second by more than `window`, and how many of them agree.
struct Top1 {
  int64_t decided = 0, agree = 0, rows = 0;
};
Top1 top1(const Tensor& gpu, const Tensor& cpu, double window) {
  Top1 t;
  const int64_t V = cpu.dim(1);
  t.rows = cpu.dim(0);
  for (int64_t r = 0; r < t.rows; ++r) {
    const float* c = cpu.data_as<float>() + r * V;
    const float* g = gpu.data_as<float>() + r * V;
    const int64_t ac = std::max_element(c, c + V) - c, ag = std::max_element(g, g + V) - g;
    float second = -INFINITY;
    for (int64_t v = 0; v < V; ++v)
      if (v != ac) second = std::max(second, c[v]);
    if (double(c[ac]) - double(second) <= window) continue;
    ++t.decided;
    t.agree += ac == ag;
  }
  return t;
}

// The fixture model unpacked into a directory (with the byte-level test tokenizer, which the
// quantized checkpoint copies).
struct FixtureModel {
  test::TempDir dir;
  FixtureModel() {
    const std::string src = fixtures_dir() + "/llava_next/";
    fs::create_directories(dir / "m");
    for (const char* f : {"config.json", "preprocessor_config.json"}) fs::copy_file(src + f, dir / ("m/" + std::string(f)));
    fs::copy_file(fixtures_dir() + "/vlm/tokenizer.json", dir / "m/tokenizer.json");
    test::spit(dir / "m/model.safetensors", test::read_zst(src + "model.safetensors.zst"));
  }
  std::string path() const { return dir / "m"; }
};

vision::ProcessedImage load_image(const LlavaNextModel& m, const std::string& name) {
  return vision::preprocess_llava_next(vision::read_image(fixtures_dir() + "/vision/" + name), m.processor());
}

std::vector<int32_t> fixture_ids(const std::string& image) {
  return test::tensor_values<int32_t>(test::zst_fixture("llava_next/reference.safetensors.zst"), image + ".input_ids");
}

Tensor as_tensor(const std::vector<float>& v, std::vector<int64_t> shape) {
  Tensor t = Tensor::empty(DType::F32, std::move(shape));
  std::copy(v.begin(), v.end(), t.mutable_data_as<float>());
  return t;
}

TEST(CudaVisionOps, LayerNormMatchesCpu) {
  REQUIRE_GPU();
  const int64_t rows = 37, dim = 1024;  // ViT-L's width; rows not a multiple of anything
  std::vector<float> x = random_bf16_values(size_t(rows * dim), 1, 3.0f), w = random_bf16_values(size_t(dim), 2),
                     b = random_bf16_values(size_t(dim), 3);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < dim; ++c) x[size_t(r * dim + c)] += float(r);  // a mean per row
  std::vector<float> want(x.size());
  ops::layernorm(x.data(), w.data(), b.data(), want.data(), rows, dim, 1e-5f);
  auto dx = to_device<float>(x);
  auto dw = to_device<bf16>(w), db = to_device<bf16>(b);
  cuda::DeviceBuffer<float> y32(x.size());
  cuda::DeviceBuffer<bf16> y16(x.size());
  cuda::layernorm(dx.get(), dw.get(), db.get(), y32.get(), y16.get(), rows, dim, 1e-5f, ctx().stream());
  const auto g32 = from_device(y32.get(), x.size()), g16 = from_device(y16.get(), x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_NEAR(g32[i], want[i], 1e-4 * (1 + std::fabs(want[i]))) << i;  // fp32 sums in another order
    ASSERT_NEAR(g16[i], want[i], kU * std::fabs(want[i]) + 1e-4) << i;   // + one bf16 rounding
  }
  // In place (pre_layrnorm on the residual stream).
  cuda::layernorm(dx.get(), dw.get(), db.get(), dx.get(), nullptr, rows, dim, 1e-5f, ctx().stream());
  const auto inplace = from_device(dx.get(), x.size());
  EXPECT_EQ(inplace, g32);
}

TEST(CudaVisionOps, BiasActivationsMatchCpu) {
  REQUIRE_GPU();
  const int64_t rows = 5, cols = 333;
  const std::vector<float> x = random_bf16_values(size_t(rows * cols), 4, 2.0f), b = random_bf16_values(size_t(cols), 5);
  auto dx = to_device<float>(x);
  auto db = to_device<bf16>(b);
  cuda::DeviceBuffer<bf16> y(x.size());
  for (auto act : {cuda::VisionAct::None, cuda::VisionAct::QuickGelu, cuda::VisionAct::Gelu}) {
    std::vector<float> want = x;
    ops::add_bias(want.data(), b.data(), rows, cols);
    if (act == cuda::VisionAct::QuickGelu) ops::quick_gelu(want.data(), rows * cols);
    if (act == cuda::VisionAct::Gelu) ops::gelu(want.data(), rows * cols);
    cuda::bias_act(dx.get(), db.get(), y.get(), rows, cols, act, ctx().stream());
    const auto got = from_device(y.get(), x.size());
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_NEAR(got[i], want[i], kU * std::fabs(want[i]) + 1e-6) << "act " << int(act) << " at " << i;
  }
  std::vector<float> want = x;
  ops::add_bias(want.data(), b.data(), rows, cols);
  cuda::add_bias(dx.get(), db.get(), rows, cols, ctx().stream());
  const auto got = from_device(dx.get(), x.size());
  for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-6) << i;
}

TEST(CudaVisionOps, BidirectionalAttentionMatchesCpu) {
  REQUIRE_GPU();
  // ViT-L's heads (16 x 64) on 2 sequences of 50 tokens, and the tiny fixture's 4 x 8 on 3 x 17.
  for (auto [S, T, nh, hd] : {std::array<int64_t, 4>{2, 50, 16, 64}, std::array<int64_t, 4>{3, 17, 4, 8}}) {
    SCOPED_TRACE(hd);
    const int64_t D = nh * hd, rows = S * T;
    // q, k, v stacked per row as the tower's qkv product writes them.
    const std::vector<float> qkv = random_bf16_values(size_t(rows * 3 * D), uint32_t(6 + hd));
    std::vector<float> q(size_t(rows * D)), k(q.size()), v(q.size()), want(q.size());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < D; ++c) {
        q[size_t(r * D + c)] = qkv[size_t(r * 3 * D + c)];
        k[size_t(r * D + c)] = qkv[size_t(r * 3 * D + D + c)];
        v[size_t(r * D + c)] = qkv[size_t(r * 3 * D + 2 * D + c)];
      }
    ops::attention_bidirectional(q.data(), k.data(), v.data(), want.data(), S, T, nh, hd);
    auto d = to_device<bf16>(qkv);
    cuda::DeviceBuffer<bf16> out(size_t(rows * D));
    cuda::BidirectionalAttentionWorkspace ws;
    cuda::attention_bidirectional(ctx(), d.get(), d.get() + D, d.get() + 2 * D, out.get(), S, T, nh, hd, 3 * D, 3 * D,
                                  D, ws);
    const auto got = from_device(out.get(), size_t(rows * D));
    // The probabilities (each <= 1) and the output rounded to bf16: |error| <= u max|v| + u |out|.
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], kU * (4.0 + std::fabs(want[i]))) << i;
    const Diff e = diff(got.data(), want.data(), int64_t(got.size()));
    EXPECT_LE(e.rms_rel, 2 * kU);
  }
}

TEST(CudaLlavaNext, TowerAndImageFeaturesMatchTheCpu) {
  REQUIRE_GPU();
  FixtureModel fm;
  auto m = LlavaNextModel::open(fm.path());
  CudaClipVision gpu(*m, ctx());
  for (const char* name : kImages) {
    SCOPED_TRACE(name);
    const vision::ProcessedImage img = load_image(*m, name);
    for (int64_t k = 0; k <= m->vision_tower().layers_loaded(); ++k) {
      const Tensor want = m->vision_tower().hidden_states(img.pixel_values, k);
      const std::string what = std::string(name) + " hidden state " + std::to_string(k);
      expect_bf16_close(diff(gpu.hidden_states(img.pixel_values, k), want), what.c_str());
    }
    const Tensor want = m->image_features(img);
    const Tensor got = gpu.image_features(img);
    ASSERT_EQ(got.shape(), want.shape());
    expect_bf16_close(diff(got, want), (std::string(name) + " image features").c_str());
    // The packing is the host's, fed the GPU's tile features: the first newline row (after the
    // base tile and the cropped grid's first row) is image_newline as stored.
    const LlavaNextConfig& c = m->config();
    const int64_t H = c.text.hidden_size, P = c.vision.num_patches(), G = c.vision.grid(), S = c.vision.image_size;
    const auto best = vision::select_best_resolution(img.height, img.width, c.pinpoints);
    const UnpadBox box = unpad_box(img.height, img.width, best.first / S * G, best.second / S * G);
    EXPECT_EQ(0, std::memcmp(got.data_as<float>() + (P + box.cols) * H, m->image_newline().data_as<float>(),
                             size_t(H) * 4));
  }
}

TEST(CudaLlavaNext, LogitsMatchTheCpuAndTransformers) {
  REQUIRE_GPU();
  FixtureModel fm;
  auto m = LlavaNextModel::open(fm.path());
  auto gpu = place_llava_next(*m, parse_device("cuda:0"));
  const auto& ref = test::zst_fixture("llava_next/reference.safetensors.zst");
  for (const char* name : kImages) {
    SCOPED_TRACE(name);
    const auto ids = fixture_ids(name);
    const vision::ProcessedImage img = load_image(*m, name);
    const Tensor cpu = m->forward(ids, std::span(&img, 1));
    const Tensor got = gpu->forward(ids, std::span(&img, 1));
    const Diff d = diff(got, cpu);
    expect_bf16_close(d, (std::string(name) + " logits vs CPU").c_str());
    const Tensor hf = as_tensor(test::tensor_values<float>(ref, std::string(name) + ".logits"), cpu.shape());
    expect_bf16_close(diff(got, hf), (std::string(name) + " logits vs transformers fp32").c_str());
    const Top1 t = top1(got, cpu, 2 * d.max_abs);
    EXPECT_EQ(t.agree, t.decided);
    // transformers' bf16 leaves 65 of 89 and 68 of 81 positions decided beyond its own window.
    EXPECT_GT(t.decided, t.rows / 4) << "too few positions are decided to test top-1";
    std::printf("%s: top-1 %lld/%lld of the positions decided beyond %.3g (%lld positions)\n", name,
                (long long)t.agree, (long long)t.decided, 2 * d.max_abs, (long long)t.rows);
  }
}

// Every token the GPU chooses is the CPU's choice on the same prefix, or within the logits'
// bf16 difference of it (a near-tie the rounding may decide either way).
void expect_greedy_agreement(const LlavaNextModel& m, LlavaNextRunner& gpu, const std::vector<int32_t>& ids,
                             const vision::ProcessedImage& img, int64_t n) {
  const std::vector<int64_t> none;
  const auto got = gpu.generate(ids, std::span(&img, 1), n, none);
  ASSERT_EQ(int64_t(got.size()), n);
  std::vector<int32_t> all = ids;
  all.insert(all.end(), got.begin(), got.end());
  const Tensor cpu = m.forward(all, std::span(&img, 1));  // the CPU's logits on the GPU's prefixes
  const Tensor on_prompt = gpu.forward(ids, std::span(&img, 1));
  const double window = 2 * diff(on_prompt, m.forward(ids, std::span(&img, 1))).max_abs;
  const int64_t V = cpu.dim(1), T = int64_t(ids.size());
  int64_t same = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* c = cpu.data_as<float>() + (T - 1 + i) * V;
    const int64_t best = std::max_element(c, c + V) - c;
    same += best == got[size_t(i)];
    EXPECT_LE(double(c[best]) - double(c[got[size_t(i)]]), window) << "step " << i;
  }
  const auto cpu_tokens = m.generate(ids, std::span(&img, 1), n, none);
  std::printf("greedy: %lld/%lld GPU tokens are the CPU's argmax on the same prefix; sequences %s\n",
              (long long)same, (long long)n, cpu_tokens == got ? "equal" : "differ");
  // The GPU's decode steps (one token through the KV cache) against its own full forward.
  const Tensor full = gpu.forward(all, std::span(&img, 1));
  for (int64_t i = 0; i < n; ++i) {
    const float* g = full.data_as<float>() + (T - 1 + i) * V;
    EXPECT_LE(double(*std::max_element(g, g + V)) - double(g[got[size_t(i)]]), window) << "step " << i;
  }
}

TEST(CudaLlavaNext, GreedyGenerationAgreesWithTheCpu) {
  REQUIRE_GPU();
  FixtureModel fm;
  auto m = LlavaNextModel::open(fm.path());
  auto gpu = place_llava_next(*m, parse_device("cuda:0"));
  for (const char* name : kImages) {
    SCOPED_TRACE(name);
    expect_greedy_agreement(*m, *gpu, fixture_ids(name), load_image(*m, name), 12);
  }
  // A stop token ends the generation after it, as on the CPU.
  const auto ids = fixture_ids(kImages[0]);
  const vision::ProcessedImage img = load_image(*m, kImages[0]);
  const auto free_run = gpu->generate(ids, std::span(&img, 1), 12, std::vector<int64_t>{});
  const int64_t stop = free_run[3];
  const auto stopped = gpu->generate(ids, std::span(&img, 1), 12, std::span(&stop, 1));
  const size_t first = size_t(std::find(free_run.begin(), free_run.end(), int32_t(stop)) - free_run.begin());
  EXPECT_EQ(stopped, std::vector<int32_t>(free_run.begin(), free_run.begin() + long(first) + 1));
}

// A quantized checkpoint as `lowbit quantize` writes it (the LLM part quantized, the vision parts
// as stored): the GPU runs the quantized language model's dequantized weights, as the CPU does.
TEST(CudaLlavaNext, QuantizedCheckpointMatchesTheCpu) {
  REQUIRE_GPU();
  FixtureModel fm;
  const std::string out = fm.dir / "q";
  {
    const Checkpoint source = open_model(fm.path());
    LlamaModel src(source), work(source);
    auto method = make_method("rtn:w=4,g=32");
    write_quantized_llava_next(out, fm.path(), src, quantize_model(work, *method, nullptr, {}),
                               nlohmann::json::object(), false);
  }
  auto m = load_llava_next(out);
  ASSERT_TRUE(m->language_model().checkpoint().quantization.is_object());
  auto gpu = place_llava_next(*m, parse_device("cuda:0"));
  const auto ids = fixture_ids(kImages[0]);
  const vision::ProcessedImage img = load_image(*m, kImages[0]);
  const Tensor cpu = m->forward(ids, std::span(&img, 1));
  const Diff d = diff(gpu->forward(ids, std::span(&img, 1)), cpu);
  expect_bf16_close(d, "quantized checkpoint logits vs CPU");
  expect_greedy_agreement(*m, *gpu, ids, img, 12);
}

// --packed on the GPU (`vlm-generate`/`vlm-logits`/`vlm-eval --packed --device cuda`): the runner's
// language model runs its quantized linears from their codes (4-bit: the W4A16 tiles; 2-bit: the
// low-bit GEMV), the vision tower and projector as in the fake-quant runner, against the fake-quant
// GPU forward of the same model. The bar is CudaModelPacked.LogitsMatchTheFakeQuantGpuForward's
// (tests/cuda/test_w4a16.cpp), for its reasons: with the int scales rounded to bf16 (the packed
// layouts' precision) both forwards hold the same bf16 weights and differ only in summation order
// and the bf16 roundings it flips, so the logits agree within 1% (relative L2) and the perplexity
// of the prompt within 1%; with the method's fp32 scales, as `lowbit quantize` writes them, the
// weights differ by up to 2^-9 relative and the logits may move by about 1%, so 3% is allowed.
// Greedy decoding is then held to the CPU's fake-quant model as the bf16 runner is
// (expect_greedy_agreement). A prompt of an image's ~1,400-2,000 tokens is far above the rows
// where the packed products' Auto choice hands over to dequantize + cuBLAS, so with bf16 scales
// the prompt's logits are the fake-quant runner's bit for bit (seen on an H100); that the
// runner's linears are packed is checked on its language model's blocks, and the decode steps
// (one row: the W4A16 tiles or the GEMV) run the packed kernels.
double prompt_ppl(const Tensor& logits, const std::vector<int32_t>& ids) {
  return std::exp(test::mean_next_token_nll(logits, ids));
}

void expect_packed_llava_matches_fake_quant(const FixtureModel& fm, const char* spec, bool bf16_scales,
                                            const char* execution) {
  SCOPED_TRACE(std::string(spec) + (bf16_scales ? " bf16 scales" : " fp32 scales (as written)"));
  const Checkpoint source = open_model(fm.path());
  LlamaModel work(source);
  auto method = make_method(spec);
  QuantizedModel qm = quantize_model(work, *method, nullptr, {});
  std::unique_ptr<LlavaNextModel> m;
  if (bf16_scales) {
    for (QuantizedBlock& b : qm.blocks)
      for (auto& l : b.linear)
        if (l)
          for (float& sc : l->scales) sc = bf16_to_f32(f32_to_bf16(sc));
    m = llava_next_with_language_model(fm.path(),
                                       quantized_checkpoint_in_memory(source, std::move(qm), {{"path", fm.path()}}));
  } else {
    const std::string out = fm.dir / (std::string("packed-") + execution);
    LlamaModel src(source);
    write_quantized_llava_next(out, fm.path(), src, qm, nlohmann::json::object(), false);
    m = load_llava_next(out);
  }
  set_gpu_packed_factory({});
  auto fake = place_llava_next(*m, parse_device("cuda:0"));
  EXPECT_EQ(pack::enable_gpu_packed_linears(m->language_model()), execution);  // what apply_packed does
  auto packed = place_llava_next(*m, parse_device("cuda:0"));
  {
    // The runner's language model is a CudaModel over the factory's packed linears
    // (llava_next_cuda.cpp); the same call here must give every linear of every block packed,
    // with no bf16 copy.
    const CudaModel llm(m->language_model(), ctx(), std::nullopt,
                        gpu_packed_linears(m->language_model(), ctx().stream()));
    ASSERT_TRUE(llm.packed());
    GpuBlockWeights scratch;
    for (int64_t i = 0; i < m->language_model().config().num_hidden_layers; ++i) {
      const GpuBlockWeights& bw = llm.block(i, scratch);
      for (LinearKind k : kAllLinears) {
        ASSERT_NE(bw.packed_linear(k), nullptr) << "block " << i;
        EXPECT_EQ(bw[k], nullptr) << "block " << i;
      }
    }
  }
  set_gpu_packed_factory({});  // the other tests' CudaModels run from bf16
  for (const char* name : kImages) {
    SCOPED_TRACE(name);
    const auto ids = fixture_ids(name);
    const vision::ProcessedImage img = load_image(*m, name);
    const Tensor a = packed->forward(ids, std::span(&img, 1));
    const Tensor b = fake->forward(ids, std::span(&img, 1));
    ASSERT_EQ(a.shape(), b.shape());
    double num = 0, den = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
      const double x = a.data_as<float>()[i], y = b.data_as<float>()[i];
      ASSERT_TRUE(std::isfinite(x)) << i;
      num += (x - y) * (x - y);
      den += y * y;
    }
    const double rel = std::sqrt(num / den), ppl_a = prompt_ppl(a, ids), ppl_b = prompt_ppl(b, ids);
    std::printf("%s %s (%s scales): packed (%s) vs fake-quant GPU logits rel. L2 %.2e; prompt ppl %.4f vs %.4f\n",
                name, spec, bf16_scales ? "bf16" : "fp32", execution, rel, ppl_a, ppl_b);
    EXPECT_LT(rel, bf16_scales ? 1e-2 : 3e-2);
    EXPECT_NEAR(ppl_a, ppl_b, 0.01 * ppl_b);
  }
  expect_greedy_agreement(*m, *packed, fixture_ids(kImages[0]), load_image(*m, kImages[0]), 12);
}

TEST(CudaLlavaNextPacked, LogitsMatchTheFakeQuantGpuForward) {
  REQUIRE_GPU();
  FixtureModel fm;
  for (bool bf16_scales : {true, false}) {
    expect_packed_llava_matches_fake_quant(fm, "rtn:w=4,g=32", bf16_scales, "packed-w4a16");
    expect_packed_llava_matches_fake_quant(fm, "rtn:w=2,g=32", bf16_scales, "packed-gemv");
  }
  // A 16-bit LLaVA-Next has nothing to pack: refused, naming the model.
  auto plain = LlavaNextModel::open(fm.path());
  try {
    pack::enable_gpu_packed_linears(plain->language_model());
    FAIL() << "a 16-bit LLaVA-Next was packed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not a quantized checkpoint: --packed needs one"), std::string::npos)
        << e.what();
  }
  set_gpu_packed_factory({});
}

}  // namespace
}  // namespace lowbit
