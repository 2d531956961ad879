// Comparing two models' logits [rows, V] (fp32 Tensors) and scoring ids under logits: the helpers
// the packed-against-fake-quant tests share.
#pragma once

#include "core/tensor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace lowbit::test {

struct LogitsDiff {
  double max_abs = 0, max_ref = 0;  // max |got - want|, max |want|
  int64_t argmax_agree = 0, rows = 0;
};

inline LogitsDiff compare_logits(const Tensor& got, const Tensor& want) {
  LogitsDiff d;
  EXPECT_EQ(got.shape(), want.shape());
  const int64_t rows = want.dim(0), V = want.dim(1);
  const float* g = got.data_as<float>();
  const float* w = want.data_as<float>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t v = 0; v < V; ++v) {
      d.max_abs = std::max(d.max_abs, double(std::fabs(g[r * V + v] - w[r * V + v])));
      d.max_ref = std::max(d.max_ref, double(std::fabs(w[r * V + v])));
    }
    d.argmax_agree += std::max_element(g + r * V, g + (r + 1) * V) - (g + r * V) ==
                      std::max_element(w + r * V, w + (r + 1) * V) - (w + r * V);
  }
  d.rows = rows;
  return d;
}

// Mean next-token NLL of ids under logits [T, V] (positions 0..T-2 predicting 1..T-1), in fp64.
inline double mean_next_token_nll(const Tensor& logits, const std::vector<int32_t>& ids) {
  const int64_t T = logits.dim(0), V = logits.dim(1);
  double s = 0;
  for (int64_t t = 0; t + 1 < T; ++t) {
    const float* l = logits.data_as<float>() + t * V;
    const double m = *std::max_element(l, l + V);
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - m);
    s += m + std::log(z) - double(l[ids[size_t(t + 1)]]);
  }
  return s / double(T - 1);
}

}  // namespace lowbit::test
