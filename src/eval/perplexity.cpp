#include "eval/perplexity.h"

#include "core/error.h"

#include <chrono>
#include <cmath>

namespace lowbit {

void summarize_windows(PerplexityResult& r) {
  // GPTQ accumulates mean * seqlen and divides by windows * seqlen: the mean of window means.
  double sum = 0;
  for (double m : r.window_nll) sum += m;
  r.mean_nll = sum / double(r.windows);
  r.ppl = std::exp(r.mean_nll);
  if (r.windows > 1) {
    double var = 0;
    for (double m : r.window_nll) var += (m - r.mean_nll) * (m - r.mean_nll);
    var /= double(r.windows - 1);
    r.ppl_stderr = r.ppl * std::sqrt(var / double(r.windows));
  }
}

PerplexityResult perplexity(const LlamaModel& model, const std::vector<std::vector<int32_t>>& windows,
                            const PerplexityProgress& progress) {
  LB_CHECK(!windows.empty(), "perplexity: no windows to evaluate");
  const auto t0 = std::chrono::steady_clock::now();
  PerplexityResult r;
  double sum = 0;
  for (const auto& w : windows) {
    const std::vector<double> nll = model.next_token_nll(w);
    double s = 0;
    for (double x : nll) s += x;
    const double mean = s / double(nll.size());
    r.window_nll.push_back(mean);
    sum += mean;
    r.tokens += int64_t(w.size());
    ++r.windows;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r.windows == 1) {
      r.first_windows = 1;
      r.first_seconds = elapsed;
    }
    if (progress) progress(r.windows, int64_t(windows.size()), elapsed, std::exp(sum / double(r.windows)));
  }
  summarize_windows(r);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace lowbit
