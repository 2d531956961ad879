// CUDA-graph decode (model/cuda_decode_graph.h) against the eager decode it replays: the same
// kernels in the same order, so the logits of every step must equal the eager step's bit for
// bit (no tolerance), and so must the greedy tokens and the KV cache. Over 20 steps after an
// 11-token prompt, for bf16 models (cuBLAS products) and packed ones (W4A16 tiles, the low-bit
// GEMV), a model whose packed token embedding stays on the host, head dims 32, 64 and 128 (the
// generic, mma.sync and, on Hopper, wgmma attention kernels); then the recapture after a larger
// forward moves the workspaces, the decoder of `generate` with and without LOWBIT_CUDA_GRAPHS=0,
// the models the graph refuses, and the device-position forms of the ops against their
// host-position forms. Skipped without a GPU.
#include "backend/cuda/ops.cuh"
#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "eval/eval_session.h"
#include "formats/checkpoint.h"
#include "model/cuda_decode_graph.h"
#include "model/cuda_model.h"
#include "pack/gpu_packed_cuda.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/method.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "cuda_test_util.h"
#include "test_util.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace lowbit {
namespace {

using cuda::bf16;
using cuda::DeviceBuffer;
using test::ctx;

constexpr int kSteps = 20;

// The tests choose graph decode themselves: LOWBIT_CUDA_GRAPHS from the environment is dropped.
void default_graph_setting() { ::unsetenv("LOWBIT_CUDA_GRAPHS"); }

// Whether two vectors hold the same bytes (bf16 has no host ==, and -0 / NaN would blur one).
template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

int32_t host_argmax(const std::vector<float>& x) {
  return int32_t(std::max_element(x.begin(), x.end()) - x.begin());
}

std::vector<int32_t> prompt_ids(int64_t V, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<int32_t> ids(11);
  for (auto& x : ids) x = int32_t(g() % uint32_t(std::min<int64_t>(V, 512)));
  return ids;
}

// A random-weight LLaMA with head dim 128 (two query heads on one KV head), for the tensor-core
// attention kernels of that head dim; `tied`: the LM head is the embedding.
std::string write_hd128_config(const test::TempDir& dir, bool tied) {
  const nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
                              {"model_type", "llama"},
                              {"hidden_act", "silu"},
                              {"hidden_size", 256},
                              {"intermediate_size", 512},
                              {"num_attention_heads", 2},
                              {"num_key_value_heads", 1},
                              {"head_dim", 128},
                              {"num_hidden_layers", 2},
                              {"vocab_size", 1000},
                              {"max_position_embeddings", 256},
                              {"rms_norm_eps", 1e-5},
                              {"rope_theta", 500000.0},
                              {"tie_word_embeddings", tied},
                              {"bos_token_id", 1},
                              {"eos_token_id", 2}};
  test::spit(dir / "config.json", cfg.dump());
  return "random:" + dir.path.string();
}

// A quantized copy of the model at `path` (method `spec`), held in memory.
std::unique_ptr<LlamaModel> quantized(const std::string& path, const char* spec) {
  const Checkpoint source = open_checkpoint(path);
  LlamaModel work(source);
  auto method = make_method(spec);
  auto q = std::make_unique<LlamaModel>(
      quantized_checkpoint_in_memory(source, quantize_model(work, *method, nullptr, {}), {{"path", path}}));
  install_quantized_forward(*q);
  return q;
}

// A CudaModel running the packed linears of q.
std::unique_ptr<CudaModel> packed_model(const LlamaModel& q) {
  return std::make_unique<CudaModel>(q, ctx(), std::nullopt, pack::gpu_packed_linears_of(q, ctx().stream()));
}

