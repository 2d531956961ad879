#include "eval/kl_divergence.h"

#include "backend/ops.h"
#include "core/error.h"

#include <algorithm>
#include <chrono>
#include <cmath>

namespace lowbit {

namespace {

double log_sum_exp(const float* x, int64_t V) {
  double m = x[0];
  for (int64_t v = 1; v < V; ++v) m = std::max(m, double(x[v]));
  double s = 0;
  for (int64_t v = 0; v < V; ++v) s += std::exp(double(x[v]) - m);
  return m + std::log(s);
}

int64_t argmax(const float* x, int64_t V) { return std::max_element(x, x + V) - x; }

// Linear interpolation between order statistics of sorted values.
double percentile(const std::vector<double>& sorted, double q) {
  const double rank = q * double(sorted.size() - 1);
  const size_t lo = size_t(std::floor(rank));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (rank - double(lo)) * (sorted[hi] - sorted[lo]);
}

// The final-normed hidden states [T, H] of one window, with the model's forward hooks.
std::vector<float> final_hidden(const LlamaModel& m, const std::vector<int32_t>& tokens) {
  const int64_t T = int64_t(tokens.size());
  m.ensure_positions(T);
  std::vector<float> hidden(size_t(T * m.config().hidden_size));
  m.embed(tokens, hidden.data());
  for (int64_t i = 0; i < m.config().num_hidden_layers; ++i) m.run_block(i, hidden.data(), 1, T, 0, m.forward_hooks());
  m.final_norm(hidden.data(), T);
  return hidden;
}

}  // namespace

void kld_rows(const float* base_logits, const float* logits, int64_t rows, int64_t V, double* kld, uint8_t* agree) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* b = base_logits + r * V;
    const float* q = logits + r * V;
    const double lse_b = log_sum_exp(b, V), lse_q = log_sum_exp(q, V);
    double s = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double lb = double(b[v]) - lse_b;
      s += std::exp(lb) * (lb - (double(q[v]) - lse_q));
    }
    kld[r] = s;
    agree[r] = argmax(b, V) == argmax(q, V) ? 1 : 0;
  }
}

KlDivergenceStats summarize_kld(std::vector<double>& kld, const std::vector<uint8_t>& agree) {
  LB_CHECK(!kld.empty() && kld.size() == agree.size(), "KL-divergence: {} values and {} agreements", kld.size(),
           agree.size());
  KlDivergenceStats s;
  const double n = double(kld.size());
  s.positions = int64_t(kld.size());
  double sum = 0;
  int64_t same = 0;
  for (size_t i = 0; i < kld.size(); ++i) {
    sum += kld[i];
    same += agree[i];
  }
  s.mean = sum / n;
  s.top1 = double(same) / n;
  if (kld.size() > 1) {
    double var = 0;
    for (double x : kld) var += (x - s.mean) * (x - s.mean);
    var /= n - 1;
    s.stderr_ = std::sqrt(var / n);
    s.top1_stderr = std::sqrt(s.top1 * (1 - s.top1) / (n - 1));
  }
  std::sort(kld.begin(), kld.end());
  s.median = percentile(kld, 0.5);
  s.p99 = percentile(kld, 0.99);
  s.max = kld.back();
  return s;
}

KlDivergenceResult kl_divergence(const LlamaModel& base, const LlamaModel& model,
                                 const std::vector<std::vector<int32_t>>& windows,
                                 const KlDivergenceProgress& progress) {
  LB_CHECK(!windows.empty(), "KL-divergence: no windows to evaluate");
  const int64_t V = model.config().vocab_size, H = model.config().hidden_size, Hb = base.config().hidden_size;
  LB_CHECK(base.config().vocab_size == V, "KL-divergence: the base model has {} tokens in its vocabulary, the model {}",
           base.config().vocab_size, V);
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  KlDivergenceResult r;
  std::vector<double> kld;
  std::vector<uint8_t> agree;
  double kld_sum = 0;
  constexpr int64_t kChunk = 256;
  for (const auto& w : windows) {
    const int64_t T = int64_t(w.size());
    LB_CHECK(T >= 2, "KL-divergence: a window needs at least 2 tokens, got {}", T);
    const std::vector<float> hb = final_hidden(base, w), hq = final_hidden(model, w);
    const int64_t n = T - 1;
    std::vector<float> lb(size_t(std::min(kChunk, n) * V)), lq(lb.size());
    std::vector<double> nll_b(static_cast<size_t>(n)), nll_q(static_cast<size_t>(n));
    const size_t first = kld.size();
    kld.resize(first + size_t(n));
    agree.resize(first + size_t(n));
    for (int64_t r0 = 0; r0 < n; r0 += kChunk) {
      const int64_t rows = std::min(kChunk, n - r0);
      base.lm_head(hb.data() + r0 * Hb, rows, lb.data());
      model.lm_head(hq.data() + r0 * H, rows, lq.data());
      ops::nll_rows(lb.data(), w.data() + r0 + 1, nll_b.data() + r0, rows, V);
      ops::nll_rows(lq.data(), w.data() + r0 + 1, nll_q.data() + r0, rows, V);
      kld_rows(lb.data(), lq.data(), rows, V, kld.data() + first + size_t(r0), agree.data() + first + size_t(r0));
    }
    // Perplexity exactly as perplexity() sums it: the mean NLL of each window.
    double sb = 0, sq = 0;
    for (int64_t t = 0; t < n; ++t) {
      sb += nll_b[size_t(t)];
      sq += nll_q[size_t(t)];
      kld_sum += kld[first + size_t(t)];
    }
    for (PerplexityResult* p : {&r.base_ppl, &r.ppl}) {
      p->window_nll.push_back((p == &r.ppl ? sq : sb) / double(n));
      p->tokens += T;
      ++p->windows;
    }
    if (r.ppl.windows == 1) {
      r.ppl.first_windows = r.base_ppl.first_windows = 1;
      r.ppl.first_seconds = r.base_ppl.first_seconds = elapsed();
    }
    if (progress) progress(r.ppl.windows, int64_t(windows.size()), elapsed(), kld_sum / double(kld.size()));
  }
  summarize_windows(r.ppl);
  summarize_windows(r.base_ppl);
  r.kld = summarize_kld(kld, agree);
  r.seconds = r.ppl.seconds = r.base_ppl.seconds = elapsed();
  return r;
}

}  // namespace lowbit
