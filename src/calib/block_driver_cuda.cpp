#include "calib/block_driver_cuda.h"

#include "backend/cuda/ops.cuh"
#include "core/error.h"
#include "core/hash.h"
#include "core/phase_profile.h"
#include "model/llama_block.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <map>
#include <new>
#include <optional>

namespace lowbit {

using cuda::bf16;
using cuda::DeviceBuffer;

namespace {

// Rows per forward: about 16k, in whole windows.
int64_t windows_per_chunk(int64_t seqlen) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(seqlen, 1)); }


// x (bf16 [rows, cols], row stride ld, device) as fp32 into host dst [rows, cols], through the
// device staging buffers.
void download_rows(const bf16* x, int64_t rows, int64_t cols, int64_t ld, float* dst, DeviceBuffer<bf16>& packed,
                   DeviceBuffer<float>& wide, cudaStream_t s) {
  const bf16* src = x;
  if (ld != cols) {
    packed.resize(size_t(rows * cols));
    LB_CUDA_CHECK(cudaMemcpy2DAsync(packed.get(), size_t(cols) * sizeof(bf16), x, size_t(ld) * sizeof(bf16),
                                    size_t(cols) * sizeof(bf16), size_t(rows), cudaMemcpyDeviceToDevice, s));
    src = packed.get();
  }
  wide.resize(size_t(rows * cols));
  cuda::bf16_to_f32(src, wide.get(), rows * cols, s);
  cuda::download(dst, wide.get(), size_t(rows * cols), s);
}

// Host fp32 rows as bf16 into dst (device), through an fp32 staging buffer, `rows_per_copy` at a
// time.
void upload_rows_bf16(const float* src, int64_t rows, int64_t cols, bf16* dst, DeviceBuffer<float>& wide,
                      int64_t rows_per_copy, cudaStream_t s) {
  for (int64_t r0 = 0; r0 < rows; r0 += rows_per_copy) {
    const int64_t n = std::min(rows_per_copy, rows - r0);
    wide.resize(size_t(n * cols));
    cuda::upload(wide.get(), src + r0 * cols, size_t(n * cols), s);
    cuda::f32_to_bf16(wide.get(), dst + r0 * cols, n * cols, s);
  }
}

}  // namespace

const GpuBlockWeights& GpuBlockMirror::sync(const CudaModel& gpu, const BlockWeights& host,
                                            std::span<const LinearKind> only) {
  const auto print = [](const Tensor& t) {
    LB_CHECK(t.data() != nullptr && t.is_contiguous(), "block weights: a tensor without contiguous host values");
    return fingerprint64(t.data(), size_t(t.nbytes())) ^ (uint64_t(t.dtype()) << 56);
  };
  if (!shaped_) {
    gpu.upload_weights(host, w_);
    shaped_ = true;
    print_[0] = print(host.input_norm);
    print_[1] = print(host.post_norm);
    for (LinearKind k : kAllLinears) print_[2 + size_t(k)] = print(host[k]);
    return w_;
  }
  const cudaStream_t s = gpu.context().stream();
  if (only.empty()) {
    const std::array<std::pair<const Tensor*, cuda::DeviceBuffer<cuda::bf16>*>, 2> norms{
        {{&host.input_norm, &w_.input_norm}, {&host.post_norm, &w_.post_norm}}};
    for (size_t i = 0; i < norms.size(); ++i) {
      const uint64_t p = print(*norms[i].first);
      if (print_[i] == p) continue;
      print_[i].reset();  // unknown until the upload is done
      upload_as_bf16(*norms[i].first, *norms[i].second, s);
      print_[i] = p;
    }
    only = kAllLinears;
  }
  std::vector<LinearKind> changed;
  std::vector<uint64_t> prints;
  for (LinearKind k : only) {
    const uint64_t p = print(host[k]);
    if (print_[2 + size_t(k)] == p) continue;
    print_[2 + size_t(k)].reset();
    changed.push_back(k);
    prints.push_back(p);
  }
  if (!changed.empty()) gpu.upload_weights(host, w_, changed);
  for (size_t i = 0; i < changed.size(); ++i) print_[2 + size_t(changed[i])] = prints[i];
  return w_;
}

