// The backward ops (backend/ops_backward.h) against two independent references:
//   - PyTorch autograd on identical inputs (tests/fixtures/train/ops_backward.safetensors, written
//     by scripts/make_train_fixtures.py), over shapes on both sides of the forward's tile edges;
//   - central finite differences of the scalar forward references (ref::), L = sum(dy * f(x)).
#include "backend/ops_backward.h"
#include "formats/safetensors.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
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

// max |a - b| / max(1, max |b|).
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0, s = 1;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    m = std::max(m, double(std::fabs(a[i] - b[i])));
    s = std::max(s, double(std::fabs(b[i])));
  }
  return m / s;
}

class Fixture {
 public:
  Fixture() : f_(SafetensorsFile::open(test::fixtures_dir() + "/train/ops_backward.safetensors")) {}
  std::vector<float> f32(const std::string& name) const {
    const Tensor t = f_->tensor(name);
    return std::vector<float>(t.data_as<float>(), t.data_as<float>() + t.numel());
  }
  std::vector<int32_t> i32(const std::string& name) const {
    const Tensor t = f_->tensor(name);
    return std::vector<int32_t>(t.data_as<int32_t>(), t.data_as<int32_t>() + t.numel());
  }

 private:
  std::shared_ptr<const SafetensorsFile> f_;
};

// Central differences of L(x) = sum(dy * f(x)) at `samples` coordinates of x spread over it,
// against the analytic gradient g. The forward references round their outputs to fp32; with
// h = 1e-2 that rounding contributes ~1e-4 to a difference quotient and the O(h^2) truncation
// about the same for these smooth ops, so 2e-3 (relative to max(1, |g|)) separates them from any
// real error (a wrong sign or a missing term is O(|g|)).
void check_fd(const char* what, std::vector<float>& x, const std::vector<float>& g,
              const std::function<double()>& loss, int samples = 24) {
  const double h = 1e-2;
  const size_t n = x.size();
  double worst = 0;
  for (int s = 0; s < samples && s < int(n); ++s) {
    const size_t i = n <= size_t(samples) ? size_t(s) : size_t(s) * (n - 1) / size_t(samples - 1);
    const float keep = x[i];
    x[i] = float(keep + h);
    const double lp = loss();
    x[i] = float(keep - h);
    const double lm = loss();
    x[i] = keep;
    const double fd = (lp - lm) / (2 * h);
    worst = std::max(worst, std::fabs(fd - g[i]) / std::max(1.0, std::fabs(double(g[i]))));
  }
  EXPECT_LT(worst, 2e-3) << what;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
  return s;
}

LlamaConfig tiny_rope_config() {
  // The fixture script's TINY model: head_dim 16, llama3 scaling with a 32-token original context.
  LlamaConfig c;
  c.head_dim = 16;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = RopeScaling::Type::Llama3;
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 32;
  return c;
}

// Autograd tolerances: both sides are fp32 with different summation orders; the differences
// observed are a few 1e-7 relative; 1e-5 leaves a wide margin and still catches any wrong term.
constexpr double kTorchTol = 1e-5;

TEST(OpsBackward, RmsNormMatchesAutograd) {
  Fixture fx;
  for (int dim : {7, 64, 513}) {
    const std::string c = "rmsnorm.d" + std::to_string(dim) + ".";
    auto x = fx.f32(c + "x"), w = fx.f32(c + "w"), dy = fx.f32(c + "dy");
    std::vector<float> dx(x.size()), dw(w.size());
    ops::rmsnorm_backward(x.data(), w.data(), dy.data(), dx.data(), dw.data(), 5, dim, 1e-5f);
    EXPECT_LT(rel_err(dx, fx.f32(c + "dx")), kTorchTol) << dim;
    EXPECT_LT(rel_err(dw, fx.f32(c + "dw")), kTorchTol) << dim;
  }
}

