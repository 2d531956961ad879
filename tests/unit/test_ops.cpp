// The fast CPU ops against the scalar references, over shapes on both sides of the kernels'
// tile edges (attention works in blocks of 64 queries), in the manner of ggml's test-backend-ops.
#include "backend/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace lowbit {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// max |a - b| / max(1, max |b|): fp32 against a double-accumulated reference.
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0, s = 1;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, double(std::fabs(a[i] - b[i])));
    s = std::max(s, double(std::fabs(b[i])));
  }
  return m / s;
}

LlamaConfig rope_config(RopeScaling::Type type) {
  LlamaConfig c;
  c.head_dim = 64;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = type;
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  return c;
}

TEST(Ops, RmsNorm) {
  for (int64_t dim : {1, 7, 64, 513}) {
    const int64_t rows = 5;
    auto x = randn(size_t(rows * dim), 1), w = randn(size_t(dim), 2);
    std::vector<float> a(x.size()), b(x.size());
    ops::rmsnorm(x.data(), w.data(), a.data(), rows, dim, 1e-5f);
    ref::rmsnorm(x.data(), w.data(), b.data(), rows, dim, 1e-5f);
    EXPECT_LT(rel_err(a, b), 1e-6) << dim;  // one fp32 sum of squares: a few ulp
  }
}

TEST(Ops, Linear) {
  for (auto [rows, in, out] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {3, 17, 5}, {64, 128, 96}, {65, 33, 130}}) {
    auto x = randn(size_t(rows * in), 3), w = randn(size_t(out * in), 4);
    std::vector<float> a(size_t(rows * out)), b(a.size());
    ops::linear(x.data(), w.data(), a.data(), rows, in, out);
    ref::linear(x.data(), w.data(), b.data(), rows, in, out);
    // fp32 accumulation over `in` terms of unit variance: error grows like sqrt(in) ulp.
    EXPECT_LT(rel_err(a, b), 1e-5) << rows << "x" << in << "x" << out;
  }
}

TEST(Ops, RopeMatchesReferenceForEveryScaling) {
  for (auto type : {RopeScaling::Type::None, RopeScaling::Type::Linear, RopeScaling::Type::Llama3}) {
    const LlamaConfig c = rope_config(type);
    const RopeTable rt = make_rope_table(c, 300);
    const int64_t T = 37, heads = 3, ld = heads * 64 + 5;
    auto x = randn(size_t(T * ld), 5);
    auto a = x, b = x;
    ops::rope(a.data(), T, heads, ld, rt, 250);
    ref::rope(b.data(), T, heads, ld, rt, 250);
    EXPECT_EQ(a, b);
  }
}

// The scaled inverse frequencies, from transformers' definition written out in double.
TEST(Ops, RopeInvFreqDefinitions) {
  const double theta = 500000.0, factor = 8.0, lo = 1.0, hi = 4.0, old_ctx = 8192.0;
  const auto none = rope_inv_freq(rope_config(RopeScaling::Type::None));
  const auto lin = rope_inv_freq(rope_config(RopeScaling::Type::Linear));
  const auto l3 = rope_inv_freq(rope_config(RopeScaling::Type::Llama3));
  int low = 0, high = 0, mid = 0;
  for (int i = 0; i < 32; ++i) {
    const double f = 1.0 / std::pow(theta, 2.0 * i / 64.0);
    EXPECT_NEAR(none[size_t(i)], f, 1e-6 * f);
    EXPECT_NEAR(lin[size_t(i)], f / factor, 1e-6 * f);
    const double wavelen = 2 * M_PI / f;
    double want;
    if (wavelen < old_ctx / hi) {
      want = f;
      ++high;
    } else if (wavelen > old_ctx / lo) {
      want = f / factor;
      ++low;
    } else {
      const double smooth = (old_ctx / wavelen - lo) / (hi - lo);
      want = (1 - smooth) * f / factor + smooth * f;
      ++mid;
    }
    EXPECT_NEAR(l3[size_t(i)], want, 1e-5 * want) << i;
  }
  EXPECT_GT(low, 0);  // all three bands are exercised
  EXPECT_GT(mid, 0);
  EXPECT_GT(high, 0);
}