CudaBlockContext::CudaBlockContext(CudaModel& gpu, int64_t layer, BlockWeights& weights, float* hidden, int64_t nseq,
                                   int64_t seqlen, std::function<void(const LinearReport&)> report,
                                   std::function<void(const std::string&)> note, GpuBlockMirror* mirror)
    : BlockContext(gpu.host(), layer, weights, nseq, seqlen, std::move(report), std::move(note)), gpu_(gpu),
      hidden_(hidden), chunk_(windows_per_chunk(seqlen)),
      own_mirror_(mirror ? nullptr : std::make_unique<GpuBlockMirror>()), mirror_(mirror ? mirror : own_mirror_.get()) {}

const GpuBlockWeights& CudaBlockContext::device_weights(std::span<const LinearKind> only) const {
  return mirror_->sync(gpu_, weights_, only);
}

void CudaBlockContext::forward(
    const GpuBlockWeights& gw, int64_t w0, int64_t n,
    const std::function<void(int64_t, LinearKind, const bf16*, int64_t, int64_t, int64_t)>& on_input,
    float* out_host, std::optional<InputSite> stop_after) const {
  LB_ASSERT(w0 >= 0 && n >= 0 && w0 + n <= nseq_);
  LB_ASSERT(!stop_after || out_host == nullptr);
  const int64_t T = seqlen_, H = model_.config().hidden_size;
  const cudaStream_t s = gpu_.context().stream();
  scratch_.resize(size_t(std::min(chunk_, std::max<int64_t>(n, 1)) * T * H));
  for (int64_t c0 = w0; c0 < w0 + n; c0 += chunk_) {
    const int64_t nb = std::min(chunk_, w0 + n - c0);
    LB_CUDA_CHECK(cudaMemcpyAsync(scratch_.get(), hidden_ + c0 * T * H, size_t(nb * T * H) * sizeof(float),
                                  cudaMemcpyDeviceToDevice, s));
    const CudaModel::SiteInput site = [&](LinearKind first, const bf16* x, int64_t rows, int64_t cols, int64_t ld) {
      on_input(c0, first, x, rows, cols, ld);
    };
    gpu_.run_block(layer_, gw, scratch_.get(), nb, T, nullptr, on_input ? &site : nullptr, stop_after);
    if (out_host != nullptr) cuda::download(out_host + (c0 - w0) * T * H, scratch_.get(), size_t(nb * T * H), s);
  }
  gpu_.context().synchronize();
}

