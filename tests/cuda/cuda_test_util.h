// Helpers the GPU tests share: the skip without a device, one CUDA context, random inputs,
// transfers to and from the device, and the whole-tensor relative error the GPU-vs-CPU bars use.
#pragma once

#include "backend/cuda/cuda_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

// Skips the test on a machine without a CUDA device.
#define REQUIRE_GPU()                                                                \
  do {                                                                               \
    if (::lowbit::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";       \
  } while (0)

namespace lowbit::test {

// The tests' context on device 0 (its stream and cuBLAS handle), made at first use.
inline cuda::Context& ctx() {
  static cuda::Context c(0);
  return c;
}

// n normal values with standard deviation `scale` from mt19937(seed).
inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// max |a - b| / max |b| over a whole tensor (b, the reference, must not be all zero).
inline double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0, s = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    m = std::max(m, double(std::fabs(a[i] - b[i])));
    s = std::max(s, double(std::fabs(b[i])));
  }
  EXPECT_GT(s, 0) << "a zero reference checks nothing";
  return s > 0 ? m / s : 0;
}

// n values (or a vector) copied to a new device buffer; the copy is finished on return.
template <typename T>
cuda::DeviceBuffer<T> up(const T* p, size_t n) {
  cuda::DeviceBuffer<T> d(n);
  cuda::upload(d.get(), p, n, ctx().stream());
  ctx().synchronize();
  return d;
}
template <typename T>
cuda::DeviceBuffer<T> up(const std::vector<T>& v) {
  return up(v.data(), v.size());
}

// The first n values of a device buffer.
template <typename T>
std::vector<T> down(const cuda::DeviceBuffer<T>& d, size_t n) {
  std::vector<T> v(n);
  cuda::download(v.data(), d.get(), n, ctx().stream());
  return v;
}

}  // namespace lowbit::test
