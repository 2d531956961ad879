// The ViT ops (backend/vision_ops.h): the fast CPU versions against their scalar references, on
// shapes on both sides of the attention's per-(sequence, head) split and odd widths.
#include "backend/vision_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

using namespace lowbit;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

}  // namespace

// fp32 against a double reference: a few ulps of values of order 1.
TEST(VisionOps, LayerNormMatchesReference) {
  for (auto [rows, dim] : {std::pair<int64_t, int64_t>{1, 7}, {17, 64}, {300, 1024}}) {
    const auto x = randn(size_t(rows * dim), 1, 3.0f), w = randn(size_t(dim), 2), b = randn(size_t(dim), 3);
    std::vector<float> y(x.size()), r(x.size());
    ops::layernorm(x.data(), w.data(), b.data(), y.data(), rows, dim, 1e-5f);
    ref::layernorm(x.data(), w.data(), b.data(), r.data(), rows, dim, 1e-5f);
    EXPECT_LT(max_diff(y, r), 2e-5) << rows << " x " << dim;
  }
}

// fp32 GEMMs and softmax against double: scores of order 10 lose a few 1e-6 in the exponentials.
TEST(VisionOps, BidirectionalAttentionMatchesReference) {
  for (auto [S, T, nh, hd] : {std::array<int64_t, 4>{1, 1, 1, 8}, {2, 17, 4, 8}, {3, 50, 2, 64}}) {
    const size_t n = size_t(S * T * nh * hd);
    const auto q = randn(n, 4, 2.0f), k = randn(n, 5, 2.0f), v = randn(n, 6);
    std::vector<float> o(n), r(n);
    ops::attention_bidirectional(q.data(), k.data(), v.data(), o.data(), S, T, nh, hd);
    ref::attention_bidirectional(q.data(), k.data(), v.data(), r.data(), S, T, nh, hd);
    EXPECT_LT(max_diff(o, r), 1e-5) << S << " " << T << " " << nh << " " << hd;
  }
}

TEST(VisionOps, ActivationsFollowTheirDefinitions) {
  auto x = randn(1000, 7, 3.0f);
  auto a = x, g = x;
  ops::quick_gelu(a.data(), int64_t(a.size()));
  ops::gelu(g.data(), int64_t(g.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    const double xd = x[i];
    EXPECT_NEAR(a[i], xd / (1 + std::exp(-1.702 * xd)), 1e-6 * (1 + std::fabs(xd)));
    EXPECT_NEAR(g[i], 0.5 * xd * (1 + std::erf(xd / std::sqrt(2.0))), 1e-6 * (1 + std::fabs(xd)));
  }
}