// Decodes kSteps greedy tokens after the prompt twice on `gpu`: eagerly (forward_cached of one
// token, lm_head, the host's argmax: what `generate` ran before graphs) into one cache, and
// through a CudaDecodeGraph into another; every step's logits, token and cache must be equal.
// With `grow_at`, a forward of 300 rows after that step moves the model's workspaces.
void expect_graph_equals_eager(CudaModel& gpu, const std::string& what, int grow_at = -1) {
  SCOPED_TRACE(what);
  const LlamaConfig& c = gpu.config();
  const int64_t V = c.vocab_size, H = c.hidden_size, kvd = c.kv_dim();
  const std::vector<int32_t> prompt = prompt_ids(V, 5);
  const int64_t P = int64_t(prompt.size()), capacity = P + kSteps;
  const cudaStream_t s = gpu.context().stream();
  GpuKvCache eager = gpu.make_kv_cache(capacity), graphed = gpu.make_kv_cache(capacity);
  DeviceBuffer<bf16> normed;
  DeviceBuffer<float> dl(static_cast<size_t>(V));
  std::vector<float> a(static_cast<size_t>(V)), b(static_cast<size_t>(V));
  // The prompt runs eagerly into both caches.
  gpu.forward_cached(prompt, eager, normed);
  gpu.lm_head(normed.get() + (P - 1) * H, dl.get(), 1);
  cuda::download(a.data(), dl.get(), a.size(), s);
  int32_t tok_e = host_argmax(a);
  gpu.forward_cached(prompt, graphed, normed);
  int32_t tok_g = tok_e;
  CudaDecodeGraph graph(gpu, graphed);
  for (int step = 0; step < kSteps; ++step) {
    gpu.forward_cached(std::span<const int32_t>(&tok_e, 1), eager, normed);
    gpu.lm_head(normed.get(), dl.get(), 1);
    cuda::download(a.data(), dl.get(), a.size(), s);
    const int32_t next_e = host_argmax(a);
    const int32_t next_g = graph.step(tok_g);
    cuda::download(b.data(), graph.logits(), b.size(), s);
    ASSERT_TRUE(same_bits(a, b)) << "logits differ at step " << step;
    ASSERT_EQ(next_g, next_e) << "step " << step;
    ASSERT_EQ(next_g, host_argmax(b)) << "the device's argmax at step " << step;
    tok_e = next_e;
    tok_g = next_g;
    if (step == grow_at) {
      // More rows than any step so far: the model's workspaces are reallocated.
      GpuKvCache other = gpu.make_kv_cache(300);
      std::vector<int32_t> many(300);
      for (size_t i = 0; i < many.size(); ++i) many[i] = int32_t(i % size_t(V));
      gpu.forward_cached(many, other, normed);
    }
  }
  EXPECT_EQ(graphed.length, eager.length);
  EXPECT_EQ(graph.describe(), "CUDA graph");
  // Step 0 runs eagerly, step 1 captures; every step from 1 on is a replay.
  EXPECT_EQ(graph.captures(), grow_at >= 0 ? 2 : 1);
  EXPECT_EQ(graph.replays(), kSteps - 1);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const size_t n = size_t(eager.length * kvd);
    EXPECT_TRUE(same_bits(test::down(eager.k[size_t(l)], n), test::down(graphed.k[size_t(l)], n))) << "keys, layer " << l;
    EXPECT_TRUE(same_bits(test::down(eager.v[size_t(l)], n), test::down(graphed.v[size_t(l)], n))) << "values, layer " << l;
  }
}

TEST(CudaDecodeGraph, Bf16ModelsEqualEagerDecodeBitForBit) {
  REQUIRE_GPU();
  default_graph_setting();
  // llama3-mini: head dim 64, tied head; llama2-mini: head dim 32 (the generic attention
  // kernel), its own LM head matrix.
  for (const char* name : {"llama3-mini-bf16", "llama2-mini-f32"}) {
    LlamaModel m(open_checkpoint(test::fixtures_dir() + "/models/" + name));
    CudaModel gpu(m, ctx(), true);
    ASSERT_FALSE(gpu.packed());
    expect_graph_equals_eager(gpu, name);
  }
  for (bool tied : {true, false}) {
    test::TempDir dir;
    LlamaModel m(open_checkpoint(write_hd128_config(dir, tied)));
    CudaModel gpu(m, ctx(), true);
    expect_graph_equals_eager(gpu, tied ? "head dim 128, tied" : "head dim 128");
  }
}

