#include "calib/block_driver.h"

#include "backend/ops.h"
#include "core/error.h"
#include "core/phase_profile.h"
#include "model/llama_block.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <new>
#include <optional>

namespace lowbit {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

BlockContext::BlockContext(const LlamaModel& model, int64_t layer, BlockWeights& weights, int64_t nseq,
                           int64_t seqlen, std::function<void(const LinearReport&)> report,
                           std::function<void(const std::string&)> note)
    : model_(model), layer_(layer), weights_(weights), nseq_(nseq), seqlen_(seqlen), report_(std::move(report)),
      note_(std::move(note)) {}

CpuBlockContext::CpuBlockContext(const LlamaModel& model, int64_t layer, BlockWeights& weights, float* inputs,
                                 int64_t nseq, int64_t seqlen, std::function<void(const LinearReport&)> report,
                                 std::function<void(const std::string&)> note)
    : BlockContext(model, layer, weights, nseq, seqlen, std::move(report), std::move(note)), inputs_(inputs) {}

void CpuBlockContext::run(const BlockWeights& w, int64_t w0, int64_t n, float* out, const BlockHooks* hooks) const {
  LB_ASSERT(w0 >= 0 && n >= 0 && w0 + n <= nseq_);
  const int64_t H = model_.config().hidden_size;
  for (int64_t s = 0; s < n; ++s) {
    float* h = out + s * seqlen_ * H;
    std::memcpy(h, inputs_ + (w0 + s) * seqlen_ * H, size_t(seqlen_ * H) * sizeof(float));
    model_.run_block(layer_, w, h, 1, seqlen_, 0, hooks);
  }
}

BlockContext::StatsMap CpuBlockContext::collect(std::span<const LinearKind> kinds, StatsRequest what) const {
  const PhaseScope phase("collect");
  LB_CHECK(has_calibration(), "layer {}: this method needs calibration data", layer_);
  LB_ASSERT(!kinds.empty());
  // One statistics object per input site; the first requested linear of a site accumulates it.
  std::array<std::shared_ptr<InputStats>, 4> site{};
  std::array<LinearKind, 4> owner{};
  std::array<std::vector<double>, 4> hessian;  // per site, while it accumulates
  for (LinearKind k : kinds) {
    const int s = int(input_site(k));
    if (!site[size_t(s)]) {
      site[size_t(s)] = std::make_shared<InputStats>();
      owner[size_t(s)] = k;
    }
  }
  BlockHooks hooks;
  hooks.stop_after = last_input_site(kinds);
  hooks.on_input = [&](int64_t, LinearKind k, float* x, int64_t rows, int64_t cols) {
    const int s = int(input_site(k));
    InputStats* st = site[size_t(s)].get();
    if (st == nullptr || owner[size_t(s)] != k) return;
    if (st->dim == 0) {
      st->dim = cols;
      if (what.hessian) hessian[size_t(s)].assign(size_t(cols * cols), 0.0);
      if (what.absmax) st->absmax.assign(size_t(cols), 0.0f);
      if (what.absmean) st->absmean.assign(size_t(cols), 0.0);
    }
    LB_ASSERT(st->dim == cols);
    if (what.hessian) ops::gram_accumulate(x, rows, cols, hessian[size_t(s)].data());
    if (what.absmax || what.absmean) {
      std::vector<double> sum(size_t(cols), 0.0);
      std::vector<float> mx(size_t(cols), 0.0f);
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        for (int64_t c = 0; c < cols; ++c) {
          const float a = std::fabs(xr[c]);
          mx[size_t(c)] = std::max(mx[size_t(c)], a);
          sum[size_t(c)] += a;
        }
      }
      for (int64_t c = 0; c < cols; ++c) {
        if (what.absmax) st->absmax[size_t(c)] = std::max(st->absmax[size_t(c)], mx[size_t(c)]);
        if (what.absmean) st->absmean[size_t(c)] += sum[size_t(c)];
      }
    }
    st->tokens += rows;
    st->sequences += 1;
  };
  const int64_t H = model_.config().hidden_size;
  std::vector<float> h(size_t(seqlen_ * H));
  for (int64_t s = 0; s < nseq_; ++s) {
    std::memcpy(h.data(), inputs_ + s * seqlen_ * H, h.size() * sizeof(float));
    model_.run_block(layer_, weights_, h.data(), 1, seqlen_, 0, &hooks);
  }
  StatsMap out;
  for (size_t i = 0; i < site.size(); ++i) {
    InputStats* st = site[i].get();
    if (!st) continue;
    const double scale = 2.0 / double(st->sequences);
    for (double& v : hessian[i]) v *= scale;
    if (what.hessian) st->set_hessian(std::move(hessian[i]));
    for (double& v : st->absmean) v /= double(st->tokens);
  }
  for (LinearKind k : kinds) out[k] = site[size_t(input_site(k))];
  return out;
}

