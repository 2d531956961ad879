#include "quant/gptq.h"

#include "backend/ops.h"
#include "core/error.h"
#include "core/phase_profile.h"
#include "quant/affine_grid.h"
#include "quant/method.h"

#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

namespace lowbit {

std::vector<int64_t> gptq_column_order(const std::vector<double>& diag, bool act_order) {
  std::vector<int64_t> order(diag.size());
  std::iota(order.begin(), order.end(), 0);
  if (act_order)
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return diag[size_t(a)] > diag[size_t(b)]; });
  return order;
}

QuantizedLinear gptq_output(int64_t rows, int64_t cols, const GptqOptions& opt, DType dtype,
                            const std::vector<int64_t>& order) {
  const bool per_channel = opt.group_size < 0;
  const int64_t gs = per_channel ? cols : opt.group_size, ngroups = (cols + gs - 1) / gs;
  QuantizedLinear q;
  q.rows = rows;
  q.cols = cols;
  q.format = &kIntFormat;
  q.bits = opt.bits;
  q.group_size = gs;
  q.dequant_dtype = dtype;
  q.zero_storage_bits = opt.sym ? 0.0 : double(opt.bits);
  q.codes.assign(size_t(rows * cols), 0);
  q.scales.assign(size_t(rows * ngroups), 0.0f);
  q.zeros.assign(size_t(rows * ngroups), 0.0f);
  if (opt.act_order && !per_channel && !opt.static_groups) {
    q.g_idx.resize(size_t(cols));
    for (int64_t i = 0; i < cols; ++i) q.g_idx[size_t(order[size_t(i)])] = int32_t(i / gs);
  }
  return q;
}

std::vector<float> gptq_inverse_factor(const std::vector<double>& h, int64_t cols, double damp, double* damp_used) {
  const PhaseScope phase("inverse factor (host)");
  double mean_diag = 0;
  for (int64_t c = 0; c < cols; ++c) mean_diag += h[size_t(c * cols + c)];
  mean_diag /= double(cols);
  std::vector<double> a;
  for (int attempt = 0;; ++attempt) {
    a = h;
    for (int64_t c = 0; c < cols; ++c) a[size_t(c * cols + c)] += damp * mean_diag;
    bool ok = ops::cholesky(a.data(), cols, false);
    if (ok) {
      ops::cholesky_inverse(a.data(), cols);
      ok = ops::cholesky(a.data(), cols, true);
    }
    if (ok) break;
    LB_CHECK(attempt < 4, "the Hessian is not positive definite even with damping {} (x mean diagonal)", damp);
    damp = damp > 0.0 ? damp * 10.0 : 0.01;
  }
  if (damp_used) *damp_used = damp;
  return std::vector<float>(a.begin(), a.end());
}

InverseFactorFn inverse_factor_for(const BlockContext& ctx) {
  return [&ctx](const std::vector<double>& h, int64_t cols, double damp, double* damp_used) {
    std::optional<std::vector<float>> u = gptq_inverse_factor_on(ctx, h, cols, damp, damp_used);
    return u ? std::move(*u) : gptq_inverse_factor(h, cols, damp, damp_used);
  };
}