TEST(Ops, AttentionAcrossBlockEdges) {
  for (int64_t T : {1, 2, 63, 64, 65, 130}) {
    for (auto [nh, nkv, hd] : std::vector<std::array<int64_t, 3>>{{2, 2, 8}, {4, 1, 64}, {8, 2, 16}}) {
      auto q = randn(size_t(T * nh * hd), 6, 2.0f), k = randn(size_t(T * nkv * hd), 7, 2.0f),
           v = randn(size_t(T * nkv * hd), 8);
      std::vector<float> a(q.size()), b(q.size());
      ops::attention(q.data(), k.data(), v.data(), a.data(), T, nh, nkv, hd);
      ref::attention(q.data(), k.data(), v.data(), b.data(), T, nh, nkv, hd);
      EXPECT_LT(rel_err(a, b), 2e-6) << "T " << T << " nh " << nh << " nkv " << nkv << " hd " << hd;
    }
  }
}

// Queries after a cache of `past` positions: the same as the last T rows of a full pass.
TEST(Ops, AttentionWithPastKeys) {
  for (int64_t past : {1, 17, 64, 100}) {
    for (int64_t T : {1, 5, 64, 70}) {
      const int64_t nh = 4, nkv = 2, hd = 16, all = past + T;
      auto q = randn(size_t(all * nh * hd), 11, 2.0f), k = randn(size_t(all * nkv * hd), 12, 2.0f),
           v = randn(size_t(all * nkv * hd), 13);
      std::vector<float> full(q.size()), tail(size_t(T * nh * hd)), ref_tail(tail.size());
      ref::attention(q.data(), k.data(), v.data(), full.data(), all, nh, nkv, hd);
      ops::attention(q.data() + past * nh * hd, k.data(), v.data(), tail.data(), T, nh, nkv, hd, past);
      ref::attention(q.data() + past * nh * hd, k.data(), v.data(), ref_tail.data(), T, nh, nkv, hd, past);
      std::vector<float> want(full.begin() + past * nh * hd, full.end());
      EXPECT_LT(rel_err(tail, want), 2e-6) << "past " << past << " T " << T;
      EXPECT_LT(rel_err(ref_tail, want), 1e-12) << "past " << past << " T " << T;
    }
  }
}

// Decode's attention (one query row, SmolLM2-135M's heads: 9 query, 3 KV, 64 wide) runs its heads
// on the thread pool: against the reference, and the same bits at 1 and 2 threads.
TEST(Ops, DecodeAttentionOnThePool) {
  struct RestoreThreads {  // also when an assertion ends the test early
    int n = num_threads();
    ~RestoreThreads() { set_num_threads(n); }
  } restore;
  for (int64_t past : {0, 3, 127, 255}) {
    const int64_t nh = 9, nkv = 3, hd = 64, all = past + 1;
    auto q = randn(size_t(nh * hd), 21, 2.0f), k = randn(size_t(all * nkv * hd), 22, 2.0f),
         v = randn(size_t(all * nkv * hd), 23);
    std::vector<float> want(q.size()), one(q.size()), two(q.size());
    ref::attention(q.data(), k.data(), v.data(), want.data(), 1, nh, nkv, hd, past);
    set_num_threads(1);
    ops::attention(q.data(), k.data(), v.data(), one.data(), 1, nh, nkv, hd, past);
    EXPECT_LT(rel_err(one, want), 2e-6) << "past " << past;
    set_num_threads(2);
    for (int rep = 0; rep < 20; ++rep) {
      ops::attention(q.data(), k.data(), v.data(), two.data(), 1, nh, nkv, hd, past);
      ASSERT_EQ(one, two) << "past " << past << " repeat " << rep;
    }
  }
}

TEST(Ops, SwiGlu) {
  auto g = randn(1000, 9, 4.0f), u = randn(1000, 10);
  g[0] = -90.0f;  // exp overflow region of silu
  g[1] = 90.0f;
  std::vector<float> a(1000), b(1000);
  ops::swiglu(g.data(), u.data(), a.data(), 1000);
  ref::swiglu(g.data(), u.data(), b.data(), 1000);
  EXPECT_LT(rel_err(a, b), 1e-6);
}

TEST(Ops, NllRows) {
  const int64_t rows = 4, V = 32000;
  auto l = randn(size_t(rows * V), 11, 5.0f);
  l[7] = 80.0f;  // a dominant logit
  std::vector<int32_t> t = {7, 1, 31999, 12345};
  std::vector<double> a(rows), b(rows);
  ops::nll_rows(l.data(), t.data(), a.data(), rows, V);
  ref::nll_rows(l.data(), t.data(), b.data(), rows, V);
  for (int64_t r = 0; r < rows; ++r) EXPECT_NEAR(a[size_t(r)], b[size_t(r)], 1e-5 * std::max(1.0, b[size_t(r)]));
}

}  // namespace
}  // namespace lowbit