TEST(CudaDecodeGraph, PackedModelsEqualEagerDecodeBitForBit) {
  REQUIRE_GPU();
  default_graph_setting();
  const std::string mini = test::fixtures_dir() + "/models/llama3-mini-bf16";
  // 4-bit codes in the W4A16 tiles (split-K sums at one row), 3-bit codes in groups of 48 (the
  // tiles too), 2-bit codes (the low-bit GEMV).
  for (const char* spec : {"rtn:w=4,g=128", "rtn:w=3,g=48", "rtn:w=2,g=32"}) {
    const auto q = quantized(mini, spec);
    const auto packed = packed_model(*q);
    ASSERT_TRUE(packed->packed());
    ASSERT_FALSE(packed->embedding_on_host());  // a tied model keeps its table on the GPU
    expect_graph_equals_eager(*packed, std::string("llama3-mini packed ") + spec);
    // The same model from its dequantized bf16 weights.
    CudaModel dense(*q, ctx(), true);
    expect_graph_equals_eager(dense, std::string("llama3-mini dequantized ") + spec);
  }
  test::TempDir dir;
  const auto q = quantized(write_hd128_config(dir, true), "rtn:w=4,g=128");
  expect_graph_equals_eager(*packed_model(*q), "head dim 128 packed rtn:w=4,g=128");
}

TEST(CudaDecodeGraph, HostHeldEmbeddingEqualsEagerDecodeBitForBit) {
  REQUIRE_GPU();
  default_graph_setting();
  // Untied packed models keep the embedding table on the host: the step's row is uploaded
  // before each replay.
  const auto q = quantized(test::fixtures_dir() + "/models/llama2-mini-f32", "rtn:w=4,g=128");
  const auto packed = packed_model(*q);
  ASSERT_TRUE(packed->embedding_on_host());
  expect_graph_equals_eager(*packed, "llama2-mini packed, host-held embedding");
  test::TempDir dir;
  const auto q128 = quantized(write_hd128_config(dir, false), "rtn:w=4,g=128");
  const auto packed128 = packed_model(*q128);
  ASSERT_TRUE(packed128->embedding_on_host());
  expect_graph_equals_eager(*packed128, "head dim 128 packed, host-held embedding");
}

TEST(CudaDecodeGraph, RecapturesWhenALargerForwardMovesTheWorkspaces) {
  REQUIRE_GPU();
  default_graph_setting();
  const auto q = quantized(test::fixtures_dir() + "/models/llama3-mini-bf16", "rtn:w=4,g=128");
  expect_graph_equals_eager(*packed_model(*q), "packed, a 300-row forward after step 5", 5);
  LlamaModel m(open_checkpoint(test::fixtures_dir() + "/models/llama3-mini-bf16"));
  CudaModel dense(m, ctx(), true);
  expect_graph_equals_eager(dense, "bf16, a 300-row forward after step 5", 5);
}

// generate's decoder (eval/cuda_eval.cpp): the same tokens and logits with graphs and with
// LOWBIT_CUDA_GRAPHS=0, and each says how its steps ran.
TEST(CudaDecodeGraph, DecoderGivesTheEagerTokensAndHonoursTheVariable) {
  REQUIRE_GPU();
  LlamaModel m(open_checkpoint(test::fixtures_dir() + "/models/llama3-mini-bf16"));
  const auto session = open_eval_session(parse_device("cuda:0"));
  const auto placed = session->place(m);
  const std::vector<int32_t> prompt = prompt_ids(m.config().vocab_size, 9);
  const auto run = [&](const char* env, std::string& path) {
    if (env != nullptr) ::setenv("LOWBIT_CUDA_GRAPHS", env, 1);
    else ::unsetenv("LOWBIT_CUDA_GRAPHS");
    const std::unique_ptr<Decoder> d = placed->decoder(int64_t(prompt.size()) + 2 * kSteps + 1);
    ::unsetenv("LOWBIT_CUDA_GRAPHS");
    path = d->decode_path();
    std::vector<int32_t> tokens{d->next_greedy(prompt)};
    std::vector<float> logits;
    for (int i = 0; i < kSteps; ++i) tokens.push_back(d->next_greedy(std::span<const int32_t>(&tokens.back(), 1)));
    // step() of one token takes the same path and returns the logits.
    for (int i = 0; i < kSteps; ++i) {
      const std::span<const float> l = d->step(std::span<const int32_t>(&tokens.back(), 1));
      logits.insert(logits.end(), l.begin(), l.end());
      tokens.push_back(int32_t(std::max_element(l.begin(), l.end()) - l.begin()));
    }
    return std::make_pair(tokens, logits);
  };
  std::string on_path, off_path;
  const auto on = run(nullptr, on_path);
  const auto off = run("0", off_path);
  EXPECT_EQ(on_path, "CUDA graph");
  EXPECT_EQ(off_path, "eager (LOWBIT_CUDA_GRAPHS=0)");
  EXPECT_EQ(on.first, off.first);
  ASSERT_EQ(on.second.size(), off.second.size());
  EXPECT_TRUE(same_bits(on.second, off.second));
  ::setenv("LOWBIT_CUDA_GRAPHS", "maybe", 1);
  EXPECT_NE(test::error_text([&] { placed->decoder(8); }).find("LOWBIT_CUDA_GRAPHS='maybe'"), std::string::npos);
  ::unsetenv("LOWBIT_CUDA_GRAPHS");
}