BlockContext::StatsMap CudaBlockContext::collect(std::span<const LinearKind> kinds, StatsRequest what) const {
  LB_CHECK(has_calibration(), "layer {}: this method needs calibration data", layer_);
  LB_ASSERT(!kinds.empty());
  const LlamaConfig& c = model_.config();
  const cudaStream_t s = gpu_.context().stream();
  struct Site {
    bool wanted = false;
    int64_t dim = 0;
    DeviceBuffer<float> h, absmax, abssum;
  };
  std::array<Site, 4> sites;
  const InputSite last = last_input_site(kinds);
  for (LinearKind k : kinds) {
    Site& st = sites[size_t(input_site(k))];
    if (st.wanted) continue;
    st.wanted = true;
    st.dim = input_site_features(c, input_site(k));
    if (what.hessian) st.h.resize(size_t(st.dim * st.dim));
    st.absmax.resize(size_t(st.dim));
    st.abssum.resize(size_t(st.dim));
    for (auto* b : {&st.h, &st.absmax, &st.abssum})
      if (b->size() > 0) LB_CUDA_CHECK(cudaMemsetAsync(b->get(), 0, b->bytes(), s));
  }
  const PhaseScope phase("collect");
  std::optional<PhaseScope> sub(std::in_place, "collect/upload weights");
  const GpuBlockWeights& gw = device_weights();
  sub.emplace("collect/forward");
  forward(gw, 0, nseq_, [&](int64_t, LinearKind first, const bf16* x, int64_t rows, int64_t cols, int64_t ld) {
    Site& st = sites[size_t(input_site(first))];
    if (!st.wanted) return;
    LB_ASSERT(st.dim == cols);
    if (what.hessian) cuda::gram_accumulate(gpu_.context(), x, st.h.get(), rows, cols, ld);
    if (what.absmax || what.absmean) cuda::column_abs_stats(x, rows, cols, ld, st.absmax.get(), st.abssum.get(), s);
  }, nullptr, last);
  sub.emplace("collect/download");

  const int64_t tokens = nseq_ * seqlen_;
  std::array<std::shared_ptr<const InputStats>, 4> done{};
  std::vector<HeldHessian> held;
  for (size_t i = 0; i < sites.size(); ++i) {
    const Site& st = sites[i];
    if (!st.wanted) continue;
    auto r = std::make_shared<InputStats>();
    r->dim = st.dim;
    r->tokens = tokens;
    r->sequences = nseq_;
    if (what.hessian) {
      // The sums stay on the device (device_hessian); the host copy is made when a method asks.
      auto sum = std::make_shared<const DeviceBuffer<float>>(std::move(sites[i].h));
      const double scale = 2.0 / double(nseq_);
      r->set_hessian_source([sum, scale, n = st.dim * st.dim, device = gpu_.context().device()] {
        const PhaseScope fetch("hessian to host");
        std::vector<float> h(static_cast<size_t>(n));
        // Synchronous, on the sums' device whichever the calling thread has selected: collect()
        // finished every write to the sums before it returned.
        int current = 0;
        LB_CUDA_CHECK(cudaGetDevice(&current));
        LB_CUDA_CHECK(cudaSetDevice(device));
        const cudaError_t copied = cudaMemcpy(h.data(), sum->get(), size_t(n) * sizeof(float), cudaMemcpyDeviceToHost);
        LB_CUDA_CHECK(cudaSetDevice(current));
        LB_CUDA_CHECK(copied);
        std::vector<double> out(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < n; ++j) out[size_t(j)] = double(h[size_t(j)]) * scale;
        return out;
      });
      held.push_back({r, sum, scale});
    }
    if (what.absmax) {
      r->absmax.resize(size_t(st.dim));
      cuda::download(r->absmax.data(), st.absmax.get(), r->absmax.size(), s);
    }
    if (what.absmean) {
      std::vector<float> sum(size_t(st.dim));
      cuda::download(sum.data(), st.abssum.get(), sum.size(), s);
      r->absmean.resize(sum.size());
      for (size_t j = 0; j < sum.size(); ++j) r->absmean[j] = double(sum[j]) / double(tokens);
    }
    done[i] = r;
  }
  std::erase_if(hessians_, [](const HeldHessian& d) { return d.stats.expired(); });
  for (HeldHessian& d : held) hessians_.push_back(std::move(d));
  gpu_.context().synchronize();
  StatsMap out;
  for (LinearKind k : kinds) out[k] = done[size_t(input_site(k))];
  return out;
}

std::optional<CudaBlockContext::DeviceHessian> CudaBlockContext::device_hessian(const InputStats& stats) const {
  for (const HeldHessian& d : hessians_) {
    const std::shared_ptr<const InputStats> st = d.stats.lock();
    if (st.get() == &stats) return DeviceHessian{d.sum->get(), d.scale};
  }
  return std::nullopt;
}

