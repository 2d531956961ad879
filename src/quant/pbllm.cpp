#include "quant/pbllm.h"

#include "core/error.h"
#include "core/phase_profile.h"
#include "quant/affine_grid.h"
#include "quant/formats/bit_plane.h"
#include "quant/formats/pbllm_format.h"
#include "quant/method.h"
#include "quant/reference_numerics.h"

#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <optional>

// Built with -ffp-contract=off (src/CMakeLists.txt): the reference rounds every product and sum
// on its own, and the binarized values must come out bit for bit.

namespace lowbit {

namespace {

float sign_of(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }

}  // namespace

void pbllm_check(int64_t cols, const PbllmOptions& opt) {
  LB_CHECK(opt.low_frac > 0.0 && opt.low_frac < 1.0, "pbllm: low_frac {} is outside (0, 1)", opt.low_frac);
  LB_CHECK(opt.group_size > 0 && opt.block > 0 && opt.group_size % opt.block == 0 && cols % opt.group_size == 0,
           "pbllm: group size {} must be a multiple of the block {} and divide {} columns", opt.group_size, opt.block,
           cols);
}

PbllmPlan pbllm_plan(const float* w, int64_t rows, int64_t cols, const float* u_diag, const std::vector<uint8_t>& dead,
                     const PbllmOptions& opt) {
  pbllm_check(cols, opt);
  LB_CHECK(int64_t(dead.size()) == cols, "pbllm: {} dead-input flags for {} columns", dead.size(), cols);
  const int maxq = (1 << opt.high_bit) - 1;
  const int64_t gs = opt.group_size, ngroups = cols / gs;
  PbllmPlan p;
  // 1. The salient grid, per row, from the original weight.
  p.high.resize(static_cast<size_t>(rows));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) p.high[size_t(r)] = affine_minmax(w + r * cols, cols, 1, maxq, false);

  // 3-4. Masks and binarizer parameters per column group, from the weight after step 2 (dead
  // columns zeroed) and before any update; the groups in parallel.
  p.mask.assign(size_t(rows * cols), 0);
  p.mu.resize(size_t(rows * ngroups));
  p.alpha.resize(size_t(rows * ngroups));
#pragma omp parallel for schedule(dynamic)
  for (int64_t g = 0; g < ngroups; ++g) {
    const int64_t c0 = g * gs;
    const auto at = [&](int64_t r, int64_t j) { return dead[size_t(c0 + j)] ? 0.0f : w[r * cols + c0 + j]; };
    std::vector<float> score(size_t(rows * gs));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < gs; ++j) {
        const float v = at(r, j);
        score[size_t(r * gs + j)] = opt.hessian_metric ? obs_saliency(v, u_diag[c0 + j]) : std::fabs(v);
      }
    // The reference sorts and takes sorted[int(numel * low_frac)]; only the value matters.
    const auto k = int64_t(double(score.size()) * opt.low_frac);
    std::vector<float> sorted = score;
    std::nth_element(sorted.begin(), sorted.begin() + k, sorted.end());
    const float thr = sorted[size_t(k)];
    std::vector<float> m(static_cast<size_t>(gs)), d(static_cast<size_t>(gs));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < gs; ++j) {
        const bool low = score[size_t(r * gs + j)] <= thr;
        p.mask[size_t(r * cols + c0 + j)] = low;
        m[size_t(j)] = at(r, j) * (low ? 1.0f : 0.0f);  // zero-filled, not left out
      }
      const float mean = torch_sum_f32(m.data(), gs) / float(gs);
      for (int64_t j = 0; j < gs; ++j) d[size_t(j)] = std::fabs(m[size_t(j)] - mean);
      p.mu[size_t(r * ngroups + g)] = mean;
      p.alpha[size_t(r * ngroups + g)] = torch_sum_f32(d.data(), gs) / float(gs);
    }
  }
  return p;
}

