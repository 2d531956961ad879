// QuIP's dense butterflies on the CPU: building the [n, n] operator U that the transforms and the
// format's un-rotation multiply by (quip_butterfly_dense, entry by entry) against applying the
// butterfly to the identity factor by factor as the reference's mul_ortho_butterfly does
// (quip_butterfly_apply). Both give the same bits (Quip.DenseButterflyIsTheAppliedButterfly).
//
//   bench_quip [--threads N] [benchmark flags]
//
// Dimensions: 4096 (64 x 64, LLaMA-3-8B's hidden size) and 14336 (64 x 224, its MLP width).
#include "backend/ops.h"
#include "bench_args.h"
#include "quant/quip.h"

#include <benchmark/benchmark.h>

#include <vector>

namespace {

int g_threads = 0;

void dense(benchmark::State& state) {
  lowbit::set_num_threads(g_threads);
  const lowbit::Butterfly b = lowbit::quip_random_butterfly(state.range(0), 1);
  for (auto _ : state) {
    auto d = lowbit::quip_butterfly_dense(b);
    benchmark::DoNotOptimize(d.data());
  }
  state.counters["threads"] = lowbit::num_threads();
}

void applied(benchmark::State& state) {
  lowbit::set_num_threads(g_threads);
  const int64_t n = state.range(0);
  const lowbit::Butterfly b = lowbit::quip_random_butterfly(n, 1);
  std::vector<float> eye(static_cast<size_t>(n * n), 0.0f), out(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i) eye[size_t(i * n + i)] = 1.0f;
  for (auto _ : state) {
    lowbit::quip_butterfly_apply(b, eye.data(), n, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["threads"] = lowbit::num_threads();
}

}  // namespace

int main(int argc, char** argv) {
  g_threads = lowbit::bench::init_with_threads(argc, argv);
  for (int64_t n : {int64_t(4096), int64_t(14336)}) {
    benchmark::RegisterBenchmark("quip_butterfly_dense", dense)->Arg(n)->Unit(benchmark::kMillisecond)->UseRealTime()
        ->Iterations(1);
    benchmark::RegisterBenchmark("quip_butterfly_applied", applied)->Arg(n)->Unit(benchmark::kMillisecond)
        ->UseRealTime()->Iterations(1);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