BlockContext::Inputs CpuBlockContext::capture_inputs(std::span<const LinearKind> kinds) const {
  LB_CHECK(has_calibration(), "layer {}: this method needs calibration data", layer_);
  LB_ASSERT(!kinds.empty());
  std::array<std::shared_ptr<std::vector<float>>, 4> site{};
  std::array<LinearKind, 4> owner{};
  for (LinearKind k : kinds) {
    const int s = int(input_site(k));
    if (!site[size_t(s)]) {
      site[size_t(s)] = std::make_shared<std::vector<float>>();
      owner[size_t(s)] = k;
    }
  }
  int64_t window = 0;
  BlockHooks hooks;
  hooks.stop_after = last_input_site(kinds);
  hooks.on_input = [&](int64_t, LinearKind k, float* x, int64_t rows, int64_t cols) {
    const int s = int(input_site(k));
    std::vector<float>* buf = site[size_t(s)].get();
    if (buf == nullptr || owner[size_t(s)] != k) return;
    if (buf->empty()) {
      try {
        buf->resize(size_t(nseq_ * rows * cols));
      } catch (const std::bad_alloc&) {
        fail("layer {}: capturing the inputs of {} needs {:.1f} GiB", layer_, linear_name(k),
             double(nseq_ * rows * cols) * 4.0 / double(1 << 30));
      }
    }
    std::memcpy(buf->data() + window * rows * cols, x, size_t(rows * cols) * sizeof(float));
  };
  const int64_t H = model_.config().hidden_size;
  std::vector<float> h(size_t(seqlen_ * H));
  for (window = 0; window < nseq_; ++window) {
    std::memcpy(h.data(), inputs_ + window * seqlen_ * H, h.size() * sizeof(float));
    model_.run_block(layer_, weights_, h.data(), 1, seqlen_, 0, &hooks);
  }
  Inputs out;
  for (LinearKind k : kinds) out[k] = site[size_t(input_site(k))];
  return out;
}

BlockContext::KlErrors CpuBlockContext::kl_errors(std::span<const KlSearchJob> jobs) const {
  LB_CHECK(has_calibration(), "layer {}: this method needs calibration data", layer_);
  KlErrors out(jobs.size());
  BlockHooks hooks;
  hooks.on_input = [&](int64_t, LinearKind k, float* x, int64_t rows, int64_t cols) {
    for (size_t j = 0; j < jobs.size(); ++j) {
      if (jobs[j].linear != k) continue;
      LB_ASSERT(jobs[j].search->cols == cols);
      out[j].push_back(kl_search_errors(*jobs[j].search, x, rows));
    }
  };
  std::vector<float> scratch(size_t(seqlen_ * model_.config().hidden_size));
  for (int64_t s = 0; s < nseq_; ++s) run(weights_, s, 1, scratch.data(), &hooks);
  return out;
}