PbllmResult pbllm_quantize(const float* w, int64_t rows, int64_t cols, const ObsHinv& hinv, const PbllmOptions& opt,
                           DType dtype) {
  LB_CHECK(int64_t(hinv.u.size()) == cols * cols && int64_t(hinv.dead.size()) == cols,
           "pbllm: inverse Hessian factor of {} entries for {} columns", hinv.u.size(), cols);
  const int maxq = (1 << opt.high_bit) - 1;
  const int64_t gs = opt.group_size, ngroups = cols / gs;
  const std::vector<float>& u = hinv.u;
  std::vector<float> u_diag(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) u_diag[size_t(c)] = u[size_t(c * cols + c)];
  PbllmPlan plan = pbllm_plan(w, rows, cols, u_diag.data(), hinv.dead, opt);

  // 2. Dead columns zeroed; Wt[c, r] = W[r, c] so that a column is contiguous.
  std::vector<float> wt(size_t(cols * rows));
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = 0; r < rows; ++r) wt[size_t(c * rows + r)] = hinv.dead[size_t(c)] ? 0.0f : w[r * cols + c];

  // 5. GPTQ with the mixed quantizer.
  PbllmColumns out;
  out.sign.assign(size_t(rows * cols), 0);
  out.code.assign(size_t(rows * cols), 0);
  out.at_mean.assign(size_t(rows * cols), 0);
  std::vector<float> qt(size_t(cols * rows));
  const int64_t B = opt.block;
  std::vector<float> w1(size_t(B * rows)), err(size_t(B * rows));
  double loss = 0;
  for (int64_t i1 = 0; i1 < cols; i1 += B) {
    const int64_t i2 = std::min(cols, i1 + B), count = i2 - i1, g = i1 / gs;
    std::copy(wt.begin() + i1 * rows, wt.begin() + i2 * rows, w1.begin());
#pragma omp parallel reduction(+ : loss)
    {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
      for (int64_t i = 0; i < count; ++i) {
        const int64_t col = i1 + i;
        const float d = u[size_t(col * cols + col)];
        float* wi = w1.data() + i * rows;
        float* ei = err.data() + i * rows;
        for (int64_t r = r0; r < r1; ++r) {
          const size_t f = size_t(r * cols + col);
          float q;
          if (plan.mask[f]) {
            const float m = plan.mu[size_t(r * ngroups + g)], a = plan.alpha[size_t(r * ngroups + g)];
            const float s = sign_of(wi[r] - m);
            q = s * a + m;
            out.sign[f] = s > 0.0f;
            out.at_mean[f] = s == 0.0f;
          } else {
            out.code[f] = affine_code(wi[r], plan.high[size_t(r)], maxq);
            q = affine_value(out.code[f], plan.high[size_t(r)]);
          }
          qt[size_t(col * rows + r)] = q;
          const float diff = wi[r] - q;
          loss += double((diff * diff) / (d * d));
          ei[r] = diff / d;
        }
        for (int64_t j = i + 1; j < count; ++j) {
          const float hij = u[size_t(col * cols + i1 + j)];
          float* wj = w1.data() + j * rows;
          for (int64_t r = r0; r < r1; ++r) wj[r] -= ei[r] * hij;
        }
      }
    }
    if (i2 < cols)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blasint(cols - i2), blasint(rows), blasint(count), -1.0f,
                  u.data() + i1 * cols + i2, blasint(cols), err.data(), blasint(rows), 1.0f, wt.data() + i2 * rows,
                  blasint(rows));
  }
  out.loss = loss;
  out.w.resize(size_t(rows * cols));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out.w[size_t(r * cols + c)] = qt[size_t(c * rows + r)];
  return pbllm_result(std::move(plan), std::move(out), rows, cols, opt, dtype, hinv.damp, hinv.dead_columns);
}

PbllmResult pbllm_result(PbllmPlan plan, PbllmColumns out, int64_t rows, int64_t cols, const PbllmOptions& opt,
                         DType dtype, double damp, int64_t dead_columns) {
  const int64_t gs = opt.group_size, ngroups = cols / gs;
  PbllmResult res;
  res.damp = damp;
  res.dead_columns = dead_columns;
  res.loss = out.loss / 2.0;
  res.w = std::move(out.w);
  res.mask = std::move(plan.mask);

  // The stored form (formats/pbllm_format.h).
  QuantizedLinear& q = res.q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kPbllmFormat;
  q.bits = 1;
  q.group_size = gs;
  q.dequant_dtype = dtype;
  q.codes = std::move(out.sign);
  q.scales.resize(static_cast<size_t>(rows));
  q.zeros.resize(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    q.scales[size_t(r)] = plan.high[size_t(r)].scale;
    q.zeros[size_t(r)] = plan.high[size_t(r)].zero;
  }
  std::vector<uint8_t> high_codes;
  std::vector<int32_t> at_list{0};
  for (size_t f = 0; f < res.mask.size(); ++f) {
    if (!res.mask[f]) high_codes.push_back(out.code[f]);
    else ++res.binarized;
    if (out.at_mean[f]) at_list.push_back(int32_t(f));
  }
  at_list[0] = int32_t(at_list.size() - 1);
  q.extras["mask"] = pack_plane(res.mask, rows, cols);
  Tensor hc = Tensor::empty(DType::U8, {int64_t(high_codes.size())});
  std::copy(high_codes.begin(), high_codes.end(), hc.mutable_data_as<uint8_t>());
  q.extras["high"] = hc;
  Tensor at = Tensor::empty(DType::I32, {int64_t(at_list.size())});
  std::copy(at_list.begin(), at_list.end(), at.mutable_data_as<int32_t>());
  q.extras["at_mean"] = at;
  Tensor tm = Tensor::empty(DType::F32, {rows, ngroups}), ta = Tensor::empty(DType::F32, {rows, ngroups});
  std::copy(plan.mu.begin(), plan.mu.end(), tm.mutable_data_as<float>());
  std::copy(plan.alpha.begin(), plan.alpha.end(), ta.mutable_data_as<float>());
  q.extras["mu"] = tm;
  q.extras["alpha"] = ta;
  q.params["high_bit"] = opt.high_bit;
  return res;
}