double CudaBlockContext::output_error(const float* w, const float* q, int64_t rows, int64_t cols,
                                      const InputStats& stats) const {
  const PhaseScope phase("finish_linear/output error");
  const std::optional<DeviceHessian> held = device_hessian(stats);
  if (!held || stats.dim != cols) return BlockContext::output_error(w, q, rows, cols, stats);
  const float* hd = held->sum;
  // relative_output_error's rows and arithmetic: fp32 products dW H and W H, fp64 sums; H's
  // scale cancels in the ratio, so the unscaled sums serve.
  const OutputErrorSample smp = output_error_sample(w, q, rows, cols);
  const int64_t n = smp.count;
  const cudaStream_t s = gpu_.context().stream();
  DeviceBuffer<float> dd(smp.dw.size()), wd(smp.w.size()), dh(smp.dw.size()), wh(smp.w.size());
  cuda::upload(dd.get(), smp.dw.data(), smp.dw.size(), s);
  cuda::upload(wd.get(), smp.w.data(), smp.w.size(), s);
  cuda::linear_f32(gpu_.context(), dd.get(), cols, hd, cols, dh.get(), cols, n, cols, cols, false);
  cuda::linear_f32(gpu_.context(), wd.get(), cols, hd, cols, wh.get(), cols, n, cols, cols, false);
  DeviceBuffer<double> partial(size_t(2 * cuda::kSquaredDiffBlocks));
  cuda::dot_partials(dh.get(), dd.get(), n * cols, partial.get(), s);
  cuda::dot_partials(wh.get(), wd.get(), n * cols, partial.get() + cuda::kSquaredDiffBlocks, s);
  std::vector<double> p(partial.size());
  cuda::download(p.data(), partial.get(), p.size(), s);
  double num = 0, den = 0;
  for (int i = 0; i < cuda::kSquaredDiffBlocks; ++i) {
    num += p[size_t(i)];
    den += p[size_t(cuda::kSquaredDiffBlocks + i)];
  }
  return den > 0 ? num / den : 0.0;
}

BlockContext::Inputs CudaBlockContext::capture_inputs(std::span<const LinearKind> kinds) const {
  LB_CHECK(has_calibration(), "layer {}: this method needs calibration data", layer_);
  LB_ASSERT(!kinds.empty());
  const LlamaConfig& c = model_.config();
  std::array<std::shared_ptr<std::vector<float>>, 4> site{};
  const InputSite last = last_input_site(kinds);
  for (LinearKind k : kinds) {
    auto& buf = site[size_t(input_site(k))];
    if (buf) continue;
    const int64_t dim = input_site_features(c, input_site(k));
    try {
      buf = std::make_shared<std::vector<float>>(size_t(nseq_ * seqlen_ * dim));
    } catch (const std::bad_alloc&) {
      fail("layer {}: capturing the inputs of {} needs {:.1f} GiB of host memory", layer_, linear_name(k),
           double(nseq_ * seqlen_ * dim) * 4.0 / double(1 << 30));
    }
  }
  DeviceBuffer<bf16> packed;
  DeviceBuffer<float> wide;
  const cudaStream_t s = gpu_.context().stream();
  forward(device_weights(), 0, nseq_, [&](int64_t w0, LinearKind first, const bf16* x, int64_t rows, int64_t cols, int64_t ld) {
    std::vector<float>* buf = site[size_t(input_site(first))].get();
    if (buf == nullptr) return;
    download_rows(x, rows, cols, ld, buf->data() + w0 * seqlen_ * cols, packed, wide, s);
  }, nullptr, last);
  Inputs out;
  for (LinearKind k : kinds) out[k] = site[size_t(input_site(k))];
  return out;
}

void CudaBlockContext::run(const BlockWeights& w, int64_t w0, int64_t n, float* out, const BlockHooks* hooks) const {
  LB_CHECK(!hooks || (!hooks->on_output && !hooks->stop_after),
           "layer {}: the GPU block context runs input hooks only (no output hooks, no stop after an input)", layer_);
  GpuBlockWeights gw;
  gpu_.upload_weights(w, gw);
  if (!hooks || !hooks->on_input) {
    forward(gw, w0, n, nullptr, out);
    return;
  }
  // One window at a time, each linear of a site seeing its own host copy, as the CPU hooks do.
  DeviceBuffer<bf16> packed;
  DeviceBuffer<float> wide;
  std::vector<float> x_host;
  const cudaStream_t s = gpu_.context().stream();
  for (int64_t win = w0; win < w0 + n; ++win) {
    forward(gw, win, 1, [&](int64_t, LinearKind first, const bf16* x, int64_t rows, int64_t cols, int64_t ld) {
      x_host.resize(size_t(rows * cols));
      download_rows(x, rows, cols, ld, x_host.data(), packed, wide, s);
      std::vector<float> copy;
      for (LinearKind k : site_linears(input_site(first))) {
        copy = x_host;
        hooks->on_input(layer_, k, copy.data(), rows, cols);
      }
    }, out + (win - w0) * seqlen_ * model_.config().hidden_size);
  }
}