namespace {

// The CPU probe: the part's output with w0 kept, recomputed in full for every trial.
class CpuPartProbe final : public BlockContext::PartProbe {
 public:
  CpuPartProbe(const LlamaModel& model, int64_t layer, int64_t nseq, int64_t seqlen, BlockContext::Part part,
               LinearKind linear, const BlockWeights& w0, const std::vector<float>& x)
      : model_(model), layer_(layer), nseq_(nseq), seqlen_(seqlen), part_(part), linear_(linear), x_(x) {
    const int64_t N = nseq * seqlen;
    in_cols_ = int64_t(x.size()) / N;
    LB_CHECK(in_cols_ * N == int64_t(x.size()), "layer {}: probe inputs of {} values are not {} rows", layer,
             x.size(), N);
    out_cols_ = part == BlockContext::Part::Linear ? w0[linear].dim(0) : model.config().hidden_size;
    org_.resize(size_t(N * out_cols_));
    cur_.resize(org_.size());
    forward(w0, org_.data());
  }
  double mse(const BlockWeights& w) override {
    forward(w, cur_.data());
    double loss = 0;
    for (size_t j = 0; j < org_.size(); ++j) {
      const double d = double(org_[j]) - double(cur_[j]);
      loss += d * d;
    }
    return loss / double(org_.size());
  }

 private:
  void forward(const BlockWeights& w, float* out) const {
    const int64_t T = seqlen_, H = model_.config().hidden_size;
    switch (part_) {
      case BlockContext::Part::Attention:
        for (int64_t s = 0; s < nseq_; ++s)
          model_.attention_part(layer_, w, x_.data() + s * T * in_cols_, out + s * T * H, 1, T, 0, nullptr);
        break;
      case BlockContext::Part::Mlp:
        for (int64_t s = 0; s < nseq_; ++s)
          model_.mlp_part(layer_, w, x_.data() + s * T * in_cols_, out + s * T * H, T, nullptr);
        break;
      case BlockContext::Part::Linear:
        ops::linear(x_.data(), w[linear_].data_as<float>(), out, nseq_ * T, in_cols_, w[linear_].dim(0));
        break;
    }
  }
  const LlamaModel& model_;
  int64_t layer_, nseq_, seqlen_;
  BlockContext::Part part_;
  LinearKind linear_;
  const std::vector<float>& x_;
  int64_t in_cols_ = 0, out_cols_ = 0;
  std::vector<float> org_, cur_;
};

}  // namespace

std::unique_ptr<BlockContext::PartProbe> CpuBlockContext::probe(Part part, LinearKind linear, const BlockWeights& w0,
                                                                 std::span<const LinearKind>,
                                                                 const std::vector<float>& x) const {
  LB_CHECK(has_calibration(), "layer {}: this method needs calibration data", layer_);
  return std::make_unique<CpuPartProbe>(model_, layer_, nseq_, seqlen_, part, linear, w0, x);
}

int64_t calibration_seqlen(const LlamaConfig& c, const std::vector<std::vector<int32_t>>& windows) {
  LB_CHECK(!windows.empty(), "no calibration windows");
  const int64_t T = int64_t(windows[0].size());
  for (const auto& w : windows)
    LB_CHECK(int64_t(w.size()) == T, "calibration windows differ in length ({} and {})", T, w.size());
  LB_CHECK(T <= c.max_position_embeddings, "calibration sequence length {} exceeds the model's "
           "max_position_embeddings ({})", T, c.max_position_embeddings);
  return T;
}

