// CPU forward throughput and GEMM efficiency.
//
//   bench_forward --models-dir MODELS [--threads N] [benchmark flags]
//
// forward/*: one full forward (embeddings, blocks, final norm, LM head over every position) of a
//   sequence, as perplexity runs it: tokens/s and model GFLOP/s (2 x linear parameters per token
//   plus causal attention 2 x 2 x layers x (T+1)/2 x q_dim per token).
//   - stories260K at its full context (512), testbed-44m at 2048, and a 100M-class LLaMA with
//     random bf16 weights (hidden 768, 12 layers, 12 heads / 4 KV, intermediate 2048,
//     vocab 32000; 101 M parameters) at 2048.
// gemm/*: OpenBLAS sgemm on the shapes a 2048-token window of testbed-44m runs, in GFLOP/s.
// fma_peak: the machine's fp32 FMA throughput (independent AVX-512 or AVX2 FMA chains on every
//   thread), the denominator of "share of peak".
#include "backend/ops.h"
#include "core/error.h"
#include "formats/checkpoint.h"
#include "formats/safetensors.h"
#include "model/llama_model.h"

#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <omp.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

namespace {

std::string g_models = "../shared/models";
int g_threads = 0;

double model_flops_per_token(const lowbit::LlamaConfig& c, int64_t T) {
  const double H = double(c.hidden_size), F = double(c.intermediate_size);
  const double linears = double(c.num_hidden_layers) * (2 * H * double(c.q_dim()) + 2 * H * double(c.kv_dim()) + 3 * H * F) +
                         H * double(c.vocab_size);
  const double attn = double(c.num_hidden_layers) * 2.0 * double(T + 1) / 2.0 * double(c.q_dim());
  return 2.0 * linears + 2.0 * attn;
}

void forward(benchmark::State& state, const std::string& path, int64_t T) {
  lowbit::set_num_threads(g_threads);
  lowbit::LlamaModel model(lowbit::open_checkpoint(path));
  std::mt19937 g(0);
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (auto& x : ids) x = int32_t(g() % uint32_t(model.config().vocab_size));
  model.next_token_nll(ids);  // converts and caches the weights
  for (auto _ : state) benchmark::DoNotOptimize(model.next_token_nll(ids));
  const double toks = double(T) * double(state.iterations());
  state.counters["tokens/s"] = benchmark::Counter(toks, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(toks * model_flops_per_token(model.config(), T) / 1e9, benchmark::Counter::kIsRate);
  state.counters["threads"] = lowbit::num_threads();
}

// A 100M-class LLaMA with random bf16 weights, written once to a temporary directory.
std::string random_100m() {
  static std::string dir = [] {
    const std::string d = (std::filesystem::temp_directory_path() / "lowbit-bench-100m").string();
    std::filesystem::create_directories(d);
    std::ofstream(d + "/config.json") << R"({"architectures":["LlamaForCausalLM"],"hidden_size":768,
      "intermediate_size":2048,"num_hidden_layers":12,"num_attention_heads":12,"num_key_value_heads":4,
      "vocab_size":32000,"max_position_embeddings":2048,"rms_norm_eps":1e-5,"rope_theta":500000.0,
      "tie_word_embeddings":true,"torch_dtype":"bfloat16"})";
    const lowbit::LlamaConfig c = lowbit::load_llama_config(d + "/config.json");
    lowbit::SafetensorsWriter w;
    std::mt19937 g(1);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    for (const auto& [name, shape] : lowbit::expected_llama_tensors(c)) {
      lowbit::Tensor t = lowbit::Tensor::empty(lowbit::DType::BF16, shape);
      auto* p = t.mutable_data_as<uint16_t>();
      const bool norm = name.find("norm") != std::string::npos;
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = lowbit::f32_to_bf16(norm ? 1.0f : nd(g));
      w.add(name, t);
    }
    w.write(d + "/model.safetensors");
    return d;
  }();
  return dir;
}

void gemm(benchmark::State& state) {
  lowbit::set_num_threads(g_threads);
  const int64_t M = state.range(0), N = state.range(1), K = state.range(2);
  std::vector<float> a(size_t(M * K), 0.5f), b(size_t(N * K), 0.25f), c(size_t(M * N));
  for (auto _ : state) lowbit::ops::linear(a.data(), b.data(), c.data(), M, K, N);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * double(M * N * K) * double(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
}

// The FMA peak needs vector FMA instructions in the build (LOWBIT_NATIVE=ON on an AVX2 or
// AVX-512 machine); a portable build reports it as skipped.
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
void fma_peak(benchmark::State& state) {
  const int threads = g_threads > 0 ? g_threads : omp_get_num_procs();
  constexpr long kIters = 20'000'000;
  double flops = 0;
  for (auto _ : state) {
    float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
#if defined(__AVX512F__)
      __m512 acc[12];
      for (int j = 0; j < 12; ++j) acc[j] = _mm512_set1_ps(1.0f + float(j) * 1e-7f);
      const __m512 m = _mm512_set1_ps(0.9999999f), k = _mm512_set1_ps(1e-7f);
      constexpr int kLanes = 16;
#else
      __m256 acc[12];
      for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_ps(1.0f + float(j) * 1e-7f);
      const __m256 m = _mm256_set1_ps(0.9999999f), k = _mm256_set1_ps(1e-7f);
      constexpr int kLanes = 8;
#endif
      for (long i = 0; i < kIters; ++i)
        for (int j = 0; j < 12; ++j) {
#if defined(__AVX512F__)
          acc[j] = _mm512_fmadd_ps(acc[j], m, k);
#else
          acc[j] = _mm256_fmadd_ps(acc[j], m, k);
#endif
        }
      float lanes[kLanes];
      for (int j = 0; j < 12; ++j) {
        std::memcpy(lanes, &acc[j], sizeof lanes);
        sink += lanes[0];
      }
#pragma omp atomic
      flops += double(kIters) * 12 * kLanes * 2;
    }
    benchmark::DoNotOptimize(sink);
  }
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsRate);
  state.counters["threads"] = threads;
}
#else
void fma_peak(benchmark::State& state) {
  state.SkipWithError("fma_peak needs a build with AVX2+FMA or AVX-512 (LOWBIT_NATIVE=ON)");
  for (auto _ : state) {  // not entered after SkipWithError
  }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (i + 1 < argc && std::strcmp(argv[i], "--models-dir") == 0) g_models = argv[++i];
    else if (i + 1 < argc && std::strcmp(argv[i], "--threads") == 0) g_threads = std::atoi(argv[++i]);
    else rest.push_back(argv[i]);
  }
  benchmark::RegisterBenchmark("fma_peak", fma_peak)->Unit(benchmark::kMillisecond)->UseRealTime();
  for (auto shape : std::vector<std::array<int64_t, 3>>{{2048, 512, 512}, {2048, 1792, 512}, {2048, 512, 1792},
                                                         {2048, 32000, 512}, {2048, 2048, 2048}})
    benchmark::RegisterBenchmark("gemm", gemm)->Args({shape[0], shape[1], shape[2]})->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("forward/stories260K/T=512", forward, g_models + "/stories260K/stories260K.bin", 512)
      ->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("forward/testbed-44m/T=2048", forward, g_models + "/testbed-44m", 2048)
      ->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("forward/random-100m/T=2048",
                               [](benchmark::State& s) { forward(s, random_100m(), 2048); })
      ->Unit(benchmark::kMillisecond)->UseRealTime();
  int n = int(rest.size());
  benchmark::Initialize(&n, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