TEST(CudaDecodeGraph, RefusesModelsItCannotCapture) {
  REQUIRE_GPU();
  default_graph_setting();
  LlamaModel m(open_checkpoint(test::fixtures_dir() + "/models/llama3-mini-bf16"));
  {
    CudaModel streamed(m, ctx(), false);  // blocks uploaded from the host at every forward
    EXPECT_EQ(CudaDecodeGraph::refusal(streamed), "blocks streamed from the host");
    GpuKvCache cache = streamed.make_kv_cache(8);
    EXPECT_NE(test::error_text([&] { CudaDecodeGraph g(streamed, cache); }).find("blocks streamed from the host"),
              std::string::npos);
  }
  CudaModel profiled(m, ctx(), true);
  EXPECT_EQ(CudaDecodeGraph::refusal(profiled), "");
  profiled.enable_profile();
  EXPECT_EQ(CudaDecodeGraph::refusal(profiled), "per-op profile");
  CudaModel dense(m, ctx(), true);
  GpuKvCache cache = dense.make_kv_cache(2);
  CudaDecodeGraph g(dense, cache);
  g.step(3);
  g.step(4);
  EXPECT_THROW(g.step(5), Error);  // the cache is full
  EXPECT_THROW(g.step(int32_t(m.config().vocab_size)), Error);
}