void run_block_by_block(LlamaModel& model, const DriverPlan& plan, const DriverCallbacks& cb) {
  const LlamaConfig& c = model.config();
  const int64_t H = c.hidden_size, L = c.num_hidden_layers;
  model.set_block_cache(false);
  int64_t nseq = 0, T = 0;
  std::vector<float> hidden;
  if (plan.windows != nullptr && !plan.windows->empty()) {
    nseq = int64_t(plan.windows->size());
    T = calibration_seqlen(c, *plan.windows);
    const double bytes = double(nseq) * double(T) * double(H) * 4.0;
    try {
      hidden.resize(size_t(nseq * T * H));
    } catch (const std::bad_alloc&) {
      fail("calibration activations need {:.1f} GiB ({} windows x {} tokens x {} x fp32), more than is available",
           bytes / double(1 << 30), nseq, T, H);
    }
    for (int64_t s = 0; s < nseq; ++s) model.embed((*plan.windows)[size_t(s)], hidden.data() + s * T * H);
  }
  const auto scratch = std::make_shared<Tensor>();  // finish_linear's, shared by the blocks
  BlockWeights spare;  // the last block's host weights, their memory reused by the next
  for (int64_t i = 0; i < L; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (cb.on_block_start) cb.on_block_start(i, L);
    std::optional<PhaseScope> phase(std::in_place, "block weights");
    BlockWeights w = model.writable_block_weights(i, std::move(spare));
    phase.emplace("quantize_block");
    CpuBlockContext ctx(
        model, i, w, hidden.data(), nseq, T,
        [&](const LinearReport& r) { if (cb.on_linear) cb.on_linear(i, r); },
        [&](const std::string& s) { if (cb.on_note) cb.on_note(i, s); });
    ctx.share_dequant_scratch(scratch);
    plan.quantize_block(ctx);
    phase.reset();
    if (nseq > 0) {
      const PhaseScope propagate("propagate");
      const BlockHooks* hooks = plan.propagation_hooks ? plan.propagation_hooks(i) : nullptr;
      // Methods that calibrate every block on the 16-bit model's activations propagate the block
      // as the checkpoint has it: their rewritten copy is released first and the block converted
      // again (the same fp32 values a copy taken before the method would hold), so the two never
      // live side by side.
      std::shared_ptr<const BlockWeights> source;
      if (!plan.propagate_quantized) {
        w = BlockWeights{};
        source = model.block_weights(i);
      }
      const BlockWeights& prop = source ? *source : w;
      for (int64_t s = 0; s < nseq; ++s) model.run_block(i, prop, hidden.data() + s * T * H, 1, T, 0, hooks);
    }
    spare = std::move(w);
    if (cb.on_block_done) cb.on_block_done(i, L, seconds_since(t0));
  }
}

BlockContext::StatsMap layer_input_stats(LlamaModel& model, const std::vector<std::vector<int32_t>>& windows,
                                         int64_t layer, StatsRequest what, BlockWeights* weights_out) {
  const LlamaConfig& c = model.config();
  LB_CHECK(layer >= 0 && layer < c.num_hidden_layers, "layer {} does not exist (the model has {})", layer,
           c.num_hidden_layers);
  LB_CHECK(!windows.empty(), "layer statistics need calibration windows");
  const int64_t H = c.hidden_size, nseq = int64_t(windows.size()), T = int64_t(windows[0].size());
  std::vector<float> hidden(size_t(nseq * T * H));
  for (int64_t s = 0; s < nseq; ++s) {
    LB_CHECK(int64_t(windows[size_t(s)].size()) == T, "calibration windows differ in length");
    model.embed(windows[size_t(s)], hidden.data() + s * T * H);
  }
  for (int64_t i = 0; i < layer; ++i)
    for (int64_t s = 0; s < nseq; ++s) model.run_block(i, hidden.data() + s * T * H, 1, T);
  BlockWeights w = model.writable_block_weights(layer);
  CpuBlockContext ctx(model, layer, w, hidden.data(), nseq, T, nullptr, nullptr);
  auto stats = ctx.collect(kAllLinears, what);
  if (weights_out) *weights_out = std::move(w);
  return stats;
}

namespace {

// ||W - Q||_F / ||W||_F in fixed chunks summed in order (the same value whatever the number of
// threads); with w_store (W itself), each chunk of W is overwritten by Q's once it is read.
double weight_error(float* w_store, const float* w, const float* q, int64_t n) {
  constexpr int64_t kChunk = int64_t(1) << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> num(size_t(chunks), 0.0), den(size_t(chunks), 0.0);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kChunk, i1 = std::min(n, (c + 1) * kChunk);
    double a = 0, b = 0;
    for (int64_t i = i0; i < i1; ++i) {
      const double d = double(w[i]) - double(q[i]);
      a += d * d;
      b += double(w[i]) * double(w[i]);
    }
    if (w_store != nullptr) std::memcpy(w_store + i0, q + i0, size_t(i1 - i0) * sizeof(float));
    num[size_t(c)] = a;
    den[size_t(c)] = b;
  }
  double sn = 0, sd = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    sn += num[size_t(c)];
    sd += den[size_t(c)];
  }
  return sd > 0 ? std::sqrt(sn / sd) : 0.0;
}

}  // namespace

