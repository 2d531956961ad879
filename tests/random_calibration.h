// Calibration windows of random token ids, for tests on models without a tokenizer (the mini
// fixtures): the methods only need activations.
#pragma once

#include "calib/calib_data.h"
#include "core/py_random.h"

#include <cstdint>
#include <utility>
#include <vector>

namespace lowbit::test {

// n windows of seqlen uniform token ids in [0, vocab), Python's random seeded with 0.
inline Calibration random_calibration(int64_t vocab, int64_t n, int64_t seqlen) {
  Calibration c;
  c.set.name = "random tokens";
  c.set.convention = "uniform token ids, Python random seed 0";
  c.nsamples = n;
  c.seqlen = seqlen;
  c.bos = "off";
  PyRandom rng(0);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int32_t> w(static_cast<size_t>(seqlen));
    for (auto& t : w) t = int32_t(rng.randint(0, vocab - 1));
    c.windows.push_back(std::move(w));
  }
  return c;
}

}  // namespace lowbit::test