BlockContext::KlErrors CudaBlockContext::kl_errors(std::span<const KlSearchJob> jobs) const {
  LB_CHECK(has_calibration(), "layer {}: this method needs calibration data", layer_);
  const cudaStream_t s = gpu_.context().stream();
  const int64_t T = seqlen_;
  // Each search's matrices on the device; a delta shared by several steps is uploaded once.
  struct Job {
    const KlSearch* search = nullptr;
    int64_t rows = 0, cols = 0, R = 0;
    DeviceBuffer<float> w, start;
    std::map<const float*, DeviceBuffer<float>> deltas;
    DeviceBuffer<double> errors;  // [nseq, R]
  };
  std::vector<Job> dev(jobs.size());
  std::vector<LinearKind> searched;  // the linears of the jobs with candidates
  int64_t max_rows = 0, max_cols = 0;
  const auto upload_matrix = [&](DeviceBuffer<float>& dst, const float* src, int64_t n) {
    dst.resize(size_t(n));
    cuda::upload(dst.get(), src, size_t(n), s);
  };
  for (size_t j = 0; j < jobs.size(); ++j) {
    const KlSearch& ks = *jobs[j].search;
    Job& d = dev[j];
    d.search = &ks;
    d.rows = ks.rows;
    d.cols = ks.cols;
    d.R = int64_t(ks.candidates.size());
    LB_ASSERT(ks.cols == weights_[jobs[j].linear].dim(1) && ks.rows == weights_[jobs[j].linear].dim(0));
    if (d.R == 0) continue;
    upload_matrix(d.w, ks.w, ks.rows * ks.cols);
    upload_matrix(d.start, ks.start, ks.rows * ks.cols);
    for (const auto& cand : ks.candidates)
      for (const KlSearch::Step& st : cand) {
        LB_ASSERT(st.c0 >= 0 && st.c0 < st.c1 && st.c1 <= ks.cols && st.delta != nullptr);
        if (!d.deltas.contains(st.delta)) upload_matrix(d.deltas[st.delta], st.delta, ks.rows * ks.cols);
      }
    d.errors.resize(size_t(nseq_ * d.R));
    searched.push_back(jobs[j].linear);
    max_rows = std::max(max_rows, ks.rows);
    max_cols = std::max(max_cols, ks.cols);
  }
  KlErrors out(jobs.size(), std::vector<std::vector<double>>(size_t(nseq_)));
  if (searched.empty()) return out;
  const InputSite last = last_input_site(searched);

  // The products run in fp32 on the inputs widened from bf16, not bf16 x bf16: the search ranks
  // candidates by how far their outputs move from Y, and bf16 operands would round W and the
  // grid values by up to 2^-8 of their size, a perturbation of Z - Y that the host search (fp32
  // weights) does not have. Widening X is exact, so on the same inputs the two agree up to the
  // order of fp32 sums. (Estimated from the fp32 peak, not measured: at 8B shapes about 10 ms of
  // products per window and linear.)
  DeviceBuffer<bf16> packed;
  DeviceBuffer<float> x(size_t(T * max_cols)), y(size_t(T * max_rows)), z(size_t(T * max_rows));
  DeviceBuffer<double> logq(size_t(T * max_rows)), row_kl{size_t(T)};
  const cuda::Context& cc = gpu_.context();
  forward(device_weights(), 0, nseq_, [&](int64_t c0, LinearKind first, const bf16* xs, int64_t rows, int64_t cols, int64_t ld) {
    for (int64_t b = 0; b < rows / T; ++b) {
      bool widened = false;
      for (size_t j = 0; j < jobs.size(); ++j) {
        Job& d = dev[j];
        if (d.R == 0 || input_site(jobs[j].linear) != input_site(first)) continue;
        LB_ASSERT(d.cols == cols);
        if (!widened) {
          // The window's bf16 rows as fp32 [T, cols] (exact).
          const bf16* src = xs + b * T * ld;
          if (ld != cols) {
            packed.resize(size_t(T * cols));
            LB_CUDA_CHECK(cudaMemcpy2DAsync(packed.get(), size_t(cols) * sizeof(bf16), src, size_t(ld) * sizeof(bf16),
                                            size_t(cols) * sizeof(bf16), size_t(T), cudaMemcpyDeviceToDevice, s));
            src = packed.get();
          }
          cuda::bf16_to_f32(src, x.get(), T * cols, s);
          widened = true;
        }
        const int64_t O = d.rows, C = d.cols;
        cuda::linear_f32(cc, x.get(), C, d.w.get(), C, y.get(), O, T, O, C, false);
        cuda::clamped_log_softmax_rows(y.get(), logq.get(), T, O, s);
        cuda::linear_f32(cc, x.get(), C, d.start.get(), C, z.get(), O, T, O, C, false);
        double* err = d.errors.get() + (c0 + b) * d.R;
        for (int64_t i = 0; i < d.R; ++i) {
          for (const KlSearch::Step& st : d.search->candidates[size_t(i)])
            cuda::linear_f32(cc, x.get() + st.c0, C, d.deltas.at(st.delta).get() + st.c0, C, z.get(), O, T, O,
                             st.c1 - st.c0, true);
          cuda::clamped_softmax_kl_rows(z.get(), logq.get(), row_kl.get(), T, O, s);
          cuda::sum_ordered(row_kl.get(), T, err + i, s);
        }
      }
    }
  }, nullptr, last);
  for (size_t j = 0; j < jobs.size(); ++j) {
    const Job& d = dev[j];
    if (d.R == 0) continue;
    std::vector<double> all(size_t(nseq_ * d.R));
    cuda::download(all.data(), d.errors.get(), all.size(), s);
    for (int64_t w = 0; w < nseq_; ++w)
      out[j][size_t(w)].assign(all.begin() + w * d.R, all.begin() + (w + 1) * d.R);
  }
  return out;
}

