// BiLLM (billm_quantize, 64-column blocks) on the CPU: seconds per linear, with the Hessian from
// 512 correlated random inputs. The time is the salient-column and split searches (130 candidate
// binarizations of each block) and scales with rows x cols.
//
//   bench_billm [--threads N] [benchmark flags]
//
// Shapes ([out, in]): 576x576 and 1536x576 (SmolLM2-135M's q_proj and gate_proj), and
// 4096x256, LLaMA-3-8B's q_proj rows over four blocks (the whole 4096-column linear takes 16
// times as long).
#include "backend/ops.h"
#include "bench_args.h"
#include "quant/billm.h"
#include "quant/obs_hinv.h"

#include <benchmark/benchmark.h>

#include <cmath>
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
  const int64_t n = 512;
  std::vector<float> x(static_cast<size_t>(n * cols)), scale(static_cast<size_t>(cols));
  for (auto& s : scale) s = std::exp(nd(g));
  for (int64_t t = 0; t < n; ++t) {
    const float shared = nd(g);
    for (int64_t c = 0; c < cols; ++c) x[size_t(t * cols + c)] = scale[size_t(c)] * (nd(g) + 0.5f * shared);
  }
  l.h.assign(size_t(cols * cols), 0.0);
  lowbit::ops::gram_accumulate(x.data(), n, cols, l.h.data());
  return l;
}

void billm_layer(benchmark::State& state) {
  lowbit::set_num_threads(g_threads);
  const int64_t rows = state.range(0), cols = state.range(1);
  const Layer l = make_layer(rows, cols);
  lowbit::BillmOptions o;
  o.block = 64;
  const lowbit::ObsHinv hinv = lowbit::obs_hinv(l.h, cols, o.damp);
  for (auto _ : state) {
    auto r = lowbit::billm_quantize(l.w.data(), rows, cols, hinv, o, lowbit::DType::BF16);
    benchmark::DoNotOptimize(r.loss);
  }
  state.counters["threads"] = lowbit::num_threads();
}

}  // namespace

int main(int argc, char** argv) {
  g_threads = lowbit::bench::init_with_threads(argc, argv);
  for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{576, 576}, {1536, 576}, {4096, 256}})
    benchmark::RegisterBenchmark("billm_block64", billm_layer)
        ->Args({rows, cols})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Iterations(1);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