TEST(OpsBackward, RmsNormFiniteDifferences) {
  const int64_t rows = 3, dim = 33;
  auto x = randn(rows * dim, 1), w = randn(dim, 2), dy = randn(rows * dim, 3);
  for (float& v : w) v = 1 + 0.1f * v;
  std::vector<float> dx(x.size()), dw(w.size()), y(x.size());
  ops::rmsnorm_backward(x.data(), w.data(), dy.data(), dx.data(), dw.data(), rows, dim, 1e-5f);
  auto loss = [&] {
    ref::rmsnorm(x.data(), w.data(), y.data(), rows, dim, 1e-5f);
    return dot(dy, y);
  };
  check_fd("rmsnorm dx", x, dx, loss);
  check_fd("rmsnorm dw", w, dw, loss);
  // dx aliasing dy (without dw) gives the same dx.
  std::vector<float> d2 = dy;
  ops::rmsnorm_backward(x.data(), w.data(), d2.data(), d2.data(), nullptr, rows, dim, 1e-5f);
  EXPECT_EQ(d2, dx);
}

TEST(OpsBackward, LinearMatchesAutograd) {
  Fixture fx;
  for (auto [rows, in, out] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {3, 17, 5}, {65, 33, 130}}) {
    const std::string c = "linear.r" + std::to_string(rows) + "i" + std::to_string(in) + "o" + std::to_string(out) + ".";
    auto x = fx.f32(c + "x"), w = fx.f32(c + "w"), dy = fx.f32(c + "dy");
    std::vector<float> dx(x.size(), 7.0f), dw(w.size());
    ops::linear_backward(x.data(), w.data(), dy.data(), dx.data(), dw.data(), rows, in, out);
    EXPECT_LT(rel_err(dx, fx.f32(c + "dx")), kTorchTol) << c;
    EXPECT_LT(rel_err(dw, fx.f32(c + "dw")), kTorchTol) << c;
    // accumulate_dx adds; dw adds.
    std::vector<float> dx2 = dx;
    ops::linear_backward(x.data(), w.data(), dy.data(), dx2.data(), dw.data(), rows, in, out, true);
    for (size_t i = 0; i < dx.size(); ++i) EXPECT_FLOAT_EQ(dx2[i], 2 * dx[i]);
  }
}

TEST(OpsBackward, LinearFiniteDifferences) {
  const int64_t rows = 4, in = 9, out = 6;
  auto x = randn(rows * in, 4), w = randn(out * in, 5), dy = randn(rows * out, 6);
  std::vector<float> dx(x.size()), dw(w.size()), y(size_t(rows * out));
  ops::linear_backward(x.data(), w.data(), dy.data(), dx.data(), dw.data(), rows, in, out);
  auto loss = [&] {
    ref::linear(x.data(), w.data(), y.data(), rows, in, out);
    return dot(dy, y);
  };
  check_fd("linear dx", x, dx, loss);
  check_fd("linear dw", w, dw, loss);
}

TEST(OpsBackward, RopeLlama3MatchesAutograd) {
  Fixture fx;
  const LlamaConfig c = tiny_rope_config();
  for (int64_t T : {1, 70}) {
    const std::string k = "rope.t" + std::to_string(T) + ".";
    const RopeTable rt = make_rope_table(c, T);
    auto dx = fx.f32(k + "dy");
    ops::rope_backward(dx.data(), T, 3, 3 * 16, rt, 0);
    EXPECT_LT(rel_err(dx, fx.f32(k + "dx")), kTorchTol) << T;
  }
}

TEST(OpsBackward, RopeFiniteDifferences) {
  const LlamaConfig c = tiny_rope_config();
  const int64_t T = 40, heads = 2, ld = 2 * 16;
  const RopeTable rt = make_rope_table(c, T + 5);
  auto x = randn(T * ld, 7), dy = randn(T * ld, 8);
  std::vector<float> dx = dy, y;
  ops::rope_backward(dx.data(), T, heads, ld, rt, 5);
  auto loss = [&] {
    y = x;
    ref::rope(y.data(), T, heads, ld, rt, 5);
    return dot(dy, y);
  };
  check_fd("rope dx", x, dx, loss, 64);
}

TEST(OpsBackward, AttentionMatchesAutograd) {
  Fixture fx;
  const int64_t nh = 4, nkv = 2, hd = 16;
  for (int64_t T : {1, 63, 64, 65, 130}) {
    const std::string c = "attention.t" + std::to_string(T) + ".";
    auto q = fx.f32(c + "q"), k = fx.f32(c + "k"), v = fx.f32(c + "v"), dy = fx.f32(c + "dy");
    std::vector<float> dq(q.size()), dk(k.size(), 5.0f), dv(v.size(), 5.0f);
    ops::attention_backward(q.data(), k.data(), v.data(), dy.data(), dq.data(), dk.data(), dv.data(), T, nh, nkv, hd);
    EXPECT_LT(rel_err(dq, fx.f32(c + "dq")), kTorchTol) << T;
    EXPECT_LT(rel_err(dk, fx.f32(c + "dk")), kTorchTol) << T;
    EXPECT_LT(rel_err(dv, fx.f32(c + "dv")), kTorchTol) << T;
  }
}