GptqResult gptq_quantize(const float* w, int64_t rows, int64_t cols, std::vector<double> h, const GptqOptions& opt,
                         DType dtype) {
  LB_CHECK(int64_t(h.size()) == cols * cols, "gptq: Hessian has {} entries for {} columns", h.size(), cols);
  const int maxq = (1 << opt.bits) - 1;
  const int64_t gs = opt.group_size < 0 ? cols : opt.group_size;
  const bool per_channel = opt.group_size < 0;
  GptqResult res;

  // Wt[c, r] = W[r, c]: a column of W is a contiguous row here.
  std::vector<float> wt(size_t(cols * rows));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) wt[size_t(c * rows + r)] = w[r * cols + c];

  // Per-channel grids come from the whole row, before dead columns are zeroed.
  std::vector<AffineParams> row_params;
  if (per_channel) {
    row_params.resize(size_t(rows));
    for (int64_t r = 0; r < rows; ++r) row_params[size_t(r)] = affine_minmax(w + r * cols, cols, 1, maxq, opt.sym);
  }

  for (int64_t c = 0; c < cols; ++c) {
    if (h[size_t(c * cols + c)] != 0.0) continue;
    h[size_t(c * cols + c)] = 1.0;
    std::fill(wt.begin() + c * rows, wt.begin() + (c + 1) * rows, 0.0f);
    ++res.dead_columns;
  }

  // Static groups: every group's grid from the (dead-zeroed) weights, in original column order.
  std::vector<AffineParams> static_params;  // [ngroups * rows]
  const int64_t ngroups = (cols + gs - 1) / gs;
  if (opt.static_groups && !per_channel) {
    static_params.resize(size_t(ngroups * rows));
    for (int64_t g = 0; g < ngroups; ++g) {
      const int64_t c0 = g * gs, n = std::min(cols, c0 + gs) - c0;
      for (int64_t r = 0; r < rows; ++r)
        static_params[size_t(g * rows + r)] = affine_minmax(wt.data() + c0 * rows + r, n, rows, maxq, opt.sym);
    }
  }

  std::vector<double> diag(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) diag[size_t(c)] = h[size_t(c * cols + c)];
  const std::vector<int64_t> perm = gptq_column_order(diag, opt.act_order);
  if (opt.act_order) {
    std::vector<float> wp(wt.size());
    std::vector<double> hp(h.size());
    for (int64_t i = 0; i < cols; ++i) {
      std::copy(wt.begin() + perm[size_t(i)] * rows, wt.begin() + (perm[size_t(i)] + 1) * rows, wp.begin() + i * rows);
      for (int64_t j = 0; j < cols; ++j) hp[size_t(i * cols + j)] = h[size_t(perm[size_t(i)] * cols + perm[size_t(j)])];
    }
    wt.swap(wp);
    h.swap(hp);
  }

  // Hinv: upper Cholesky factor of (H + damp I)^{-1}, with escalating damping on failure.
  std::vector<float> hinv = gptq_inverse_factor(h, cols, opt.damp, &res.damp);
  h = {};

  res.q = gptq_output(rows, cols, opt, dtype, perm);
  QuantizedLinear& q = res.q;
  if (per_channel)
    for (int64_t r = 0; r < rows; ++r) {
      q.scales[size_t(r)] = row_params[size_t(r)].scale;
      q.zeros[size_t(r)] = row_params[size_t(r)].zero;
    }
  if (opt.static_groups && !per_channel)
    for (int64_t g = 0; g < ngroups; ++g)
      for (int64_t r = 0; r < rows; ++r) {
        q.scales[size_t(r * ngroups + g)] = static_params[size_t(g * rows + r)].scale;
        q.zeros[size_t(r * ngroups + g)] = static_params[size_t(g * rows + r)].zero;
      }

  const int64_t B = std::max<int64_t>(1, opt.block);
  std::vector<float> w1(size_t(B * rows)), err(size_t(B * rows));
  std::vector<AffineParams> cur(static_cast<size_t>(rows));
  if (per_channel) cur = row_params;
  double loss = 0;
  for (int64_t i1 = 0; i1 < cols; i1 += B) {
    const int64_t i2 = std::min(cols, i1 + B), count = i2 - i1;
    std::copy(wt.begin() + i1 * rows, wt.begin() + i2 * rows, w1.begin());
#pragma omp parallel reduction(+ : loss)
    {
      // Rows are independent through the whole block: each thread takes a slice of them.
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
      for (int64_t i = 0; i < count; ++i) {
        const int64_t col = i1 + i;  // processing position
        if (!per_channel) {
          if (opt.static_groups) {
            const int64_t g = perm[size_t(col)] / gs;
            for (int64_t r = r0; r < r1; ++r) cur[size_t(r)] = static_params[size_t(g * rows + r)];
          } else if (col % gs == 0) {
            // From the outer weights: the reference reads W[:, col:col+gs], to which this block's
            // in-block updates have not been applied.
            const int64_t n = std::min(cols, col + gs) - col;
            for (int64_t r = r0; r < r1; ++r) {
              cur[size_t(r)] = affine_minmax(wt.data() + col * rows + r, n, rows, maxq, opt.sym);
              q.scales[size_t(r * ngroups + col / gs)] = cur[size_t(r)].scale;
              q.zeros[size_t(r * ngroups + col / gs)] = cur[size_t(r)].zero;
            }
          }
        }
        const float d = hinv[size_t(col * cols + col)];
        float* wi = w1.data() + i * rows;
        float* ei = err.data() + i * rows;
        const int64_t orig = perm[size_t(col)];
        for (int64_t r = r0; r < r1; ++r) {
          const uint8_t code = affine_code(wi[r], cur[size_t(r)], maxq);
          const float qv = affine_value(code, cur[size_t(r)]);
          q.codes[size_t(r * cols + orig)] = code;
          const float diff = wi[r] - qv;
          loss += double(diff) * double(diff) / (double(d) * double(d));
          ei[r] = diff / d;
        }
        for (int64_t j = i + 1; j < count; ++j) {
          const float hij = hinv[size_t(col * cols + i1 + j)];
          float* wj = w1.data() + j * rows;
          for (int64_t r = r0; r < r1; ++r) wj[r] -= ei[r] * hij;
        }
      }
    }
    // Lazy batch update of every later column: Wt[i2:, :] -= Hinv[i1:i2, i2:]^T Err.
    if (i2 < cols)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, blasint(cols - i2), blasint(rows), blasint(count), -1.0f,
                  hinv.data() + i1 * cols + i2, blasint(cols), err.data(), blasint(rows), 1.0f,
                  wt.data() + i2 * rows, blasint(rows));
  }
  res.loss = loss / 2.0;
  return res;
}

