// The command line of the quantizer benchmarks (bench_gptq, bench_billm, bench_quip): their own
// "--threads N" (the host threads each benchmark sets; 0, the default, leaves the count as it is),
// every other argument Google Benchmark's.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>

namespace lowbit::bench {

// Takes "--threads N" out of argv, initializes Google Benchmark with the rest and returns N (0
// without it).
inline int init_with_threads(int argc, char** argv) {
  int threads = 0, n = 0;
  for (int i = 0; i < argc; ++i) {
    if (i + 1 < argc && std::strcmp(argv[i], "--threads") == 0) threads = std::atoi(argv[++i]);
    else argv[n++] = argv[i];
  }
  benchmark::Initialize(&n, argv);
  return threads;
}

}  // namespace lowbit::bench