namespace {

// The GPU probe: the part's inputs (bf16) and reference output (fp32) resident; a trial uploads
// the varying linears and reduces the squared differences on the GPU, a chunk of windows at a
// time, in a fixed order.
class CudaPartProbe final : public BlockContext::PartProbe {
 public:
  CudaPartProbe(CudaModel& gpu, int64_t layer, int64_t nseq, int64_t seqlen, BlockContext::Part part,
                LinearKind linear, const BlockWeights& w0, std::span<const LinearKind> varying,
                const std::vector<float>& x)
      : gpu_(gpu), layer_(layer), nseq_(nseq), seqlen_(seqlen), part_(part), linear_(linear),
        varying_(varying.begin(), varying.end()), chunk_(windows_per_chunk(seqlen)) {
    const int64_t N = nseq * seqlen;
    in_cols_ = int64_t(x.size()) / N;
    LB_CHECK(in_cols_ * N == int64_t(x.size()), "layer {}: probe inputs of {} values are not {} rows", layer,
             x.size(), N);
    out_cols_ = part == BlockContext::Part::Linear ? w0[linear].dim(0) : gpu.config().hidden_size;
    const cudaStream_t s = gpu.context().stream();
    x_.resize(size_t(N * in_cols_));
    DeviceBuffer<float> wide;
    upload_rows_bf16(x.data(), N, in_cols_, x_.get(), wide, chunk_ * seqlen, s);
    gpu.upload_weights(w0, gw_);
    org_.resize(size_t(N * out_cols_));
    for (int64_t c0 = 0; c0 < nseq; c0 += chunk_) forward_chunk(c0, org_.get() + c0 * seqlen * out_cols_);
    cur_.resize(size_t(std::min(chunk_, nseq) * seqlen * out_cols_));
    partial_.resize(size_t(cuda::kSquaredDiffBlocks));
    gpu.context().synchronize();
  }
  double mse(const BlockWeights& w) override {
    const cudaStream_t s = gpu_.context().stream();
    gpu_.upload_weights(w, gw_, varying_);
    std::vector<double> part(size_t(cuda::kSquaredDiffBlocks));
    double sum = 0;
    for (int64_t c0 = 0; c0 < nseq_; c0 += chunk_) {
      const int64_t nb = std::min(chunk_, nseq_ - c0), n = nb * seqlen_ * out_cols_;
      forward_chunk(c0, cur_.get());
      cuda::squared_diff_partials(org_.get() + c0 * seqlen_ * out_cols_, cur_.get(), n, partial_.get(), s);
      cuda::download(part.data(), partial_.get(), part.size(), s);
      for (double v : part) sum += v;
    }
    return sum / double(nseq_ * seqlen_ * out_cols_);
  }