namespace {

class Gptq : public QuantMethod {
 public:
  explicit Gptq(QuantSpec s) : QuantMethod(std::move(s)) {
    opt_.bits = spec_.take_weight_bits(4);
    opt_.group_size = spec_.take_group_size(128);
    opt_.sym = spec_.take_symmetric(false);
    opt_.act_order = spec_.take_bool("act_order", false, "quantize columns by descending Hessian diagonal");
    opt_.static_groups = spec_.take_bool("static_groups", false, "find every group's grid before the updates");
    opt_.damp = spec_.take_double("damp", 0.01, 0.0, 10.0, "damping, a fraction of the mean Hessian diagonal");
    opt_.block = spec_.take_int("block", 128, 1, 1 << 16, "columns per lazy batch update");
    true_seq_ = spec_.take_bool("true_seq", true, "true-sequential: q,k,v -> o -> gate,up -> down, each group's "
                                "statistics from the block with the previous groups already quantized");
    spec_.finish();
  }
  bool needs_calibration() const override { return true; }
  double weight_bits() const override { return opt_.bits; }
  int64_t group_size() const override { return opt_.group_size; }
  void check_device(const Device& d) const override {
    // The GPU's column kernel takes lazy batches of at most 128 columns; with dynamic groups the
    // batch size changes which weights a group's grid is read from, so a larger block is refused
    // rather than run as 128.
    LB_CHECK(!d.is_cuda() || opt_.block <= 128,
             "gptq on {}: block={} is not supported there (the GPU runs lazy batches of at most 128 columns); use "
             "block<=128, or the CPU", d.str(), opt_.block);
  }

  void quantize_block(BlockContext& ctx, QuantizedBlock& out) override {
    using K = LinearKind;
    std::vector<std::vector<K>> groups;
    if (true_seq_) groups = {{K::Q, K::K, K::V}, {K::O}, {K::Gate, K::Up}, {K::Down}};
    else groups = {{K::Q, K::K, K::V, K::O, K::Gate, K::Up, K::Down}};
    StatsRequest req;
    req.hessian = true;
    for (const auto& group : groups) {
      const auto stats = ctx.collect(group, req);
      for (K k : group) {
        const auto t0 = std::chrono::steady_clock::now();
        const Tensor& w = ctx.weights()[k];
        const InputStats& st = *stats.at(k);
        const DType dtype = linear_storage_dtype(ctx.model(), ctx.layer(), k);
        std::optional<GptqResult> on_device =
            gptq_quantize_on(ctx, k, w.dim(0), w.dim(1), st, opt_, dtype);
        GptqResult r;
        if (on_device) {
          r = std::move(*on_device);
        } else {
          const PhaseScope solve("gptq solve (host)");
          r = gptq_quantize(w.data_as<float>(), w.dim(0), w.dim(1), st.hessian(), opt_, dtype);
        }
        std::string note = fmt::format("loss {:.4g}", r.loss);
        if (r.damp != opt_.damp) note += fmt::format(", damping raised to {}", r.damp);
        if (r.dead_columns) note += fmt::format(", {} dead inputs", r.dead_columns);
        finish_linear(ctx, k, std::move(r.q), out, t0, &st, note);
      }
    }
  }

 private:
  GptqOptions opt_;
  bool true_seq_ = true;
};

}  // namespace

std::unique_ptr<QuantMethod> make_gptq(QuantSpec spec) { return std::make_unique<Gptq>(std::move(spec)); }

}  // namespace lowbit
