// Helpers of the GPU kernel benchmarks (bench_w4a16, bench_gemv_lowbit): CUDA-event timing,
// a small deterministic generator, random bf16 buffers, comma lists.
#pragma once

#include "backend/cuda/cuda_util.h"
#include "backend/cuda/ops.cuh"
#include "core/dtype.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace lowbit::bench {

// Median per-call milliseconds of f(i) (i counts calls, for rotating weight copies).
inline double median_ms(const cuda::Context& ctx, const std::function<void(int)>& f, int samples, int calls) {
  cudaEvent_t a, b;
  LB_CUDA_CHECK(cudaEventCreate(&a));
  LB_CUDA_CHECK(cudaEventCreate(&b));
  int i = 0;
  for (int w = 0; w < 3 * calls; ++w) f(i++);  // warm-up
  std::vector<double> ms;
  for (int s = 0; s < samples; ++s) {
    LB_CUDA_CHECK(cudaEventRecord(a, ctx.stream()));
    for (int c = 0; c < calls; ++c) f(i++);
    LB_CUDA_CHECK(cudaEventRecord(b, ctx.stream()));
    LB_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    LB_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(double(t) / calls);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// A linear congruential step (Knuth's MMIX constants): the high 31 bits of the new state.
inline uint32_t next(uint64_t& s) {
  s = s * 6364136223846793005ull + 1442695040888963407ull;
  return uint32_t(s >> 33);
}

// n bf16 values in [-1, 1] (multiples of 0.001), uploaded.
inline cuda::DeviceBuffer<cuda::bf16> random_bf16(size_t n, uint64_t seed, cudaStream_t s) {
  std::vector<uint16_t> h(n);
  for (auto& v : h) v = f32_to_bf16(float(int(next(seed) % 2001) - 1000) * 1e-3f);
  cuda::DeviceBuffer<cuda::bf16> d(n);
  cuda::upload(d.get(), reinterpret_cast<const cuda::bf16*>(h.data()), n, s);
  LB_CUDA_CHECK(cudaStreamSynchronize(s));
  return d;
}

// "1,4,16" -> {1, 4, 16}.
inline std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> v;
  size_t p = 0;
  while (p < s.size()) {
    const size_t q = s.find(',', p);
    v.push_back(std::stoll(s.substr(p, q == std::string::npos ? std::string::npos : q - p)));
    if (q == std::string::npos) break;
    p = q + 1;
  }
  return v;
}

}  // namespace lowbit::bench
