#include "eval/cuda_eval.h"

#include "backend/cuda/ops.cuh"
#include "core/error.h"
#include "model/cuda_decode_graph.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <numeric>

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

KlDivergenceResult kl_divergence_cuda(CudaModel& base, CudaModel& model, const std::vector<std::vector<int32_t>>& windows,
                                      const KlDivergenceProgress& progress) {
  LB_CHECK(!windows.empty(), "KL-divergence: no windows to evaluate");
  const int64_t V = model.config().vocab_size;
  LB_CHECK(base.config().vocab_size == V, "KL-divergence: the base model has {} tokens in its vocabulary, the model {}",
           base.config().vocab_size, V);
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  int64_t T_max = 0;
  for (const auto& w : windows) T_max = std::max<int64_t>(T_max, int64_t(w.size()));
  GpuKvCache cache_b = base.make_kv_cache(T_max), cache_q = model.make_kv_cache(T_max);
  cuda::DeviceBuffer<cuda::bf16> rows_b, rows_q;
  constexpr int64_t kChunk = 256;
  const int64_t chunk = std::min(kChunk, T_max);
  cuda::DeviceBuffer<float> dl_b(static_cast<size_t>(chunk * V)), dl_q(static_cast<size_t>(chunk * V));
  cuda::DeviceBuffer<int32_t> d_targets(static_cast<size_t>(chunk));
  cuda::DeviceBuffer<double> d_kld(static_cast<size_t>(chunk)), d_nll_b(static_cast<size_t>(chunk)),
      d_nll_q(static_cast<size_t>(chunk));
  cuda::DeviceBuffer<uint8_t> d_agree(static_cast<size_t>(chunk));
  std::vector<double> kld(static_cast<size_t>(chunk)), nll_b(kld.size()), nll_q(kld.size());
  std::vector<uint8_t> agree(kld.size());
  const int64_t Hb = base.config().hidden_size, H = model.config().hidden_size;
  const cudaStream_t s = model.context().stream();
  KlDivergenceAccumulator acc(V);
  for (const auto& w : windows) {
    const int64_t T = int64_t(w.size());
    LB_CHECK(T >= 2, "KL-divergence: a window needs at least 2 tokens, got {}", T);
    cache_b.truncate(0);
    cache_q.truncate(0);
    base.forward_cached(w, cache_b, rows_b);
    model.forward_cached(w, cache_q, rows_q);
    const int64_t n = T - 1;
    for (int64_t r0 = 0; r0 < n; r0 += kChunk) {
      const int64_t rows = std::min(kChunk, n - r0);
      base.lm_head(rows_b.get() + r0 * Hb, dl_b.get(), rows);
      model.lm_head(rows_q.get() + r0 * H, dl_q.get(), rows);
      // The reduction reads the base's logits on the model's stream.
      if (base.context().stream() != s) LB_CUDA_CHECK(cudaStreamSynchronize(base.context().stream()));
      cuda::upload(d_targets.get(), w.data() + r0 + 1, size_t(rows), s);
      cuda::kld_rows(dl_b.get(), dl_q.get(), d_targets.get(), d_kld.get(), d_agree.get(), d_nll_b.get(), d_nll_q.get(),
                     rows, V, s);
      cuda::download(kld.data(), d_kld.get(), size_t(rows), s);
      cuda::download(agree.data(), d_agree.get(), size_t(rows), s);
      cuda::download(nll_b.data(), d_nll_b.get(), size_t(rows), s);
      cuda::download(nll_q.data(), d_nll_q.get(), size_t(rows), s);
      acc.add_values(kld.data(), agree.data(), nll_b.data(), nll_q.data(), rows);
    }
    acc.end_window(T);
    if (acc.windows() == 1) acc.set_first_seconds(elapsed());
    if (progress) progress(acc.windows(), int64_t(windows.size()), elapsed(), acc.running_mean());
  }
  return acc.finish(elapsed());
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
  bool prefers_batches() const override { return true; }
  // Sequences longest first, cut into batches of one padded length and about kBatchTokens
  // positions; the right padding (the sequence's last token repeated) is never attended to by
  // the positions before it.
  void score_sequences(const std::vector<std::vector<int32_t>>& seqs, const std::vector<SeqRow>& rows,
                       double* loglik, bool* greedy) override {
    constexpr int64_t kBatchTokens = 16384;
    const int64_t H = model_.config().hidden_size, V = model_.config().vocab_size;
    std::vector<std::vector<size_t>> rows_of(seqs.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      const SeqRow& r = rows[i];
      LB_CHECK(r.seq >= 0 && size_t(r.seq) < seqs.size() && r.index >= 0 && r.index < int64_t(seqs[size_t(r.seq)].size()),
               "multiple choice: row {} (sequence {}, position {}) outside the {} sequences", i, r.seq, r.index,
               seqs.size());
      rows_of[size_t(r.seq)].push_back(i);
    }
    std::vector<size_t> order(seqs.size());
    std::iota(order.begin(), order.end(), size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return seqs[a].size() > seqs[b].size(); });
    for (size_t k = 0; k < order.size();) {
      const int64_t T = int64_t(seqs[order[k]].size());
      const int64_t B = std::min<int64_t>(std::max<int64_t>(1, kBatchTokens / T), int64_t(order.size() - k));
      std::vector<int32_t> ids(size_t(B * T)), flat, targets;
      std::vector<size_t> which;
      for (int64_t b = 0; b < B; ++b) {
        const std::vector<int32_t>& q = seqs[order[k + size_t(b)]];
        std::copy(q.begin(), q.end(), ids.begin() + b * T);
        std::fill(ids.begin() + b * T + int64_t(q.size()), ids.begin() + (b + 1) * T, q.back());
        for (size_t i : rows_of[order[k + size_t(b)]]) {
          flat.push_back(int32_t(b * T + rows[i].index));
          targets.push_back(rows[i].target);
          which.push_back(i);
        }
      }
      k += size_t(B);
      if (flat.empty()) continue;
      model_.forward_rows(ids.data(), B, T, flat, gathered_);
      // The LM head's fp32 logits in chunks of at most ~1 GiB.
      const int64_t n = int64_t(flat.size()), chunk = std::max<int64_t>(1, (int64_t(1) << 28) / V);
      std::vector<double> ll(static_cast<size_t>(n));
      std::unique_ptr<bool[]> g(new bool[static_cast<size_t>(n)]);
      for (int64_t c0 = 0; c0 < n; c0 += chunk)
        model_.score_rows(gathered_.get() + c0 * H, targets.data() + c0, std::min(chunk, n - c0), ll.data() + c0,
                          g.get() + c0);
      for (int64_t i = 0; i < n; ++i) {
        loglik[which[size_t(i)]] = ll[size_t(i)];
        greedy[which[size_t(i)]] = g[size_t(i)];
      }
    }
  }

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

