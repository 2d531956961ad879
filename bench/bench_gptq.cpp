// GPTQ on the CPU for LLaMA-3-8B layer shapes: seconds per layer (w4, g128, 128-column lazy
// batches), with the Hessian from 2048 correlated random inputs.
//
//   bench_gptq [--threads N] [benchmark flags]
//
// Shapes ([out, in]): 4096x4096 (q_proj / o_proj), 14336x4096 (gate_proj / up_proj) and
// 4096x14336 (down_proj, whose 14336-column Hessian makes the Cholesky solve the larger part).
#include "backend/ops.h"
#include "bench_args.h"
#include "quant/gptq.h"

#include <benchmark/benchmark.h>

#include <random>

namespace {

int g_threads = 0;

struct Layer {
  std::vector<float> w;
  std::vector<double> h;
};

Layer make_layer(int64_t rows, int64_t cols) {
  Layer l;
  std::mt19937 g(uint32_t(rows * 31 + cols));
  std::normal_distribution<float> nd;
  l.w.resize(size_t(rows * cols));
  for (auto& v : l.w) v = 0.02f * nd(g);
  // Inputs with per-channel scales spanning two orders of magnitude and a shared component, so
  // that H is far from diagonal, as in real activations.
  const int64_t n = 2048;
  std::vector<float> x(static_cast<size_t>(n * cols)), scale(static_cast<size_t>(cols));
  for (auto& s : scale) s = std::exp(2.0f * nd(g) / 2.0f);
  for (int64_t t = 0; t < n; ++t) {
    const float shared = nd(g);
    for (int64_t c = 0; c < cols; ++c) x[size_t(t * cols + c)] = scale[size_t(c)] * (nd(g) + 0.5f * shared);
  }
  l.h.assign(size_t(cols * cols), 0.0);
  lowbit::ops::gram_accumulate(x.data(), n, cols, l.h.data());
  return l;
}

void gptq_layer(benchmark::State& state) {
  lowbit::set_num_threads(g_threads);
  const int64_t rows = state.range(0), cols = state.range(1);
  const Layer l = make_layer(rows, cols);
  lowbit::GptqOptions o;
  o.bits = 4;
  o.group_size = 128;
  for (auto _ : state) {
    auto r = lowbit::gptq_quantize(l.w.data(), rows, cols, l.h, o, lowbit::DType::BF16);
    benchmark::DoNotOptimize(r.loss);
  }
  state.counters["threads"] = lowbit::num_threads();
}

}  // namespace

int main(int argc, char** argv) {
  g_threads = lowbit::bench::init_with_threads(argc, argv);
  for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}, {14336, 4096}, {4096, 14336}})
    benchmark::RegisterBenchmark("gptq_w4_g128", gptq_layer)
        ->Args({rows, cols})
        ->Unit(benchmark::kSecond)
        ->UseRealTime()
        ->Iterations(1);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