// The device-position forms of RoPE and attention equal their host-position forms bit for bit,
// and kv_append equals the copy it replaces.
TEST(CudaDecodeGraph, DevicePositionOpsEqualHostPositionOps) {
  REQUIRE_GPU();
  const cudaStream_t s = ctx().stream();
  for (int64_t hd : {32, 64, 128}) {
    const int64_t nh = 4, nkv = 2, qd = nh * hd, kvd = nkv * hd, past = 37, keys = past + 1, ld = qd + 2 * kvd;
    std::vector<uint16_t> qkv_bits(static_cast<size_t>(ld)), cache_bits(static_cast<size_t>(keys * kvd));
    const std::vector<float> r = test::randn(qkv_bits.size() + cache_bits.size(), uint32_t(hd));
    for (size_t i = 0; i < qkv_bits.size(); ++i) qkv_bits[i] = f32_to_bf16(r[i]);
    for (size_t i = 0; i < cache_bits.size(); ++i) cache_bits[i] = f32_to_bf16(r[qkv_bits.size() + i]);
    std::vector<bf16> qkv_h(qkv_bits.size()), cache_h(cache_bits.size());
    std::memcpy(static_cast<void*>(qkv_h.data()), qkv_bits.data(), qkv_bits.size() * sizeof(uint16_t));
    std::memcpy(static_cast<void*>(cache_h.data()), cache_bits.data(), cache_bits.size() * sizeof(uint16_t));
    std::vector<float> cos_h(static_cast<size_t>(keys * hd / 2)), sin_h(cos_h.size());
    for (size_t i = 0; i < cos_h.size(); ++i) cos_h[i] = std::cos(0.01f * float(i)), sin_h[i] = std::sin(0.01f * float(i));
    auto cos_d = test::up(cos_h), sin_d = test::up(sin_h);
    const int32_t past32 = int32_t(past);
    auto pos = test::up(&past32, 1);
    auto qkv_a = test::up(qkv_h), qkv_b = test::up(qkv_h);
    cuda::rope(qkv_a.get() + qd, 1, 1, nkv, hd, ld, cos_d.get(), sin_d.get(), past, s);
    cuda::rope(qkv_b.get() + qd, 1, 1, nkv, hd, ld, cos_d.get(), sin_d.get(), 0, s, pos.get());
    EXPECT_TRUE(same_bits(test::down(qkv_a, qkv_h.size()), test::down(qkv_b, qkv_h.size()))) << "rope, hd " << hd;
    // Cache rows 0 .. past-1 given; row `past` appended both ways.
    auto kc_a = test::up(cache_h), vc_a = test::up(cache_h), kc_b = test::up(cache_h), vc_b = test::up(cache_h);
    const size_t row = size_t(kvd) * sizeof(bf16);
    LB_CUDA_CHECK(cudaMemcpy2DAsync(kc_a.get() + past * kvd, row, qkv_a.get() + qd, size_t(ld) * 2, row, 1,
                                    cudaMemcpyDeviceToDevice, s));
    LB_CUDA_CHECK(cudaMemcpy2DAsync(vc_a.get() + past * kvd, row, qkv_a.get() + qd + kvd, size_t(ld) * 2, row, 1,
                                    cudaMemcpyDeviceToDevice, s));
    cuda::kv_append(qkv_b.get() + qd, qkv_b.get() + qd + kvd, ld, kc_b.get(), vc_b.get(), kvd, 1, pos.get(), s);
    EXPECT_TRUE(same_bits(test::down(kc_a, cache_h.size()), test::down(kc_b, cache_h.size()))) << "keys, hd " << hd;
    EXPECT_TRUE(same_bits(test::down(vc_a, cache_h.size()), test::down(vc_b, cache_h.size()))) << "values, hd " << hd;
    DeviceBuffer<bf16> out_a(static_cast<size_t>(qd)), out_b(static_cast<size_t>(qd));
    cuda::attention(qkv_a.get(), kc_a.get(), vc_a.get(), out_a.get(), 1, 1, past, nh, nkv, hd, ld, kvd, qd, s,
                    cos_d.get(), sin_d.get());
    cuda::attention(qkv_b.get(), kc_b.get(), vc_b.get(), out_b.get(), 1, 1, 0, nh, nkv, hd, ld, kvd, qd, s,
                    cos_d.get(), sin_d.get(), pos.get());
    EXPECT_TRUE(same_bits(test::down(out_a, size_t(qd)), test::down(out_b, size_t(qd)))) << "attention, hd " << hd;
  }
}

TEST(CudaDecodeGraph, ArgmaxRowsIsMaxElement) {
  REQUIRE_GPU();
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::vector<float>> rows;
  for (int64_t V : {1, 31, 1000, 4097, 128256}) {
    std::vector<float> x = test::randn(size_t(V), uint32_t(V));
    rows.push_back(x);
    if (V > 1) {
      x[size_t(V / 3)] = 9.0f;  // a tie: the first one
      x[size_t(V - 1)] = 9.0f;
      rows.push_back(x);
      x[size_t(V / 2)] = nan;  // a NaN is never larger
      rows.push_back(x);
      x[0] = nan;  // except at index 0, which max_element keeps
      rows.push_back(x);
    }
    rows.push_back(std::vector<float>(size_t(V), -inf));
    std::vector<float> first_at_end(static_cast<size_t>(V), -1.0f);
    first_at_end.back() = 0.0f;
    rows.push_back(first_at_end);
  }
  for (const std::vector<float>& x : rows) {
    auto d = test::up(x);
    DeviceBuffer<int32_t> out(1);
    cuda::argmax_rows(d.get(), out.get(), 1, int64_t(x.size()), ctx().stream());
    EXPECT_EQ(test::down(out, 1)[0], int32_t(std::max_element(x.begin(), x.end()) - x.begin())) << "V " << x.size();
  }
}

}  // namespace
}  // namespace lowbit
