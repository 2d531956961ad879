// Perplexity as GPTQ's llama_eval computes it (PROTOCOL.md): for each window, the mean
// cross-entropy of positions 0..T-2 predicting tokens 1..T-1; ppl = exp(mean over windows).
#pragma once

#include "model/llama_model.h"

#include <cstdint>
#include <functional>
#include <vector>

namespace lowbit {

struct PerplexityResult {
  double ppl = 0;
  double ppl_stderr = 0;   // delta method: ppl * stderr of the mean window NLL
  double mean_nll = 0;     // nats per predicted token
  int64_t windows = 0;
  int64_t tokens = 0;      // tokens in the evaluated windows (windows * seqlen)
  double seconds = 0;
  // The first forward (one window on the CPU, one batch on the GPU), which carries the one-time
  // costs (cuBLAS's kernel choice, loading kernels): its windows and seconds, within the above.
  int64_t first_windows = 0;
  double first_seconds = 0;
  std::vector<double> window_nll;  // mean NLL of each window
};

// Fills mean_nll, ppl and ppl_stderr from window_nll (GPTQ's mean of window means).
void summarize_windows(PerplexityResult& r);

// (windows done, windows in all, seconds so far, running ppl)
using PerplexityProgress = std::function<void(int64_t, int64_t, double, double)>;

PerplexityResult perplexity(const LlamaModel& model, const std::vector<std::vector<int32_t>>& windows,
                            const PerplexityProgress& progress = {});

}  // namespace lowbit