 private:
  void forward_chunk(int64_t c0, float* out) {
    const int64_t nb = std::min(chunk_, nseq_ - c0), T = seqlen_;
    bf16* x = x_.get() + c0 * T * in_cols_;
    switch (part_) {
      case BlockContext::Part::Attention:
        gpu_.attention_part(layer_, gw_, x, out, nb, T, /*accumulate=*/false);
        break;
      case BlockContext::Part::Mlp:
        gpu_.mlp_part(layer_, gw_, x, out, nb, T, /*accumulate=*/false);
        break;
      case BlockContext::Part::Linear:
        cuda::linear(gpu_.context(), x, gw_[linear_], out, nb * T, out_cols_, in_cols_);
        break;
    }
  }
  CudaModel& gpu_;
  int64_t layer_, nseq_, seqlen_;
  BlockContext::Part part_;
  LinearKind linear_;
  std::vector<LinearKind> varying_;
  int64_t chunk_, in_cols_ = 0, out_cols_ = 0;
  GpuBlockWeights gw_;
  DeviceBuffer<bf16> x_;
  DeviceBuffer<float> org_, cur_;
  DeviceBuffer<double> partial_;
};

}  // namespace

std::unique_ptr<BlockContext::PartProbe> CudaBlockContext::probe(Part part, LinearKind linear, const BlockWeights& w0,
                                                                  std::span<const LinearKind> varying,
                                                                  const std::vector<float>& x) const {
  LB_CHECK(has_calibration(), "layer {}: this method needs calibration data", layer_);
  return std::make_unique<CudaPartProbe>(gpu_, layer_, nseq_, seqlen_, part, linear, w0, varying, x);
}