double relative_weight_error(const float* w, const float* q, int64_t n) { return weight_error(nullptr, w, q, n); }

double relative_weight_error_and_store(float* w, const float* q, int64_t n) { return weight_error(w, w, q, n); }

float* BlockContext::dequant_scratch(int64_t n) {
  if (scratch_->data() == nullptr || scratch_->numel() < n) *scratch_ = Tensor::empty(DType::F32, {n});
  return scratch_->mutable_data_as<float>();
}

OutputErrorSample output_error_sample(const float* w, const float* q, int64_t rows, int64_t cols) {
  // At most 512 evenly spaced rows: the ratio is a per-row average, and a sample of rows
  // estimates it well at a fraction of a full rows x cols x cols product.
  const int64_t step = std::max<int64_t>(1, rows / 512);
  OutputErrorSample s;
  s.count = (rows + step - 1) / step;
  s.w.resize(size_t(s.count * cols));
  s.dw.resize(size_t(s.count * cols));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < s.count; ++i)
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t r = i * step;
      s.w[size_t(i * cols + c)] = w[r * cols + c];
      s.dw[size_t(i * cols + c)] = w[r * cols + c] - q[r * cols + c];
    }
  return s;
}

double BlockContext::output_error(const float* w, const float* q, int64_t rows, int64_t cols,
                                  const InputStats& stats) const {
  return relative_output_error(w, q, rows, cols, stats.hessian());
}

const std::vector<double>& InputStats::hessian() const {
  std::lock_guard<std::mutex> lock(hessian_mu_);
  if (fetch_) {
    std::vector<double> h = fetch_();
    LB_CHECK(int64_t(h.size()) == dim * dim, "input statistics: a Hessian of {} values for {} features", h.size(),
             dim);
    hessian_ = std::move(h);
    fetch_ = nullptr;
  }
  return hessian_;
}

bool InputStats::has_hessian() const {
  std::lock_guard<std::mutex> lock(hessian_mu_);
  return fetch_ != nullptr || !hessian_.empty();
}

void InputStats::set_hessian(std::vector<double> h) {
  std::lock_guard<std::mutex> lock(hessian_mu_);
  hessian_ = std::move(h);
  fetch_ = nullptr;
}

void InputStats::set_hessian_source(std::function<std::vector<double>()> fetch) {
  std::lock_guard<std::mutex> lock(hessian_mu_);
  hessian_.clear();
  fetch_ = std::move(fetch);
}

double relative_output_error(const float* w, const float* q, int64_t rows, int64_t cols,
                             const std::vector<double>& h) {
  const OutputErrorSample smp = output_error_sample(w, q, rows, cols);
  const int64_t n = smp.count;
  std::vector<float> hf(h.size());
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < int64_t(h.size()); ++j) hf[size_t(j)] = float(h[size_t(j)]);
  std::vector<float> dh(size_t(n * cols)), wh(size_t(n * cols));
  ops::linear(smp.dw.data(), hf.data(), dh.data(), n, cols, cols);
  ops::linear(smp.w.data(), hf.data(), wh.data(), n, cols, cols);
  double num = 0, den = 0;
  for (int64_t i = 0; i < n * cols; ++i) {
    num += double(dh[size_t(i)]) * double(smp.dw[size_t(i)]);
    den += double(wh[size_t(i)]) * double(smp.w[size_t(i)]);
  }
  return den > 0 ? num / den : 0.0;
}

}  // namespace lowbit