namespace {

// The GPU time of each op, per window and as a share of the pass's seconds.
nlohmann::json profile_json(const cuda::OpProfile& p, const PerplexityResult& r) {
  nlohmann::json ops = nlohmann::json::array();
  double busy = 0;
  for (const auto& e : p.totals()) {
    ops.push_back({{"op", e.name}, {"calls", e.calls}, {"seconds", e.ms / 1e3}});
    busy += e.ms / 1e3;
  }
  // Past the first forward when there was more than one (perplexity_cuda resets the profile then).
  const bool rest = r.windows > r.first_windows;
  return {{"ops", ops}, {"gpu_seconds", busy},
          {"pass_seconds", rest ? r.seconds - r.first_seconds : r.seconds},
          {"windows", rest ? r.windows - r.first_windows : r.windows},
          {"scope", rest ? "after the first forward" : "the whole pass"}};
}

// Steps of several tokens (the prompt) run eagerly; one-token steps replay a CudaDecodeGraph where
// the model allows one (its logits are the eager step's bit for bit), else run eagerly too.
class CudaDecoder final : public Decoder {
 public:
  CudaDecoder(CudaModel& gpu, int64_t capacity)
      : gpu_(gpu), cache_(gpu.make_kv_cache(capacity)), logits_(static_cast<size_t>(gpu.config().vocab_size)),
        host_(static_cast<size_t>(gpu.config().vocab_size)) {
    const std::string why = CudaDecodeGraph::refusal(gpu);
    if (why.empty()) graph_ = std::make_unique<CudaDecodeGraph>(gpu, cache_);
    else path_ = "eager (" + why + ")";
  }
  std::span<const float> step(std::span<const int32_t> tokens) override {
    if (graph_ && tokens.size() == 1) {
      graph_->step(tokens[0]);
      cuda::download(host_.data(), graph_->logits(), host_.size(), gpu_.context().stream());
      return host_;
    }
    const int64_t H = gpu_.config().hidden_size;
    gpu_.forward_cached(tokens, cache_, normed_);
    gpu_.lm_head(normed_.get() + (int64_t(tokens.size()) - 1) * H, logits_.get(), 1);
    cuda::download(host_.data(), logits_.get(), host_.size(), gpu_.context().stream());
    return host_;
  }
  int32_t next_greedy(std::span<const int32_t> tokens) override {
    if (graph_ && tokens.size() == 1) return graph_->step(tokens[0]);
    return Decoder::next_greedy(tokens);
  }
  std::string decode_path() const override { return graph_ ? graph_->describe() : path_; }

