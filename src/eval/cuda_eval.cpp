#include "eval/cuda_eval.h"

#include "core/error.h"

#include <chrono>
#include <cmath>

namespace lowbit {

PerplexityResult perplexity_cuda(CudaModel& model, const std::vector<std::vector<int32_t>>& windows, int64_t batch,
                                 const PerplexityProgress& progress) {
  LB_CHECK(!windows.empty(), "perplexity: no windows to evaluate");
  const auto t0 = std::chrono::steady_clock::now();
  PerplexityResult r;
  double sum = 0;
  for (size_t w0 = 0; w0 < windows.size(); w0 += size_t(batch)) {
    const size_t n = std::min(size_t(batch), windows.size() - w0);
    const std::vector<std::vector<int32_t>> part(windows.begin() + std::ptrdiff_t(w0),
                                                 windows.begin() + std::ptrdiff_t(w0 + n));
    for (double m : model.window_nll(part, int64_t(n))) {
      r.window_nll.push_back(m);
      sum += m;
      r.tokens += int64_t(windows[0].size());
      ++r.windows;
    }
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (w0 == 0) {
      r.first_windows = r.windows;
      r.first_seconds = elapsed;
      // A profile covers the forwards after the first, whose one-time costs would blur it.
      if (model.profile() && w0 + n < windows.size()) model.profile()->reset();
    }
    if (progress) progress(r.windows, int64_t(windows.size()), elapsed, std::exp(sum / double(r.windows)));
  }
  summarize_windows(r);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

namespace {

class CudaMcBackend final : public McBackend {
 public:
  CudaMcBackend(CudaModel& model, int64_t max_length)
      : model_(model), max_length_(max_length), cache_(model.make_kv_cache(max_length)) {}
  int64_t max_length() const override { return max_length_; }
  void truncate(int64_t n) override { cache_.truncate(n); }
  int run(std::span<const int32_t> tokens) override {
    runs_.emplace_back();
    model_.forward_cached(tokens, cache_, runs_.back());
    return int(runs_.size()) - 1;
  }
  void score(const std::vector<Row>& rows, double* loglik, bool* greedy) override {
    const int64_t H = model_.config().hidden_size, n = int64_t(rows.size());
    gathered_.resize(size_t(n * H));
    std::vector<int32_t> targets(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const Row& r = rows[size_t(i)];
      LB_CUDA_CHECK(cudaMemcpyAsync(gathered_.get() + i * H, runs_[size_t(r.run)].get() + r.index * H,
                                    size_t(H) * sizeof(cuda::bf16), cudaMemcpyDeviceToDevice,
                                    model_.context().stream()));
      targets[size_t(i)] = r.target;
    }
    model_.score_rows(gathered_.get(), targets.data(), n, loglik, greedy);
  }
  void clear_runs() override { runs_.clear(); }

 private:
  CudaModel& model_;
  int64_t max_length_;
  GpuKvCache cache_;
  std::vector<cuda::DeviceBuffer<cuda::bf16>> runs_;
  cuda::DeviceBuffer<cuda::bf16> gathered_;
};

}  // namespace

std::unique_ptr<McBackend> make_cuda_mc_backend(CudaModel& model, int64_t max_length) {
  return std::make_unique<CudaMcBackend>(model, max_length);
}

}  // namespace lowbit