TEST(OpsBackward, AttentionFiniteDifferences) {
  const int64_t nh = 4, nkv = 2, hd = 8;
  for (int64_t T : {1, 5, 65}) {
    auto q = randn(T * nh * hd, 9, 0.5f), k = randn(T * nkv * hd, 10, 0.5f), v = randn(T * nkv * hd, 11);
    auto dy = randn(T * nh * hd, 12);
    std::vector<float> dq(q.size()), dk(k.size()), dv(v.size()), y(q.size());
    ops::attention_backward(q.data(), k.data(), v.data(), dy.data(), dq.data(), dk.data(), dv.data(), T, nh, nkv, hd);
    auto loss = [&] {
      ref::attention(q.data(), k.data(), v.data(), y.data(), T, nh, nkv, hd);
      return dot(dy, y);
    };
    check_fd("attention dq", q, dq, loss, 16);
    check_fd("attention dk", k, dk, loss, 16);
    check_fd("attention dv", v, dv, loss, 16);
  }
}

TEST(OpsBackward, SwigluMatchesAutogradAndFiniteDifferences) {
  Fixture fx;
  auto g = fx.f32("swiglu.n1000.gate"), u = fx.f32("swiglu.n1000.up"), dy = fx.f32("swiglu.n1000.dy");
  std::vector<float> dg(g.size()), du(u.size()), y(g.size());
  ops::swiglu_backward(g.data(), u.data(), dy.data(), dg.data(), du.data(), int64_t(g.size()));
  EXPECT_LT(rel_err(dg, fx.f32("swiglu.n1000.dgate")), kTorchTol);
  EXPECT_LT(rel_err(du, fx.f32("swiglu.n1000.dup")), kTorchTol);
  auto loss = [&] {
    ref::swiglu(g.data(), u.data(), y.data(), int64_t(g.size()));
    return dot(dy, y);
  };
  check_fd("swiglu dgate", g, dg, loss, 64);
  check_fd("swiglu dup", u, du, loss, 64);
}

TEST(OpsBackward, CrossEntropyMatchesAutogradAndFiniteDifferences) {
  Fixture fx;
  auto logits = fx.f32("xent.r70v300.logits");
  const auto targets = fx.i32("xent.r70v300.targets");
  const int64_t rows = 70, V = 300;
  int64_t n = 0;
  for (int32_t t : targets) n += t >= 0;
  ASSERT_GT(n, 0);
  std::vector<float> d(logits.size());
  const double sum = ops::cross_entropy_backward(logits.data(), targets.data(), d.data(), rows, V, 1.0f / float(n));
  EXPECT_NEAR(sum / double(n), fx.f32("xent.r70v300.loss")[0], 1e-5);
  EXPECT_LT(rel_err(d, fx.f32("xent.r70v300.dlogits")), kTorchTol);
  // The mean loss from ref::nll_rows over the rows with a target.
  auto loss = [&] {
    double s = 0, nll = 0;
    for (int64_t r = 0; r < rows; ++r)
      if (targets[size_t(r)] >= 0) {
        ref::nll_rows(logits.data() + r * V, targets.data() + r, &nll, 1, V);
        s += nll;
      }
    return s / double(n);
  };
  check_fd("cross-entropy dlogits", logits, d, loss, 64);
}

TEST(OpsBackward, EmbeddingMatchesAutograd) {
  Fixture fx;
  const auto toks = fx.i32("embedding.v20.tokens");
  auto dy = fx.f32("embedding.v20.dy");
  std::vector<float> dt(20 * 8);
  ops::embedding_backward(toks.data(), dy.data(), dt.data(), int64_t(toks.size()), 8);
  EXPECT_LT(rel_err(dt, fx.f32("embedding.v20.dtable")), kTorchTol);
}

}  // namespace
}  // namespace lowbit
