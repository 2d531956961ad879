// KL-divergence of a model's next-token distributions from a base model's (llama.cpp's
// perplexity --kl-divergence), on GPTQ's perplexity windows (eval/datasets.h).
//
// For each window of T tokens and each position t in 0..T-2 (the positions perplexity scores),
// with b = the base model's logits and q = the other model's at t:
//   log p_b = b - logsumexp(b),  log p_q = q - logsumexp(q)          (log-softmax in fp64)
//   KLD_t   = sum_v p_b(v) * (log p_b(v) - log p_q(v))                (nats; KLD(base || q))
//   agree_t = argmax b == argmax q                                    (first index on ties)
// Logits come from the models in fp32; every step above reads them as double, so the
// log-softmax, the differences and the sums are fp64. A model against itself gives exactly 0
// (the two terms of each difference are the same double) and 100% agreement.
//
// Over all N positions of all windows:
//   mean            sum KLD_t / N, stderr sqrt(var / N) with var the sample variance (N - 1)
//   top-1           agreement share p, stderr sqrt(p (1 - p) / (N - 1))
//   median, p99     percentiles with linear interpolation between order statistics (numpy's and
//                   torch.quantile's default): the value at rank q (N - 1), q = 0.5, 0.99
//   max
// The base's logits are computed window by window beside the model's, in chunks of rows: memory
// is two [T, hidden] activations and two [256, vocab] logit blocks, never the set's logits.
#pragma once

#include "eval/perplexity.h"
#include "model/llama_model.h"

#include <cstdint>
#include <functional>
#include <vector>

namespace lowbit {

// KLD_t and agree_t (1 or 0) of `rows` rows of width V of base and model logits, fp64 as above.
void kld_rows(const float* base_logits, const float* logits, int64_t rows, int64_t V, double* kld, uint8_t* agree);

struct KlDivergenceStats {
  int64_t positions = 0;
  double mean = 0, stderr_ = 0;
  double median = 0, p99 = 0, max = 0;
  double top1 = 0, top1_stderr = 0;  // shares in [0, 1]
};

// The statistics above, over per-position values (kld is reordered).
KlDivergenceStats summarize_kld(std::vector<double>& kld, const std::vector<uint8_t>& agree);

struct KlDivergenceResult {
  KlDivergenceStats kld;
  PerplexityResult ppl;       // the model's perplexity over the same windows (as perplexity())
  PerplexityResult base_ppl;  // the base's
  double seconds = 0;
};

// The statistics over windows as logits arrive, for any device: per window, add_rows() for its
// positions 0..T-2 in order (in chunks of any size), then end_window(T).
class KlDivergenceAccumulator {
 public:
  explicit KlDivergenceAccumulator(int64_t vocab) : vocab_(vocab) {}
  // base_logits, logits [rows, vocab]; targets [rows]: the next tokens (for both perplexities).
  void add_rows(const float* base_logits, const float* logits, const int32_t* targets, int64_t rows);
  // The same from per-row values computed elsewhere (the GPU's kld_rows): KLD_t, agree_t and both
  // models' NLL of the next token.
  void add_values(const double* kld, const uint8_t* agree, const double* nll_b, const double* nll_q, int64_t rows);
  void end_window(int64_t tokens);
  int64_t windows() const { return result_.ppl.windows; }
  double running_mean() const { return kld_sum_ / double(kld_.size()); }
  // first_seconds: the first window's seconds (recorded by the caller at end_window(), see below).
  void set_first_seconds(double s) { result_.ppl.first_seconds = result_.base_ppl.first_seconds = s; }
  KlDivergenceResult finish(double seconds);

 private:
  int64_t vocab_;
  std::vector<double> kld_, nll_b_, nll_q_;  // nll_*: the current window's
  std::vector<uint8_t> agree_;
  double kld_sum_ = 0;
  KlDivergenceResult result_;
};

// (windows done, windows in all, seconds so far, running mean KLD)
using KlDivergenceProgress = std::function<void(int64_t, int64_t, double, double)>;

// KLD(base || model) over `windows`. Both models must have the same vocabulary size (throws
// naming both otherwise); the windows must come from a tokenizer both models share (the caller
// checks: kl_divergence cannot).
KlDivergenceResult kl_divergence(const LlamaModel& base, const LlamaModel& model,
                                 const std::vector<std::vector<int32_t>>& windows,
                                 const KlDivergenceProgress& progress = {});

}  // namespace lowbit