namespace {

class Pbllm : public QuantMethod {
 public:
  explicit Pbllm(QuantSpec s) : QuantMethod(std::move(s)) {
    opt_.low_frac = spec_.take_double("low_frac", 0.9, 0.0, 1.0,
                                      "fraction of each column group binarized, in (0, 1); the study's 1.7-bit row is "
                                      "0.9 with high_bit=8, its 2-bit row 6/7 = 0.857 (1 + 7 * (1 - low_frac) = 2)");
    LB_CHECK(opt_.low_frac > 0.0 && opt_.low_frac < 1.0, "pbllm: option low_frac={} must lie strictly between 0 and 1",
             opt_.low_frac);
    opt_.high_bit = int(spec_.take_int("high_bit", 8, 2, 8, "bits of the salient weights' per-row asymmetric grid"));
    opt_.hessian_metric = spec_.take_choice("metric", "hessian", {"hessian", "magnitude"},
                                            "salient score: w^2 / U_jj^2 (U: upper Cholesky factor of the damped "
                                            "inverse Hessian) or |w|") == "hessian";
    opt_.group_size = spec_.take_int("g", 128, 1, 1 << 20, "columns per binarizer group and salient selection "
                                     "(a multiple of block)");
    opt_.damp = spec_.take_double("damp", 0.01, 0.0, 10.0, "damping, a fraction of the mean Hessian diagonal");
    opt_.block = spec_.take_int("block", 128, 1, 1 << 16, "columns per lazy batch update");
    spec_.finish();
    LB_CHECK(opt_.group_size % opt_.block == 0, "pbllm: option g={} is not a multiple of block={}", opt_.group_size,
             opt_.block);
  }
  bool needs_calibration() const override { return true; }
  double weight_bits() const override { return opt_.low_frac + (1.0 - opt_.low_frac) * opt_.high_bit; }
  void check_device(const Device& d) const override {
    // The GPU's column kernel takes lazy batches of at most 128 columns (pbllm_cuda.cpp).
    LB_CHECK(!d.is_cuda() || opt_.block <= 128,
             "pbllm on {}: block={} is not supported there (the GPU runs lazy batches of at most 128 columns); use "
             "block<=128, or the CPU", d.str(), opt_.block);
  }
  int64_t group_size() const override { return opt_.group_size; }
  void check_shapes(const LlamaConfig& c) const override {
    for (LinearKind k : kAllLinears) {
      const int64_t in = linear_in_features(c, k);
      LB_CHECK(in % opt_.group_size == 0, "pbllm: option g={} does not divide {}'s {} input features",
               opt_.group_size, linear_name(k), in);
    }
  }

  void quantize_block(BlockContext& ctx, QuantizedBlock& out) override {
    // The reference hooks all seven linears in one pass over the unquantized block.
    StatsRequest req;
    req.hessian = true;
    const auto stats = ctx.collect(kAllLinears, req);
    for (LinearKind k : kAllLinears) {
      const auto t0 = std::chrono::steady_clock::now();
      const Tensor& w = ctx.weights()[k];
      const InputStats& st = *stats.at(k);
      const DType dtype = linear_storage_dtype(ctx.model(), ctx.layer(), k);
      std::optional<PbllmResult> on_device = pbllm_quantize_on(ctx, w.data_as<float>(), w.dim(0), w.dim(1), st, opt_, dtype);
      std::optional<PhaseScope> solve;
      PbllmResult r;
      if (on_device) {
        r = std::move(*on_device);
      } else {
        const ObsHinv hinv = obs_hinv_on(ctx, st, w.dim(1), opt_.damp);
        solve.emplace("pbllm solve (host)");
        r = pbllm_quantize(w.data_as<float>(), w.dim(0), w.dim(1), hinv, opt_, dtype);
      }
      const std::string what = fmt::format("layer {} {}", ctx.layer(), linear_name(k));
      r.q.validate(what);
      std::vector<float> deq(r.w.size());
      pbllm_dequantize(r.q, deq.data());
      for (size_t i = 0; i < deq.size(); ++i)
        LB_CHECK(deq[i] == r.w[i], "{}: the pbllm format does not reproduce weight {} ({} vs {})", what, i, deq[i],
                 r.w[i]);
      std::string note = fmt::format("loss {:.4g}, {:.4f} binarized", r.loss,
                                     double(r.binarized) / double(r.w.size()));
      if (r.damp != opt_.damp) note += fmt::format(", damping raised to {} (the reference would fail)", r.damp);
      if (r.dead_columns) note += fmt::format(", {} dead inputs", r.dead_columns);
      solve.reset();
      finish_linear(ctx, k, std::move(r.q), out, t0, &st, note);
    }
  }

 private:
  PbllmOptions opt_;
};

}  // namespace

std::unique_ptr<QuantMethod> make_pbllm(QuantSpec spec) { return std::make_unique<Pbllm>(std::move(spec)); }

}  // namespace lowbit