void run_block_by_block_cuda(LlamaModel& model, const DriverPlan& plan, const DriverCallbacks& cb,
                             cuda::Context& ctx) {
  const LlamaConfig& c = model.config();
  const int64_t H = c.hidden_size, L = c.num_hidden_layers;
  model.set_block_cache(false);
  int64_t nseq = 0, T = 0;
  if (plan.windows != nullptr && !plan.windows->empty()) {
    nseq = int64_t(plan.windows->size());
    T = calibration_seqlen(c, *plan.windows);
  }
  CudaModel gpu(model, ctx, /*resident=*/false);
  DeviceBuffer<float> hidden;
  if (nseq > 0) {
    size_t free_b = 0, total_b = 0;
    LB_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    const double bytes = double(nseq) * double(T) * double(H) * 4.0;
    LB_CHECK(bytes < 0.8 * double(free_b), "calibration activations need {:.1f} GiB on {} ({} windows x {} tokens x "
             "{} x fp32), {:.1f} GiB are free", bytes / double(1 << 30), ctx.name(), nseq, T, H,
             double(free_b) / double(1 << 30));
    hidden.resize(size_t(nseq * T * H));
    for (int64_t s = 0; s < nseq; ++s) gpu.embed((*plan.windows)[size_t(s)].data(), T, hidden.get() + s * T * H);
  }
  const int64_t chunk = windows_per_chunk(T);
  GpuBlockMirror mirror;  // the block being quantized on the device, shared by its context and its propagation
  const auto scratch = std::make_shared<Tensor>();  // finish_linear's, shared by the blocks
  BlockWeights spare;  // the last block's host weights, their memory reused by the next
  for (int64_t i = 0; i < L; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (cb.on_block_start) cb.on_block_start(i, L);
    std::optional<PhaseScope> phase(std::in_place, "block weights");
    BlockWeights w = model.writable_block_weights(i, std::move(spare));
    phase.emplace("quantize_block");
    {
      CudaBlockContext bctx(
          gpu, i, w, hidden.get(), nseq, T, [&](const LinearReport& r) { if (cb.on_linear) cb.on_linear(i, r); },
          [&](const std::string& s) { if (cb.on_note) cb.on_note(i, s); }, &mirror);
      bctx.share_dequant_scratch(scratch);
      plan.quantize_block(bctx);
    }
    phase.reset();
    if (nseq > 0) {
      const PhaseScope propagate("propagate");
      LB_CHECK(!plan.propagation_hooks || plan.propagation_hooks(i) == nullptr,
               "layer {}: the GPU driver does not run propagation hooks", i);
      // As on the CPU: methods calibrating on the 16-bit activations propagate the block as the
      // checkpoint has it.
      std::shared_ptr<const BlockWeights> source;
      if (!plan.propagate_quantized) {
        w = BlockWeights{};
        source = model.block_weights(i);
      }
      const GpuBlockWeights& gw = mirror.sync(gpu, source ? *source : w);
      for (int64_t c0 = 0; c0 < nseq; c0 += chunk)
        gpu.run_block(i, gw, hidden.get() + c0 * T * H, std::min(chunk, nseq - c0), T);
      ctx.synchronize();
    }
    spare = std::move(w);
    if (cb.on_block_done)
      cb.on_block_done(i, L, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
}

BlockContext::StatsMap layer_input_stats_cuda(LlamaModel& model, const std::vector<std::vector<int32_t>>& windows,
                                              int64_t layer, StatsRequest what, BlockWeights* weights_out,
                                              cuda::Context& ctx) {
  const LlamaConfig& c = model.config();
  LB_CHECK(layer >= 0 && layer < c.num_hidden_layers, "layer {} does not exist (the model has {})", layer,
           c.num_hidden_layers);
  LB_CHECK(!windows.empty(), "layer statistics need calibration windows");
  const int64_t H = c.hidden_size, nseq = int64_t(windows.size()), T = int64_t(windows[0].size());
  for (const auto& w : windows) LB_CHECK(int64_t(w.size()) == T, "calibration windows differ in length");
  CudaModel gpu(model, ctx, /*resident=*/false);
  DeviceBuffer<float> hidden(size_t(nseq * T * H));
  for (int64_t s = 0; s < nseq; ++s) gpu.embed(windows[size_t(s)].data(), T, hidden.get() + s * T * H);
  const int64_t chunk = windows_per_chunk(T);
  GpuBlockWeights scratch;
  for (int64_t i = 0; i < layer; ++i) {
    const GpuBlockWeights& gw = gpu.block(i, scratch);
    for (int64_t c0 = 0; c0 < nseq; c0 += chunk)
      gpu.run_block(i, gw, hidden.get() + c0 * T * H, std::min(chunk, nseq - c0), T);
  }
  BlockWeights w = model.writable_block_weights(layer);
  CudaBlockContext bctx(gpu, layer, w, hidden.get(), nseq, T, nullptr, nullptr);
  auto stats = bctx.collect(kAllLinears, what);
  // The statistics outlive the context: their Hessians come to the host now.
  if (what.hessian)
    for (const auto& [k, st] : stats) st->hessian();
  ctx.synchronize();
  if (weights_out) *weights_out = std::move(w);
  return stats;
}

}  // namespace lowbit
