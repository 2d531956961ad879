// The seeded generator the format rows draw their example linears from (QuantFormat::example):
// splitmix64, so that an example is the same on every platform and standard library.
#pragma once

#include "core/tensor.h"

#include <cstdint>
#include <vector>

namespace lowbit {

class ExampleRandom {
 public:
  explicit ExampleRandom(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n).
  int64_t below(int64_t n) { return int64_t(next() % uint64_t(n)); }
  // Uniform in [lo, hi) (24 random bits).
  float uniform(float lo, float hi) { return lo + (hi - lo) * float(next() >> 40) / float(1 << 24); }
  bool chance(double p) { return double(next() >> 11) / double(1ull << 53) < p; }
  std::vector<uint8_t> codes(int64_t n, int bits) {
    std::vector<uint8_t> out(static_cast<size_t>(n));
    for (auto& c : out) c = uint8_t(below(int64_t(1) << bits));
    return out;
  }
  Tensor f32(std::vector<int64_t> shape, float lo, float hi) {
    Tensor t = Tensor::empty(DType::F32, std::move(shape));
    float* p = t.mutable_data_as<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = uniform(lo, hi);
    return t;
  }

 private:
  uint64_t state_;
};

}  // namespace lowbit
