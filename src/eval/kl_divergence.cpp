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

void KlDivergenceAccumulator::add_rows(const float* base_logits, const float* logits, const int32_t* targets,
                                       int64_t rows) {
  std::vector<double> kld(static_cast<size_t>(rows)), nll_b(kld.size()), nll_q(kld.size());
  std::vector<uint8_t> agree(kld.size());
  kld_rows(base_logits, logits, rows, vocab_, kld.data(), agree.data());
  ops::nll_rows(base_logits, targets, nll_b.data(), rows, vocab_);
  ops::nll_rows(logits, targets, nll_q.data(), rows, vocab_);
  add_values(kld.data(), agree.data(), nll_b.data(), nll_q.data(), rows);
}

void KlDivergenceAccumulator::add_values(const double* kld, const uint8_t* agree, const double* nll_b,
                                         const double* nll_q, int64_t rows) {
  kld_.insert(kld_.end(), kld, kld + rows);
  agree_.insert(agree_.end(), agree, agree + rows);
  nll_b_.insert(nll_b_.end(), nll_b, nll_b + rows);
  nll_q_.insert(nll_q_.end(), nll_q, nll_q + rows);
  for (int64_t i = 0; i < rows; ++i) kld_sum_ += kld[i];
}

void KlDivergenceAccumulator::end_window(int64_t tokens) {
  LB_CHECK(!nll_b_.empty(), "KL-divergence: a window with no positions");
  // Perplexity exactly as perplexity() sums it: the mean NLL of each window, summed in order.
  for (auto [p, nll] : {std::pair{&result_.base_ppl, &nll_b_}, std::pair{&result_.ppl, &nll_q_}}) {
    double s = 0;
    for (double x : *nll) s += x;
    p->window_nll.push_back(s / double(nll->size()));
    p->tokens += tokens;
    ++p->windows;
    p->first_windows = 1;
    nll->clear();
  }
}

KlDivergenceResult KlDivergenceAccumulator::finish(double seconds) {
  LB_CHECK(result_.ppl.windows > 0, "KL-divergence: no windows were evaluated");
  summarize_windows(result_.ppl);
  summarize_windows(result_.base_ppl);
  result_.kld = summarize_kld(kld_, agree_);
  result_.seconds = result_.ppl.seconds = result_.base_ppl.seconds = seconds;
  return std::move(result_);
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
  KlDivergenceAccumulator acc(V);
  constexpr int64_t kChunk = 256;
  for (const auto& w : windows) {
    const int64_t T = int64_t(w.size());
    LB_CHECK(T >= 2, "KL-divergence: a window needs at least 2 tokens, got {}", T);
    const std::vector<float> hb = final_hidden(base, w), hq = final_hidden(model, w);
    const int64_t n = T - 1;
    std::vector<float> lb(size_t(std::min(kChunk, n) * V)), lq(lb.size());
    for (int64_t r0 = 0; r0 < n; r0 += kChunk) {
      const int64_t rows = std::min(kChunk, n - r0);
      base.lm_head(hb.data() + r0 * Hb, rows, lb.data());
      model.lm_head(hq.data() + r0 * H, rows, lq.data());
      acc.add_rows(lb.data(), lq.data(), w.data() + r0 + 1, rows);
    }
    acc.end_window(T);
    if (acc.windows() == 1) acc.set_first_seconds(elapsed());
    if (progress) progress(acc.windows(), int64_t(windows.size()), elapsed(), acc.running_mean());
  }
  return acc.finish(elapsed());
}

}  // namespace lowbit