 private:
  CudaModel& gpu_;
  GpuKvCache cache_;
  cuda::DeviceBuffer<cuda::bf16> normed_;
  cuda::DeviceBuffer<float> logits_;
  std::vector<float> host_;
  std::unique_ptr<CudaDecodeGraph> graph_;  // after cache_, which it refers to
  std::string path_;
};

class CudaPlacedModel final : public PlacedModel {
 public:
  CudaPlacedModel(const LlamaModel& m, cuda::Context& ctx, bool profile)
      : gpu_(m, ctx, std::nullopt, gpu_packed_linears(m, ctx.stream())) {
    if (profile) gpu_.enable_profile();
  }
  PerplexityResult perplexity(const std::vector<std::vector<int32_t>>& windows, int64_t batch,
                              const PerplexityProgress& progress) override {
    return perplexity_cuda(gpu_, windows, batch, progress);
  }
  KlDivergenceResult kl_divergence(PlacedModel& base, const std::vector<std::vector<int32_t>>& windows,
                                   const KlDivergenceProgress& progress) override {
    auto* b = dynamic_cast<CudaPlacedModel*>(&base);
    LB_CHECK(b != nullptr, "KL-divergence: the base model is placed on another device than the model (cuda)");
    return kl_divergence_cuda(b->gpu_, gpu_, windows, progress);
  }
  std::unique_ptr<McBackend> mc_backend(int64_t max_length) override {
    return make_cuda_mc_backend(gpu_, max_length);
  }
  Tensor logits(std::span<const int32_t> ids) override {
    const int64_t T = int64_t(ids.size()), V = gpu_.config().vocab_size;
    GpuKvCache cache = gpu_.make_kv_cache(T);
    cuda::DeviceBuffer<cuda::bf16> rows;
    gpu_.forward_cached(ids, cache, rows);
    cuda::DeviceBuffer<float> dl(static_cast<size_t>(T * V));
    gpu_.lm_head(rows.get(), dl.get(), T);
    Tensor out = Tensor::empty(DType::F32, {T, V});
    cuda::download(out.mutable_data_as<float>(), dl.get(), size_t(T * V), gpu_.context().stream());
    return out;
  }
  std::unique_ptr<Decoder> decoder(int64_t capacity) override {
    return std::make_unique<CudaDecoder>(gpu_, capacity);
  }
  nlohmann::json profile(const PerplexityResult& r) const override {
    return gpu_.profile() ? profile_json(*gpu_.profile(), r) : nlohmann::json(nullptr);
  }

 private:
  CudaModel gpu_;
};

class CudaEvalSession final : public EvalSession {
 public:
  explicit CudaEvalSession(const Device& d) : device_(d), ctx_(d.index) {}
  const Device& device() const override { return device_; }
  std::string name() const override { return ctx_.name(); }
  std::unique_ptr<PlacedModel> place(const LlamaModel& model, bool profile) override {
    return std::make_unique<CudaPlacedModel>(model, ctx_, profile);
  }
  void reset_peak_memory() override { cuda::reset_peak_device_bytes(); }
  std::optional<double> peak_memory_bytes() const override { return double(cuda::peak_device_bytes()); }

 private:
  Device device_;
  cuda::Context ctx_;
};

}  // namespace

std::unique_ptr<EvalSession> open_cuda_eval_session(const Device& device) {
  return std::make_unique<CudaEvalSession>(device);
}

}  // namespace lowbit
